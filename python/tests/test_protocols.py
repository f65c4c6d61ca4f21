"""A Trace behaves as the read-only mapping safetensors' and gguf-py's
readers are, and a Tensor goes to numpy and DLPack consumers directly."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

import tracedump


@pytest.fixture
def path(tmp_path):
    p = tmp_path / "m.tdump"
    with tracedump.Writer(p) as w:
        w.add("a", np.arange(6, dtype=np.float32).reshape(2, 3))
        for step in range(3):
            w.add("h", np.full(2, step, np.int32), step=step)
        w.add("b", np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::-1])
        w.add_quantized("q", np.linspace(-1, 1, 64, dtype=np.float32))
    return p


def test_a_trace_is_a_mapping_of_keys_to_tensors(path):
    with tracedump.open(path) as t:
        assert isinstance(t, Mapping)
        keys = ["a", "h", "h#1", "h#2", "b", "q"]
        assert list(t) == keys and list(t.keys()) == keys and len(t) == len(keys)
        assert [x.name for x in t.values()] == ["a", "h", "h", "h", "b", "q"]
        d = dict(t)
        assert list(d) == keys
        assert [d[k].step for k in ("h", "h#1", "h#2")] == [0, 1, 2]
        assert all(t[k].id == v.id for k, v in t.items())
        assert "h#2" in t and "h#3" not in t and "nope" not in t and 0 not in t
        assert t.get("nope") is None and t.get("nope", 7) == 7 and t.get("a").name == "a"
        assert "h#1" in t.keys()
        assert t[0].name == "a"  # positions still index


def test_array_protocol(path):
    with tracedump.open(path) as t:
        a = np.asarray(t["a"])
        assert a.dtype == np.float32 and a.shape == (2, 3) and not a.flags.writeable
        assert np.shares_memory(a, t["a"].numpy())
        b = np.asarray(t["b"])
        assert b.strides == (16, -4) and b.tolist() == np.arange(12).reshape(3, 4)[:, ::-1].tolist()
        c = np.array(t["a"], dtype=np.float64)
        assert c.dtype == np.float64 and c.tolist() == a.tolist()
        d = np.array(t["a"])  # copy=True
        assert d.flags.writeable and not np.shares_memory(d, a)
        assert np.asarray(t["q"]).dtype == np.float32  # dequantized
        with pytest.raises(ValueError, match="copy=False"):
            np.asarray(t["q"], copy=False)
        assert np.shares_memory(np.asarray(t["a"], copy=False), a)


def test_dlpack(path):
    with tracedump.open(path) as t:
        assert t["a"].__dlpack_device__() == (1, 0)
        x = np.from_dlpack(t["b"])
        assert x.strides == (16, -4) and x.tolist() == t["b"].numpy().tolist()
        x = np.from_dlpack(t["a"])
        x[0, 0] = 42  # the private copy-on-write map: the file never changes
        assert t["a"].numpy()[0, 0] == 0
        assert np.from_dlpack(t["q"]).dtype == np.float32
        with pytest.raises(BufferError, match="copy=False"):
            t["q"].__dlpack__(copy=False)


def test_dlpack_into_torch(path):
    torch = pytest.importorskip("torch")
    with tracedump.open(path) as t:
        x = torch.from_dlpack(t["a"])
        assert x.dtype == torch.float32 and x.tolist() == t["a"].numpy().tolist()


def test_dlpack_refuses_bf16_and_names_torch(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    p = tmp_path / "bf.tdump"
    with tracedump.Writer(p) as w:
        w.add("x", np.ones(4, dtype=ml_dtypes.bfloat16))
    with tracedump.open(p) as t:
        with pytest.raises(BufferError, match=r"\.torch\(\)"):
            t["x"].__dlpack__()


def test_sharded_trace_is_the_same_mapping(tmp_path):
    for r in range(2):
        with tracedump.Writer(tmp_path / f"rank{r}.tdump", rank=r, world_size=2) as w:
            w.add("x", np.full(2, r, np.float32))
            w.add("x", np.full(2, 10 + r, np.float32))
    with tracedump.open(tmp_path) as t:
        assert isinstance(t, Mapping)
        keys = ["rank0/x", "rank0/x#1", "rank1/x", "rank1/x#1"]
        assert list(t) == keys and len(t) == 4
        assert [v.numpy()[0] for v in t.values()] == [0, 10, 1, 11]
        assert "rank1/x#1" in t and "rank1/x#2" not in t
        assert dict(t)["rank1/x#1"].numpy()[0] == 11
