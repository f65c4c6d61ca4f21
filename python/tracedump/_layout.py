"""How the writer sees a numpy array or torch tensor: dtype, shape, byte
strides, byte offset, and the storage the view lies in, handed to the Rust
writer as a read-only uint8 array over the same memory (no copy)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

_NUMPY_NAMES = {
    "float32": "f32",
    "float16": "f16",
    "float64": "f64",
    "int8": "i8",
    "int16": "i16",
    "int32": "i32",
    "int64": "i64",
    "uint8": "u8",
    "uint16": "u16",
    "uint32": "u32",
    "uint64": "u64",
    "bool": "bool",
    # ml_dtypes
    "bfloat16": "bf16",
    "float8_e4m3fn": "f8_e4m3",
    "float8_e5m2": "f8_e5m2",
}

_TORCH_NAMES = {
    "torch.float32": "f32",
    "torch.float16": "f16",
    "torch.bfloat16": "bf16",
    "torch.float64": "f64",
    "torch.int8": "i8",
    "torch.int16": "i16",
    "torch.int32": "i32",
    "torch.int64": "i64",
    "torch.uint8": "u8",
    "torch.uint16": "u16",
    "torch.uint32": "u32",
    "torch.uint64": "u64",
    "torch.bool": "bool",
    "torch.float8_e4m3fn": "f8_e4m3",
    "torch.float8_e5m2": "f8_e5m2",
}


class _Span:
    """`n` bytes at address `ptr`, read-only, for numpy; keeps `owner` (the
    array or tensor whose memory it is) alive as long as the span lives."""

    def __init__(self, ptr: int, n: int, owner: Any) -> None:
        self.__array_interface__ = {
            "version": 3,
            "shape": (n,),
            "typestr": "|u1",
            "data": (ptr, True),
        }
        self._owner = owner


def _bytes_at(ptr: int, n: int, owner: Any) -> np.ndarray:
    if n == 0 or ptr == 0:
        return np.empty(0, dtype=np.uint8)
    return np.asarray(_Span(ptr, n, owner))


def _is_torch(t: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(t, torch.Tensor)


def _numpy_name(a: np.ndarray) -> str:
    name = _NUMPY_NAMES.get(a.dtype.name)
    if name is None:
        raise TypeError(f"tracedump cannot record numpy dtype {a.dtype}")
    return name


def _extent(a: np.ndarray) -> tuple[int, int]:
    """Byte range [lo, hi) that `a` touches, relative to its element 0."""
    lo = hi = 0
    for n, s in zip(a.shape, a.strides):
        if n > 1:
            reach = (n - 1) * s
            if reach < 0:
                lo += reach
            else:
                hi += reach
    return lo, hi + a.itemsize


def _little_endian(a: np.ndarray) -> np.ndarray:
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and sys.byteorder == "big"):
        return a.astype(a.dtype.newbyteorder("<"))
    return a


def _describe_numpy(a: np.ndarray):
    a = _little_endian(a)
    name = _numpy_name(a)
    shape = [int(n) for n in a.shape]
    strides = [int(s) for s in a.strides]
    if a.size == 0:
        return name, shape, strides, 0, np.empty(0, dtype=np.uint8), a
    # the base buffer: the last ndarray of the base chain
    root = a
    while isinstance(root.base, np.ndarray):
        root = root.base
    addr = a.__array_interface__["data"][0]
    lo, hi = _extent(a)
    start, end = addr + lo, addr + hi
    if root is not a and root.size > 0:
        raddr = root.__array_interface__["data"][0]
        rlo, rhi = _extent(root)
        start, end = min(start, raddr + rlo), max(end, raddr + rhi)
    buf = _bytes_at(start, end - start, root)
    return name, shape, strides, addr - start, buf, root


def _cpu_values(t):
    """`t` detached, as a dense CPU tensor holding its values in memory: lazy
    conjugation and negation resolved, a ZeroTensor made zeros; a clear
    TypeError for what has no dense values (nested, sparse, meta)."""
    import torch

    t = t.detach()
    if t.is_nested:
        raise TypeError("tracedump records dense (strided) tensors, not nested tensors "
                        "(record each component of t.unbind())")
    if t.layout is not torch.strided:
        raise TypeError(f"tracedump records dense (strided) tensors, not {t.layout}")
    if t.device.type == "meta":
        raise TypeError("a meta tensor has no values to record")
    if t._is_zerotensor():
        # a ZeroTensor has no storage: its values are zeros
        t = torch.zeros(t.shape, dtype=t.dtype)
    if t.device.type != "cpu":
        t = t.cpu()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    return t


def _describe_torch(t):
    t = _cpu_values(t)
    name = _TORCH_NAMES.get(str(t.dtype))
    if name is None:
        raise TypeError(f"tracedump cannot record torch dtype {t.dtype}")
    isz = t.element_size()
    shape = [int(n) for n in t.shape]
    strides = [int(s) * isz for s in t.stride()]
    # torch keeps one Python object per live storage (weakly referenceable,
    # dead exactly when the memory is freed): the owner of the bytes
    storage = t.untyped_storage()
    if t.numel() == 0:
        return name, shape, strides, 0, np.empty(0, dtype=np.uint8), storage
    buf = _bytes_at(storage.data_ptr(), storage.nbytes(), t)
    return name, shape, strides, int(t.storage_offset()) * isz, buf, storage


def describe(t: Any):
    """(dtype name, shape, byte strides, byte offset of element 0 in the
    buffer, the buffer as a read-only uint8 array, the object that owns it)."""
    if _is_torch(t):
        return _describe_torch(t)
    if not isinstance(t, np.ndarray):
        t = np.asarray(t)
    return _describe_numpy(t)


def contiguous_bytes(t: Any):
    """(dtype name, shape, the row-major bytes as a uint8 array)."""
    if _is_torch(t):
        t = _cpu_values(t).contiguous()
        name = _TORCH_NAMES.get(str(t.dtype))
        if name is None:
            raise TypeError(f"tracedump cannot record torch dtype {t.dtype}")
        n = t.numel() * t.element_size()
        return name, [int(x) for x in t.shape], _bytes_at(t.data_ptr(), n, t)
    a = _little_endian(np.ascontiguousarray(np.asarray(t)))
    name = _numpy_name(a)
    return name, [int(x) for x in a.shape], a.reshape(-1).view(np.uint8)


def f32_values(t: Any):
    """(shape, the values as a contiguous float32 array)."""
    if _is_torch(t):
        t = _cpu_values(t).float().contiguous()
        return [int(x) for x in t.shape], t.reshape(-1).numpy()
    a = np.ascontiguousarray(np.asarray(t), dtype=np.float32)
    return [int(x) for x in a.shape], a.reshape(-1)
