"""`make bench`'s scripts, cheaply: the Python half at a tiny scale (every
row in the one schema, spreads around medians, ratios from the medians),
table.py's merge of every bench/results-*.json, and plot.py's figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
ROW_KEYS = {"part", "group", "name", "unit", "higher_is_better", "ours", "ours_spread", "rounds",
            "baseline", "others", "ratio", "goal", "ok"}


def run(*args: object, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          check=True, timeout=600)


def row(group: str, name: str, ours: float, base: float | None, ok: bool | None, part: str = "rust") -> dict:
    return dict(part=part, group=group, name=name, unit="ms", higher_is_better=False, ours=ours,
                ours_spread=[ours * 0.9, ours * 1.2], rounds=5,
                baseline=None if base is None else dict(label="theirs", value=base, unit="ms",
                                                        spread=[base * 0.8, base * 1.1]),
                others=[dict(label="also", value=1.0, unit="ms")],
                ratio=None if base is None else base / ours, goal=None if ok is None else ">= 2x", ok=ok)


def part(name: str, rows: list[dict], **extra: object) -> dict:
    return dict(part=name, date="2026-12-06 00:00:00 UTC", scale=1.0, repeat=5, rows=rows, **extra)


def test_python_half_at_a_tiny_scale(tmp_path: Path) -> None:
    out = tmp_path / "results-python.json"
    run(BENCH / "python_bench.py", "--scale", "0.001", "--repeat", "1", "--quiet", "--json", out)
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert {r["group"] for r in rows} == {"write", "read", "layout"}
    assert len(rows) == 8  # write 5, read 2, layout 1
    for r in rows:
        assert set(r) == ROW_KEYS, r["name"]
        lo, hi = r["ours_spread"]
        assert lo <= r["ours"] <= hi and lo > 0, r["name"]
        assert r["rounds"] >= 3, r["name"]
        b = r["baseline"]
        assert b is not None and b["spread"][0] <= b["value"] <= b["spread"][1], r["name"]
        want = r["ours"] / b["value"] if r["higher_is_better"] else b["value"] / r["ours"]
        assert r["ratio"] == pytest.approx(want), r["name"]
        assert r["ok"] is not None, r["name"]  # every row carries a goal
    # the anchors in their best form: the engine row against the faster
    # memcpy, the open rows through every tensor, torch's one-pass layout
    names = [r["name"] for r in rows]
    assert any("default queue" in n and "add() calls" in n for n in names)
    assert sum("trace[name].torch() of every tensor" in n for n in names) == 2
    layout = next(r for r in rows if r["group"] == "layout")
    assert "to(float32, contiguous_format)" in layout["baseline"]["label"]


def test_table_merges_every_results_file(tmp_path: Path) -> None:
    parts = {
        "rust": part("rust", [row("checksum", "crc", 1.0, None, None), row("write", "w", 1.0, 3.0, True),
                              row("dequantize", "dq", 1.0, 1.5, False)]),
        "python": part("python", [row("read", "r", 2.0, 5.0, True, "python"), row("write", "pw", 1.0, 2.5, True,
                                                                                 "python")],
                       torch="2.x", torch_threads=2, safetensors="0.x", numpy="2.x"),
        "streaming": part("streaming", [row("streaming", "diff", 1.0, 2.2, True, "streaming")]),
        "zeta": part("zeta", [row("zeta", "z", 1.0, 1.0, None, "zeta")]),
    }
    for name, p in parts.items():
        (tmp_path / f"results-{name}.json").write_text(json.dumps(p))
    # points, not rows: skipped
    (tmp_path / "results-sweeps.json").write_text(json.dumps(dict(part="sweeps", sweeps=[])))
    out = tmp_path / "results.json"
    # the steal share is counted from --mark-start's counters
    os.environ["TRACEDUMP_BENCH_START_STAT"] = str(tmp_path / "start-stat")
    try:
        run(BENCH / "table.py", "--mark-start")
        shown = run(BENCH / "table.py", "--dir", tmp_path, "--json", out).stdout
    finally:
        del os.environ["TRACEDUMP_BENCH_START_STAT"]
    report = json.loads(out.read_text())
    steal = report["machine"]["steal_percent"]
    if Path("/proc/stat").exists():
        assert isinstance(steal, float) and 0 <= steal <= 100, steal
        assert f"{steal}% of the CPU time stolen by the hypervisor" in shown
    assert [r["name"] for r in report["rows"]] == ["w", "pw", "r", "diff", "dq", "z", "crc"]
    assert report["summary"] == {"goals": 5, "pass": 4, "miss": 1}
    assert set(report["parts"]) == {"rust", "python", "streaming", "zeta"}
    assert {"cpu", "os", "scratch_fs", "cores"} <= set(report["machine"])
    assert report["machine"]["scratch_fs"] not in ("", "unknown")
    assert "STREAMING" in shown and "ZETA" in shown
    md = run(BENCH / "table.py", "--markdown", "--json", out).stdout
    lines = [line for line in md.splitlines() if line.startswith("| write | w |")]
    # median and [min, max] of ours and of the baseline, ratio, goal, verdict
    assert lines == ["| write | w | 1.00 ms [0.90, 1.20] | theirs: 3.00 ms [2.40, 3.30] | 3.00x | >= 2x | PASS"
                     " | also: 1.00 ms |"]
    assert "| dequantize | dq |" in md and "**MISS**" in md
    assert "scratch on" in md and "4 PASS, 1 MISS" in md
    readme = tmp_path / "README.md"
    start, end = "<!-- bench table: table.py --readme -->", "<!-- end of bench table -->"
    readme.write_text(f"# intro\n\n{start}\nan old table\n{end}\n\n## after\n")
    run(BENCH / "table.py", "--readme", readme, "--json", out)
    assert readme.read_text() == f"# intro\n\n{start}\n{md.rstrip()}\n{end}\n\n## after\n"


def test_table_refuses_a_row_in_the_old_schema(tmp_path: Path) -> None:
    old = row("write", "w", 1.0, 2.0, True)
    del old["ours_spread"]
    (tmp_path / "results-rust.json").write_text(json.dumps(part("rust", [old])))
    (tmp_path / "results-python.json").write_text(json.dumps(part("python", [])))
    p = subprocess.run([sys.executable, BENCH / "table.py", "--dir", tmp_path, "--json", tmp_path / "r.json"],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "lacks ['ours_spread']" in p.stderr


def test_plot_draws_every_sweep(tmp_path: Path) -> None:
    def series(label: str, xs: list[int]) -> dict:
        return dict(label=label, points=[dict(x=x, median=x / 1e5, spread=[x / 2e5, x / 5e4], rounds=3)
                                         for x in xs])

    sweeps = [
        dict(name="count", title="count", x_label="tensors", y_label="seconds", log_x=True, log_y=True,
             series=[series("open", [1000, 10_000, 100_000]), series("diff", [1000, 10_000, 100_000])]),
        dict(name="size", title="size", x_label="bytes", y_label="GB/s", log_x=True, log_y=False,
             series=[series("sync", [1024, 65536, 1 << 20])]),
        dict(name="threads", title="threads", x_label="threads", y_label="GB/s", log_x=True, log_y=False,
             series=[series("sync", [1, 2, 4, 8])]),
    ]
    src = tmp_path / "results-sweeps.json"
    src.write_text(json.dumps(dict(part="sweeps", date="2026-12-06 00:00:00 UTC", scale=0.01, rounds=3,
                                   machine=dict(nproc=2, cpu="cpu", kernel="6.x", scratch_fs="ext4"),
                                   sweeps=sweeps)))
    out = tmp_path / "scaling.svg"
    run(BENCH / "plot.py", "--json", src, "--out", out)
    svg = out.read_text()
    assert svg.startswith("<?xml") and "<svg" in svg
    # one panel per sweep, each with its title and legend
    for text in ("count", "size", "threads", "open", "diff", "sync"):
        assert f">{text}<" in svg or f"<!-- {text} -->" in svg, text
