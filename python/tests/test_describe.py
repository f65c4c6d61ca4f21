"""The writer reads plain numpy arrays and CPU torch tensors in Rust
(`python/src/describe.rs`) and everything else through
`tracedump._layout.describe`: both must see the same dtype, shape, byte
strides, offset and storage bytes."""

import numpy as np
import pytest
import torch

from tracedump import _layout
from tracedump._tracedump import _describe


class _Subclass(torch.Tensor):
    """A tensor subclass: read in Rust, like a plain tensor (it inherits
    torch's DLPack C exchange API)."""


class _NoExchange(torch.Tensor):
    """A tensor type that does not publish torch's DLPack C exchange API:
    read in Rust through its public attributes instead."""

    __dlpack_c_exchange_api__ = None


def _python_view(t):
    name, shape, strides, offset, buf, _owner = _layout.describe(t)
    addr = buf.__array_interface__["data"][0] if buf.size else 0
    return name, list(shape), list(strides), offset, addr, buf.size


def _numpy_cases():
    rng = np.random.default_rng(7)
    base = rng.standard_normal((4, 6, 8)).astype(np.float32)
    yield "contiguous", base
    yield "slice", base[1:3, ::2, 1:7]
    yield "transpose", base.transpose(2, 0, 1)
    yield "negative strides", base[::-1, :, ::-2]
    yield "broadcast (stride 0)", np.broadcast_to(base[0, 0], (5, 8))
    yield "a view of a view", base[1:][:, 2:][..., ::3]
    yield "scalar", np.array(3.5, np.float32)
    yield "column of a Fortran array", np.asfortranarray(base[0])[:, 2]
    for dt in [np.float16, np.float64, np.int8, np.int16, np.int32, np.int64,
               np.uint8, np.uint16, np.uint32, np.uint64, np.bool_]:
        yield f"{np.dtype(dt).name}", (base * 10).astype(dt)[::2]
    yield "over bytes (base is not an array)", np.frombuffer(bytes(range(64)), np.uint8)[3:40:2]


def _torch_cases():
    base = torch.arange(4 * 6 * 8, dtype=torch.float32).reshape(4, 6, 8)
    yield "contiguous", base
    yield "permute", base.permute(2, 0, 1)
    yield "narrow + step", base[1:3, ::2, 1:7]
    yield "storage offset", base[2]
    yield "expand", base[0, 0].expand(5, 8)
    for dt in [torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int16,
               torch.int32, torch.int64, torch.uint8, torch.bool]:
        yield str(dt), base.to(dt)[::2]
    yield "requires grad", torch.ones(3, 4, requires_grad=True)
    for dt in [torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn, torch.float8_e5m2]:
        yield str(dt), torch.zeros(6, 4, dtype=dt)[::2]
    yield "scalar", torch.tensor(3.5)
    yield "Parameter", torch.nn.Parameter(base[1])
    yield "subclass", base[1:3].as_subclass(_Subclass)
    yield "permuted f16 KV view", torch.zeros(1, 8, 256, 128, dtype=torch.float16).permute(0, 2, 1, 3)[0, 3:]
    # the same through the public attributes (no DLPack exchange API)
    yield "attributes: narrow + step", base[1:3, ::2, 1:7].as_subclass(_NoExchange)
    yield "attributes: expand", base[0, 0].expand(5, 8).as_subclass(_NoExchange)
    yield "attributes: bfloat16", base.to(torch.bfloat16)[::2].as_subclass(_NoExchange)
    yield "attributes: scalar", torch.tensor(3.5).as_subclass(_NoExchange)


@pytest.mark.parametrize("label,array", list(_numpy_cases()), ids=lambda x: x if isinstance(x, str) else "")
def test_numpy_read_in_rust_as_in_python(label, array):
    fields = _describe(array)
    assert fields[-1], f"{label}: expected the Rust path"
    assert tuple(fields[:-1]) == tuple(_python_view(array)), label


@pytest.mark.parametrize("label,tensor", list(_torch_cases()), ids=lambda x: x if isinstance(x, str) else "")
def test_torch_read_in_rust_as_in_python(label, tensor):
    fields = _describe(tensor)
    assert fields[-1], f"{label}: expected the Rust path"
    assert tuple(fields[:-1]) == tuple(_python_view(tensor)), label


def test_the_rest_goes_through_python():
    import ml_dtypes

    c = torch.randn(3, 4, dtype=torch.complex64)
    cases = {
        "big-endian": np.arange(12, dtype=">f4").reshape(3, 4),
        "bfloat16 (ml_dtypes)": np.ones(6, dtype=ml_dtypes.bfloat16),
        "empty numpy": np.zeros((0, 3), np.float32),
        "empty torch": torch.zeros(0, 3),
        "list": [[1.0, 2.0], [3.0, 4.0]],
        "negative view": c.conj().imag,
        "negative view (_neg_view)": torch._neg_view(torch.arange(6.0).reshape(2, 3)),
        "negative view, 7-d": torch._neg_view(torch.arange(6.0).reshape(1, 1, 1, 1, 1, 2, 3)),
        "negative Parameter view": torch._neg_view(torch.nn.Parameter(torch.arange(3.0))),
        "ZeroTensor (no memory)": torch._efficientzerotensor(2, 3),
        "negative view, attributes": torch._neg_view(torch.arange(6.0)).as_subclass(_NoExchange),
    }
    for label, t in cases.items():
        fields = _describe(t)
        assert not fields[-1], f"{label}: expected the Python path"
        want = _python_view(t)
        # the Python path converts (byte order, negation, lists): compare
        # what it reports rather than addresses of its temporary copies
        assert fields[:4] == want[:4], label
    # a dtype tracedump has no name for: the Python path's clear error
    with pytest.raises(TypeError, match="complex64"):
        _describe(c)
