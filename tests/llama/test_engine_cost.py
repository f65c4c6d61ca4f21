"""bench/engine_cost.py at its smallest (--quick: a 1-layer model of hidden
128 and 2 layers, one round, n_ctx 512): its rows are well formed and every contender
this tracedump offers ran and did its work."""

import importlib.util
import inspect
import json
from pathlib import Path

import tracedump

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("engine_cost", ROOT / "bench/engine_cost.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_rows_and_contenders(tmp_path):
    bench = load_bench()
    out = tmp_path / "rows.json"
    results = bench.main(["--quick", "--quiet", "--json", str(out)])
    rows = json.loads(out.read_text())
    steps = 1 + bench.STEPS  # the prompt is one decode

    params = inspect.signature(tracedump.ggml.capture).parameters
    offered = {"a", "b", "f"} | {c for c, k in (("c", "stats_only"), ("d", "background"), ("e", "layers")) if k in params}
    assert {c for c, _ in results} == offered

    # two rows (prompt, decode) per contender, all six listed
    assert len(rows) == 2 * len(bench.CONTENDERS)
    keys = {"part", "group", "name", "unit", "higher_is_better", "ours", "ours_spread", "rounds",
            "baseline", "others", "ratio", "goal", "ok"}
    for r in rows:
        assert set(r) == keys, r["name"]
        assert (r["part"], r["unit"], r["higher_is_better"], r["rounds"]) == ("engine", "s", False, 1)
        assert "n_ctx 512" in r["group"]
        c = r["name"][1]
        if c in bench.GOALS:
            assert r["goal"] == f"time <= {bench.GOALS[c][1]:.2f}x ({bench.GOALS[c][0]})"
        if c not in offered:
            assert r["ours"] is None and r["ok"] is None and r["ratio"] is None
            continue
        assert r["ours"] > 0 and r["ours_spread"] == [r["ours"], r["ours"]]
        if c == "a":
            assert r["baseline"] is None
            continue
        b = r["baseline"]
        assert b["value"] > 0 and b["spread"] == [b["value"], b["value"]] and b["unit"] == "s"
        assert abs(r["ratio"] - b["value"] / r["ours"]) < 1e-12
        if c in bench.GOALS:
            assert r["ok"] == (r["ours"] / b["value"] <= bench.GOALS[c][1])
        else:
            assert r["ok"] is None
        rss = [o for o in r["others"] if o["label"] == "peak RSS (median)"]
        assert rss and rss[0]["value"] > 10

    res = {c: rs[0] for (c, _), rs in results.items()}
    shape = bench.model_shape(0.05)
    # (b) copied every node of every step: the tensors the full capture
    # recorded less the graph inputs it adds, and at least each step's logits
    b, f = res["b"], res["f"]
    assert b["copied_tensors"] == f["tensors"] - f["graph_inputs"]
    assert b["copied_bytes"] >= steps * shape["n_vocab"] * 4
    assert f["steps"] == steps and f["stats_only"] == 0 and f["layers"] == [0, 1]
    assert f["trace_bytes"] > steps * shape["n_vocab"] * 4
    if "c" in res:
        c = res["c"]
        assert c["tensors"] == f["tensors"] and c["stats_only"] == c["tensors"]
        assert c["trace_bytes"] < f["trace_bytes"] / 4
    if "d" in res:
        assert res["d"]["tensors"] == f["tensors"] and res["d"]["stats_only"] == 0
    if "e" in res:
        e = res["e"]
        assert e["layers"] == [0] and "embd" not in e["names"] and "inp_pos" in e["names"]
    # the scratch traces are gone
    assert not list((bench.WORK / "scratch").glob("*.tdump"))
