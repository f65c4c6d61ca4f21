"""Reading the Rust-written demo trace: descriptions, lookup, metadata, verify."""

import numpy as np
import pytest

import tracedump


def test_open_len_iter_names(demo):
    a, _ = demo
    with tracedump.open(a) as t:
        assert len(t) == 67
        names = [x.name for x in t.values()]
        assert names[:3] == ["inp_embd", "attn_norm-0", "Qcur-0"]
        ids = [x.id for x in t.values()]
        assert ids == sorted(ids)
        assert t.names()[:3] == names[:3]
        assert t.path.endswith("demo.tdump")
        assert t.is_finished and not t.is_gguf
        assert "k-0" in t and "nope" not in t
        assert t[0].name == "inp_embd" and t[-1].name == names[-1]


def test_k_view_has_engine_layout_and_lineage(demo):
    t = tracedump.open(demo[0])
    k = t["k-0"]
    assert (k.dtype, k.shape) == ("f32", (1, 4, 8, 16))
    assert k.byte_strides == (2048, 64, 256, 4)
    assert k.strides == (512, 16, 64, 1)
    assert k.storage_offset == 0 and not k.is_contiguous
    assert (k.layer, k.step, k.role) == (0, 0, "k")
    assert k.parents == [{"id": 6, "name": "cache_k_l0"}]
    assert k.lineage[0] == {"op": "view", "offset": 0, "shape": [1, 8, 4, 16], "byte_strides": [2048, 256, 64, 4]}
    assert k.lineage[1] == {"op": "permute", "axes": [0, 2, 1, 3]}
    assert k.ggml == {"ne": [16, 8, 4, 1], "nb": [4, 256, 64, 2048]}
    a = k.numpy()
    assert a.strides == (2048, 64, 256, 4)
    cache = t["cache_k_l0"].numpy()
    assert np.array_equal(a, cache[:8].reshape(1, 8, 4, 16).transpose(0, 2, 1, 3))
    assert np.array_equal(k.to_f32(), a)
    m = k.materialize()
    assert m.flags.c_contiguous and m.flags.writeable and np.array_equal(m, a)
    assert m.dtype == np.float32


def test_lookup_errors_and_occurrences(demo):
    t = tracedump.open(demo[0])
    with pytest.raises(tracedump.TraceNotFoundError) as e:
        t["no-such-tensor"]
    assert isinstance(e.value, KeyError) and isinstance(e.value, tracedump.TraceError)
    assert "no-such-tensor" in str(e.value) and "demo.tdump" in str(e.value)
    assert t["k-0#0"].id == t["k-0"].id
    with pytest.raises(KeyError):
        t["k-0#1"]
    with pytest.raises(IndexError):
        t[10_000]
    assert t.get("nope") is None
    assert [x.id for x in t.find("k-0")] == [t["k-0"].id]


def test_filter(demo):
    t = tracedump.open(demo[0])
    l2 = t.filter(layer=2)
    assert l2 and all(x.layer == 2 for x in l2)
    ks = t.filter(regex=r"^k-\d$")
    assert [x.name for x in ks] == ["k-0", "k-1", "k-2", "k-3"]
    assert [x.name for x in t.filter(regex="^k-", role="k", layer=1)] == ["k-1", "k-1 (copy)"]
    with pytest.raises(ValueError):
        t.filter(regex="(")


def test_metadata_stats_verify(demo):
    t = tracedump.open(demo[0])
    md = t.metadata
    assert md["n_tokens"] == 8 and isinstance(md["engine"], str)
    sm = t["kq_soft_max-0"]
    assert sm.is_stats_only
    assert set(sm.stats) >= {"count", "mean", "std", "min", "max"}
    with pytest.raises(tracedump.TraceUnsupportedError, match="statistics only"):
        sm.numpy()
    with pytest.raises(tracedump.TraceError, match="statistics only"):
        sm.torch()
    rep = t.verify()
    assert rep.ok and bool(rep) and rep.faults == [] and rep.tensors == 67


def test_close_and_context_manager(demo):
    t = tracedump.open(demo[0])
    k = t["k-0"]
    a = k.numpy()
    t.close()
    assert t.closed
    with pytest.raises(tracedump.TraceError, match="closed"):
        len(t)
    # tensors and arrays keep the mapping alive
    assert k.numpy().shape == a.shape
    del t, k
    assert np.isfinite(a).all()
    with tracedump.open(demo[0]) as t2:
        assert len(t2) == 67
    assert t2.closed


def test_reprs(demo):
    t = tracedump.open(demo[0])
    assert "67 tensors" in repr(t)
    assert "k-0" in repr(t["k-0"]) and "byte_strides" in repr(t["k-0"])
    assert "<table>" in t._repr_html_() and "k-0" in t._repr_html_()
    h = t["k-0"]._repr_html_()
    assert "<table>" in h and "permute" in h and "ne" in h
    assert "VerifyReport(ok=True" in repr(t.verify())
