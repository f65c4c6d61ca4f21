"""numpy and torch tensors of every dtype and layout, written by the Python
Writer and read back bit-exact with the same strides."""

import numpy as np
import pytest

import tracedump
from conftest import bits

ml_dtypes = pytest.importorskip("ml_dtypes")

NUMPY_DTYPES = {
    "f16": np.float16,
    "f32": np.float32,
    "f64": np.float64,
    "i8": np.int8,
    "i16": np.int16,
    "i32": np.int32,
    "i64": np.int64,
    "u8": np.uint8,
    "u16": np.uint16,
    "u32": np.uint32,
    "u64": np.uint64,
    "bool": np.bool_,
    "bf16": ml_dtypes.bfloat16,
    "f8_e4m3": ml_dtypes.float8_e4m3fn,
    "f8_e5m2": ml_dtypes.float8_e5m2,
}


def _values(dtype, shape, rng):
    if dtype is np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return (rng.standard_normal(shape) * 4).astype(dtype)


def _numpy_layouts(base):
    return {
        "contiguous": base,
        "transposed": base.T,
        "permuted": base.transpose(2, 0, 1),
        "sliced_step": base[::2, 1::3],
        "offset": base[1:, 2:, 1:],
        "negative": base[::-1, ::-2],
        "expanded": np.broadcast_to(base[:1, :1], (5, 4, base.shape[2])),
        "column": base[:, 3, :],
        "scalar": base[1, 2, 3],
        "empty": base[:, :0],
    }


@pytest.mark.parametrize("name", list(NUMPY_DTYPES))
def test_numpy_round_trip(name, tmp_path):
    dtype = NUMPY_DTYPES[name]
    rng = np.random.default_rng(1)
    base = _values(dtype, (4, 6, 5), rng)
    layouts = _numpy_layouts(base)
    path = tmp_path / "np.tdump"
    with tracedump.Writer(path, case=name) as w:
        for k, v in layouts.items():
            w.add(k, np.asarray(v))
    with tracedump.open(path) as t:
        assert t.verify().ok
        for k, v in layouts.items():
            v = np.asarray(v)
            x = t[k]
            assert x.dtype == name, k
            assert x.shape == v.shape, k
            a = x.numpy()
            assert a.dtype == v.dtype, k
            if v.size:
                assert x.byte_strides == v.strides, k
                assert a.strides == v.strides, k
            assert np.array_equal(bits(a), bits(v)), k
            m = x.materialize()
            assert m.flags.c_contiguous and np.array_equal(bits(m), bits(v)), k


def test_numpy_views_share_one_storage(tmp_path):
    base = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    with tracedump.Writer(tmp_path / "v.tdump") as w:
        ib = w.add("base", base)
        it = w.add("t", base.transpose(2, 0, 1), lineage="auto")
        ir = w.add("r", base[::-1, 1], lineage="auto")
    t = tracedump.open(tmp_path / "v.tdump")
    assert t["t"].storage == t["r"].storage == ib
    assert t["t"].parents == [{"id": ib, "name": "base"}] and t["t"].lineage[0]["op"] == "view"
    assert t["r"].byte_strides == (-80, 4) and t["r"].storage_offset == 2 * 80 + 20
    assert np.shares_memory(t["t"].numpy(), t["base"].numpy())
    assert np.array_equal(t["r"].numpy(), base[::-1, 1])
    assert it == ib + 1 and ir == ib + 2
    assert t.verify().lineages_replayed == 2


def test_reading_back_arrays_from_a_trace(tmp_path):
    # arrays made by .numpy() (base: the mapping) can be recorded again
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    with tracedump.Writer(tmp_path / "a.tdump") as w:
        w.add("a", a[:, ::-1])
    src = tracedump.open(tmp_path / "a.tdump")["a"].numpy()
    with tracedump.Writer(tmp_path / "b.tdump") as w:
        w.add("b", src)
    b = tracedump.open(tmp_path / "b.tdump")["b"]
    assert b.byte_strides == (32, -8) and np.array_equal(b.numpy(), a[:, ::-1])


TORCH_DTYPES = [
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "bool",
    "float8_e4m3fn",
    "float8_e5m2",
]


def _torch_layouts(base):
    return {
        "contiguous": base,
        "t": base[0].t(),
        "permuted": base.permute(2, 0, 1),
        "sliced_step": base[::2, 1::3],
        "offset": base[1:, 2:, 1:],
        "narrow": base.narrow(2, 1, 3),
        "expanded": base[:1, :1].expand(5, 4, base.shape[2]),
        "scalar": base[1, 2, 3],
        "empty": base[:, :0],
    }


@pytest.mark.parametrize("tname", TORCH_DTYPES)
def test_torch_round_trip(tname, tmp_path):
    torch = pytest.importorskip("torch")
    dtype = getattr(torch, tname)
    g = torch.Generator().manual_seed(2)
    if dtype == torch.bool:
        base = torch.randint(0, 2, (4, 6, 5), generator=g).bool()
    elif dtype.is_floating_point:
        base = (torch.randn(4, 6, 5, generator=g) * 4).to(dtype)
    else:
        info = torch.iinfo(dtype)
        base = torch.randint(info.min, info.max, (4, 6, 5), generator=g, dtype=torch.int64).to(dtype)
    layouts = _torch_layouts(base)
    path = tmp_path / "t.tdump"
    with tracedump.Writer(path) as w:
        for k, v in layouts.items():
            w.add(k, v, lineage="auto")
    with tracedump.open(path) as t:
        assert t.verify().ok
        for k, v in layouts.items():
            x = t[k]
            y = x.torch()
            assert y.dtype == dtype, k
            assert tuple(y.shape) == tuple(v.shape), k
            if v.numel():
                assert y.stride() == v.stride(), k
                assert x.strides == v.stride(), k
                assert x.storage_offset == v.storage_offset() * v.element_size(), k

            def raw(z):
                return z.contiguous().reshape(-1).view(torch.uint8)

            assert torch.equal(raw(y), raw(v)), k
            # numpy sees the same bits (ml_dtypes types for bf16 / fp8)
            assert np.array_equal(
                x.numpy().reshape(-1).view(np.uint8), raw(v).numpy()
            ), k
        # every view of `base` is a view of its record: one storage, no copies
        assert all(t[k].storage == t["contiguous"].id for k in layouts if k != "empty")


def test_torch_views_of_one_storage_in_the_trace(tmp_path):
    torch = pytest.importorskip("torch")
    cache = torch.randn(2, 16, 4)
    with tracedump.Writer(tmp_path / "kv.tdump") as w:
        w.add("k0", cache[:, :8].permute(1, 0, 2))
        w.add("k1", cache[:, 8:].permute(1, 0, 2))
    t = tracedump.open(tmp_path / "kv.tdump")
    k0, k1 = t["k0"], t["k1"]
    assert k0.storage == k1.storage and k1.storage_offset == 8 * 4 * 4
    a, b = k0.torch(), k1.torch()
    assert b.data_ptr() - a.data_ptr() == 8 * 4 * 4
    assert a.stride() == cache[:, :8].permute(1, 0, 2).stride()
    assert torch.equal(b, cache[:, 8:].permute(1, 0, 2))
