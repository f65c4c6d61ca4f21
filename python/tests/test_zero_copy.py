"""Zero-copy proof, read-only numpy arrays, and torch's copy-on-write mapping."""

import gc
import hashlib
import shutil

import numpy as np
import pytest

import tracedump


def _base_chain(a):
    chain = []
    while a is not None:
        chain.append(a)
        a = getattr(a, "base", None)
    return chain


def test_numpy_arrays_share_the_mapping(demo):
    t = tracedump.open(demo[0])
    k, cache = t["k-0"].numpy(), t["cache_k_l0"].numpy()
    assert np.shares_memory(k, cache)
    assert isinstance(_base_chain(k)[-1], tracedump.MappedBytes)
    assert _base_chain(k)[-1].copy_on_write is False
    # the storage's address plus the view's offset is the array's address
    assert k.__array_interface__["data"][0] == cache.__array_interface__["data"][0]
    raw = t["cache_k_l0"].raw()
    assert raw.dtype == np.uint8 and raw.nbytes == cache.nbytes and np.shares_memory(raw, cache)


def test_numpy_is_read_only(demo):
    a = tracedump.open(demo[0])["k-0"].numpy()
    assert a.flags.writeable is False
    with pytest.raises(ValueError):
        a[0, 0, 0, 0] = 1.0
    with pytest.raises(ValueError):
        a.flags.writeable = True
    with pytest.raises(ValueError):
        np.add(a, 1, out=a)


def test_arrays_keep_the_mapping_alive(demo):
    t = tracedump.open(demo[0])
    a = t["k-0"].numpy()
    expect = a.copy()
    t.close()
    del t
    gc.collect()
    assert np.array_equal(a, expect)


def test_torch_zero_copy_strides_and_data_ptr(demo):
    torch = pytest.importorskip("torch")
    t = tracedump.open(demo[0])
    k, cache = t["k-0"], t["cache_k_l0"]
    tk, tc = k.torch(), cache.torch()
    assert tk.stride() == k.strides == (512, 16, 64, 1)
    assert tuple(tk.shape) == k.shape and tk.dtype == torch.float32
    # two views of one storage: one address, plus their offsets
    assert tk.untyped_storage().data_ptr() == tc.untyped_storage().data_ptr()
    assert tk.data_ptr() - k.storage_offset == tc.data_ptr() - cache.storage_offset
    assert torch.equal(tk, torch.from_numpy(k.numpy().copy()))
    q = t["Qcur-0"].torch()
    assert q.dtype == torch.float16 and q.stride() == (64, 1)


def test_torch_in_place_write_is_private(demo, tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "copy.tdump"
    shutil.copy(demo[0], path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    t = tracedump.open(path)
    before = t["k-0"].numpy().copy()
    x = t["k-0"].torch()
    x.mul_(3.0)  # through the permuted view, into the file's pages
    x[0, 0, 0, 0] = 12345.0
    assert x[0, 0, 0, 0].item() == 12345.0
    # the same trace's other torch views see it (one private mapping) ...
    assert t["cache_k_l0"].torch()[0, 0].item() == 12345.0
    # ... numpy arrays, the Rust reader, a fresh open and the file do not
    assert np.array_equal(t["k-0"].numpy(), before)
    assert np.array_equal(t["k-0"].to_f32(), before)
    assert np.array_equal(tracedump.open(path)["k-0"].numpy(), before)
    assert tracedump.open(path).verify().ok
    del x, t
    gc.collect()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_torch_copies_what_it_cannot_view(tmp_path):
    torch = pytest.importorskip("torch")
    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    with tracedump.Writer(tmp_path / "neg.tdump") as w:
        w.add("rev", a[::-1, ::2])
    rev = tracedump.open(tmp_path / "neg.tdump")["rev"]
    assert rev.byte_strides == (-24, 8)
    x = rev.torch()  # torch has no negative strides: a row-major copy
    assert x.is_contiguous() and torch.equal(x, torch.from_numpy(a[::-1, ::2].copy()))
    assert rev.numpy().strides == (-24, 8)  # numpy has them: no copy
