"""Trace.export: the logical tensors to safetensors or npz, as `tracedump
export` writes them, read back with numpy and safetensors' own loader."""

import numpy as np
import pytest

import tracedump

safetensors_numpy = pytest.importorskip("safetensors.numpy")


@pytest.fixture
def trace(tmp_path):
    path = tmp_path / "run.tdump"
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    with tracedump.Writer(str(path)) as w:
        w.add("a", a, layer=0)
        w.add("a.T", a.transpose(2, 0, 1), layer=0)  # a strided view of a
        w.add("a", a * 2, layer=1)  # a repeated name
        w.add_stats("s", a)
        w.add_quantized("q", np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32), "q8_0")
    return tracedump.open(str(path)), a


@pytest.mark.parametrize("to", ["safetensors", "npz"])
def test_export_writes_logical_values(trace, tmp_path, to):
    t, a = trace
    out = tmp_path / f"out.{to}"
    s = t.export(out, to=to)
    assert s["exported"] == ["a", "a.T", "a#1", "q"] and s["bytes"] == out.stat().st_size
    assert [name for name, _ in s["skipped"]] == ["s"]
    got = safetensors_numpy.load_file(str(out)) if to == "safetensors" else dict(np.load(out))
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["a.T"], a.transpose(2, 0, 1))
    np.testing.assert_array_equal(got["a#1"], a * 2)
    np.testing.assert_array_equal(got["q"], t["q"].to_f32())  # dequantized, as the trace reads it


def test_export_filters_and_refuses_what_it_cannot_write(trace, tmp_path):
    t, a = trace
    s = t.export(tmp_path / "l1.npz", to="npz", layer=1)
    assert s["exported"] == ["a#1"]
    with pytest.raises(ValueError, match="parquet"):
        t.export(tmp_path / "x.parquet", to="parquet")
    with pytest.raises(ValueError, match="safetensors"):
        t.export(tmp_path / "x.bin", to="bin")
    with pytest.raises(OSError):
        t.export(tmp_path / "no" / "such" / "dir" / "x.npz", to="npz")
    assert not (tmp_path / "x.parquet").exists()
