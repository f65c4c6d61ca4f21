"""compare(): trace_reader::compare::diff on two runs."""

import numpy as np
import pytest

import tracedump


def test_finds_the_planted_divergence(demo):
    a, b = demo
    r = tracedump.compare(a, b)
    assert not r.agrees
    first = r.first_divergence
    assert first["key"] == "ffn_norm-2" and first["divergent"] and first["layer"] == 2
    assert r.pairs[r.first_divergence_index] == first
    assert first["index"] == 37 and len(r) == 59
    assert first["verdict"] == "diverge" and first["reasons"]
    assert first["max_abs"] > 0.1 and first["cosine"] < 1
    ok = r.pairs[0]
    assert ok["verdict"] == "agree" and not ok["divergent"]
    assert {"max_abs", "max_rel", "mean_abs", "rmse", "cosine", "max_ulp", "mean_a", "std_b"} <= set(ok)
    layers = {l["layer"]: l for l in r.layers}
    assert {0, 1, 2, 3} <= set(layers)
    assert layers[2]["divergent"] == 6 and layers[0]["divergent"] == 0
    assert layers[2]["last"] == "l_out-2"
    assert "ffn_norm-2" in repr(r)
    assert r.tolerance == {"atol": 1e-3, "rtol": 1e-2, "min_cosine": 0.999}


def test_traces_or_paths_and_tolerances(demo):
    a, b = demo
    ta, tb = tracedump.open(a), tracedump.open(b)
    assert tracedump.compare(ta, ta).agrees
    loose = tracedump.compare(ta, tb, atol=10.0, rtol=10.0, min_cosine=0.0)
    assert loose.agrees and loose.first_divergence is None


def test_rename_rules(tmp_path):
    x = np.arange(6, dtype=np.float32)
    with tracedump.Writer(tmp_path / "a.tdump") as w:
        w.add("blk.0.out", x)
    with tracedump.Writer(tmp_path / "b.tdump") as w:
        w.add("layers.0.out", x + 1)
    a, b = tmp_path / "a.tdump", tmp_path / "b.tdump"
    assert len(tracedump.compare(a, b)) == 0
    for rules in ([r"^blk\.(\d+)\.out => layers.$1.out"], [(r"^blk\.(\d+)", "layers.$1")], {r"^blk": "layers"}):
        r = tracedump.compare(a, b, rules=rules)
        assert len(r) == 1 and r.first_divergence["key"] == "layers.0.out"
    with pytest.raises(ValueError):
        tracedump.compare(a, b, rules="no-such-preset")
    assert len(tracedump.compare(a, b, rules="llama-hf")) == 0


def test_to_pandas(demo):
    pd = pytest.importorskip("pandas")
    df = tracedump.compare(*demo).to_pandas()
    assert isinstance(df, pd.DataFrame) and len(df) == 59
    assert df.loc[df["divergent"], "key"].iloc[0] == "ffn_norm-2"


def test_repr_html_shows_the_first_divergence_and_layers(demo):
    a, b = demo
    r = tracedump.compare(a, b)
    h = r._repr_html_()
    assert h.startswith("<div") and h.endswith("</div>")
    # people count pairs from 1, as the CLI's "pair 38 of 59"; the index is 0-based
    assert r.first_divergence_index == 37
    assert "first divergence: pair 38 of 59 <code>ffn_norm-2</code>" in h
    assert "(pair 38 of 59)" in repr(r)
    # the highlighted row is the first divergent pair, and only it is bold
    assert h.count("font-weight:bold") == 1
    bold = h[h.index("font-weight:bold") :]
    row = bold[: bold.index("</tr>")]
    assert row.count("ffn_norm-2") == 1 and '"><td>38</td>' in row
    pairs = h[h.index("<th>verdict</th>") :]
    assert "<tr><td>1</td>" in pairs and "<tr><td>0</td>" not in pairs
    # the per-layer table: one row per layer, with l_out-2 as layer 2's last
    assert "<th>std ratio</th>" in h and "<td>l_out-2</td>" in h
    same = tracedump.compare(a, a)._repr_html_()
    assert "the runs agree" in same and "font-weight:bold" not in same
