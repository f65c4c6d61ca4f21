"""The Writer: metadata, lineage, storage reuse, stats, errors."""

import numpy as np
import pytest

import tracedump


def test_run_and_tensor_metadata(tmp_path):
    p = tmp_path / "m.tdump"
    with tracedump.Writer(p, engine="mine", n=3, big=2**63 + 1, ratio=0.5, ok=True, blob=b"\x00\x01", cfg={"l": [1, "a", None and 1 or 2.5]}) as w:
        assert "open" in repr(w)
        i = w.add("x", np.zeros(3, np.float32), layer=2, step=5, role="q", note="hi", k=np.int64(7))
        assert i == 1
    assert w.closed and w.close() is None
    t = tracedump.open(p)
    md = t.metadata
    assert md["engine"] == "mine" and md["n"] == 3 and md["big"] == 2**63 + 1
    assert md["ratio"] == 0.5 and md["ok"] is True and md["blob"] == b"\x00\x01"
    assert md["cfg"] == {"l": [1, "a", 2.5]} and "tracedump_version" in md
    x = t["x"]
    assert (x.layer, x.step, x.role) == (2, 5, "q")
    assert x.metadata == {"note": "hi", "k": 7}


def test_explicit_lineage_and_ggml(tmp_path):
    p = tmp_path / "l.tdump"
    a = np.arange(16, dtype=np.float32).reshape(4, 4)
    with tracedump.Writer(p) as w:
        ia = w.add("a", a)
        w.add("at", np.ascontiguousarray(a.T), lineage={"parents": ["a"], "ops": [{"op": "transpose", "a": 0, "b": 1}, {"op": "cont"}]})
        ib = w.add("b", (a * 2).astype(np.float16), lineage={"parents": [ia], "ops": [{"op": "convert", "dtype": "f16"}]}, ggml=([4, 4], [2, 8]))
        with pytest.raises(ValueError, match="not recorded"):
            w.add("c", a, lineage={"parents": ["nope"]})
        with pytest.raises(ValueError, match="frobnicate"):
            w.add("c", a, lineage={"parents": [ia], "ops": [{"op": "frobnicate"}]})
        with pytest.raises(ValueError, match="parents"):
            w.add("c", a, lineage={"ops": [{"op": "cont"}]})
        with pytest.raises(TypeError):
            w.add("c", a, lineage=[{"op": "cont"}])
    t = tracedump.open(p)
    assert t["at"].parents == [{"id": ia, "name": "a"}]
    assert t["at"].lineage == [{"op": "transpose", "a": 0, "b": 1}, {"op": "cont"}]
    assert t["b"].ggml == {"ne": [4, 4], "nb": [2, 8]} and t["b"].id == ib
    assert t["b"].lineage == [{"op": "convert", "dtype": "f16"}]
    assert t.verify().ok


@pytest.mark.parametrize("mode", ["sync", "background"])
@pytest.mark.parametrize("rows", [8, 1 << 16])  # 128 B, and 1 MiB (staged in chunks)
def test_storage_reused_until_it_changes(tmp_path, mode, rows):
    p = tmp_path / "s.tdump"
    cache = np.zeros((rows, 4), np.float32)
    with tracedump.Writer(p, mode=mode) as w:
        w.add("cache", cache)
        w.add("k#0", cache[:2].T, lineage="auto")
        cache[2] = 1.0  # in place, as an engine updates its KV cache
        w.add("k#1", cache[:3].T, lineage="auto")
        cache[2] = 0.0  # back as recorded: a view of the recording again
        w.add("k#2", cache[:4].T, lineage="auto")
    t = tracedump.open(p)
    assert t["k#0"].storage == t["cache"].id and t["k#0"].parents[0]["name"] == "cache"
    assert t["k#1"].storage != t["cache"].id and t["k#1"].parents == []
    assert np.array_equal(t["k#0"].numpy(), np.zeros((4, 2)))
    assert np.array_equal(t["k#1"].numpy()[:, 2], np.ones(4))
    assert np.array_equal(t["k#2"].numpy(), np.zeros((4, 4)))
    assert t.verify().ok


def test_repeated_names(tmp_path):
    p = tmp_path / "r.tdump"
    with tracedump.Writer(p) as w:
        for step in range(3):
            w.add("h", np.full(2, step, np.int32), step=step)
    t = tracedump.open(p)
    assert [x.step for x in t.find("h")] == [0, 1, 2]
    assert t["h"].step == 0 and t["h#2"].step == 2 and t["h#2"].occurrence == 2
    assert t.names() == ["h"]


def test_add_stats(tmp_path):
    p = tmp_path / "st.tdump"
    a = np.arange(10, dtype=np.float32)[::2]
    with tracedump.Writer(p) as w:
        w.add_stats("s", a, layer=1)
    s = tracedump.open(p)["s"]
    assert s.is_stats_only and s.shape == (5,) and s.layer == 1
    assert s.stats["count"] == 5 and s.stats["mean"] == 4.0 and s.stats["max"] == 8.0


def test_torch_stats_and_bf16(tmp_path):
    torch = pytest.importorskip("torch")
    p = tmp_path / "tb.tdump"
    x = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
    with tracedump.Writer(p) as w:
        w.add_stats("s", x.t())
        w.add("x", x)
    t = tracedump.open(p)
    assert t["s"].stats["mean"] == 2.5 and t["s"].shape == (3, 2)
    assert np.array_equal(t["x"].materialize("f32"), np.arange(6, dtype=np.float32).reshape(2, 3))
    assert t["x"].materialize("f64").dtype == np.float64


def test_errors(tmp_path):
    w = tracedump.Writer(tmp_path / "e.tdump")
    with pytest.raises(TypeError):
        w.add("c", np.zeros(2, np.complex64))
    with pytest.raises(TypeError):
        w.add("o", np.array(["a"], dtype=object))
    w.close()
    with pytest.raises(tracedump.TraceError, match="closed"):
        w.add("x", np.zeros(1))
    with pytest.raises(tracedump.TraceIOError):
        tracedump.Writer(tmp_path / "no" / "such" / "dir.tdump")


def test_unfinished_file_is_readable(tmp_path):
    p = tmp_path / "u.tdump"
    w = tracedump.Writer(p)
    w.add("a", np.ones(4, np.float32))
    w.flush()
    t = tracedump.open(p)  # no footer yet: opened by scanning
    assert not t.is_finished and np.array_equal(t["a"].numpy(), np.ones(4))
    w.close()
    assert tracedump.open(p).is_finished


def test_many_short_lived_tensors(tmp_path):
    p = tmp_path / "many.tdump"
    base = np.arange(64, dtype=np.float32).reshape(8, 8)
    with tracedump.Writer(p) as w:
        ib = w.add("base", base)
        for i in range(300):  # temporaries: their regions are dropped as they die
            w.add(f"tmp{i}", np.full(4, i, np.float32))
        iv = w.add("view", base.T, lineage="auto")
    t = tracedump.open(p)
    assert t["view"].storage == ib and t["view"].parents[0]["id"] == ib and iv == ib + 301
    assert np.array_equal(t["tmp299"].numpy(), np.full(4, 299, np.float32))


@pytest.mark.parametrize("mode", ["sync", "background"])
def test_modes_and_filters(tmp_path, mode):
    p = tmp_path / f"{mode}.tdump"
    x = np.arange(1 << 20, dtype=np.float32).reshape(1024, 1024)
    with tracedump.Writer(p, mode=mode, queue_bytes=1 << 22, include=r"^keep", layers=[1, 3], steps=[0]) as w:
        assert w.wants("keep.a", layer=1, step=0) and not w.wants("drop.a", layer=1, step=0)
        assert not w.wants("keep.a", layer=2) and w.wants("keep.emb")
        ids = [
            w.add("keep.l1", x, layer=1, step=0),
            w.add("keep.l2", x, layer=2, step=0),
            w.add("keep.l3s1", x, layer=3, step=1),
            w.add("drop.l1", x, layer=1, step=0),
            w.add("keep.t", x.T, layer=3, step=0),  # non-contiguous: storage + view
            w.add("keep.emb", x[:2]),  # no layer, no step: passes both
            w.add_stats("keep.stats", x, layer=2),
        ]
        assert [i is None for i in ids] == [False, True, True, True, False, False, True]
        assert w.dropped == 0
    t = tracedump.open(p)
    assert t.names() == ["keep.l1", "keep.t", "keep.emb"]
    np.testing.assert_array_equal(t["keep.t"].numpy(), x.T)
    assert t["keep.t"].byte_strides == (4, 4096)
    np.testing.assert_array_equal(t["keep.l1"].numpy(), x)


@pytest.mark.parametrize("mode", ["sync", "background"])
def test_preallocated_queue(tmp_path, mode):
    """preallocate=True: the queue's memory is allocated up front (sync
    mode: nothing to allocate); tensors larger than a staging chunk and
    than the whole queue come back whole."""
    p = tmp_path / f"pre-{mode}.tdump"
    rng = np.random.default_rng(3)
    arrays = {f"t{i}": rng.standard_normal(n).astype(np.float32)
              for i, n in enumerate([10, 1 << 16, (1 << 18) + 3, 1 << 20, 5])}
    with tracedump.Writer(p, mode=mode, queue_bytes=3 << 20, preallocate=True) as w:
        for k, a in arrays.items():
            w.add(k, a)
            w.add(k + ".T", a[::-1])
    t = tracedump.open(p)
    assert t.verify().ok
    for k, a in arrays.items():
        np.testing.assert_array_equal(t[k].numpy(), a)
        np.testing.assert_array_equal(t[k + ".T"].numpy(), a[::-1])


def test_background_drop_counts(tmp_path):
    p = tmp_path / "drop.tdump"
    x = np.ones(1 << 18, dtype=np.float32)  # 1 MiB each, queue of 1 MiB
    with tracedump.Writer(p, mode="background", queue_bytes=1 << 20, when_full="drop") as w:
        ids = [w.add(f"t{i}", x) for i in range(200)]
        dropped = w.dropped
    kept = [i for i in ids if i is not None]
    assert dropped == ids.count(None) and len(kept) + dropped == 200
    assert len(tracedump.open(p)) == len(kept)


def test_bad_writer_options(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        tracedump.Writer(tmp_path / "a.tdump", mode="fast")
    with pytest.raises(ValueError, match="when_full"):
        tracedump.Writer(tmp_path / "b.tdump", mode="background", when_full="never")
    with pytest.raises(ValueError, match="include"):
        tracedump.Writer(tmp_path / "c.tdump", include="(")


@pytest.mark.parametrize("mode", ["sync", "background"])
def test_views_found_among_many_regions(tmp_path, mode):
    """A random mix of arrays of many sizes (so many length classes and
    address buckets), views of them, in-place changes and deaths: every
    tensor reads back as it was when added, and a view of bytes recorded
    earlier and unchanged since, whose owner lives, is a view of that
    record rather than a copy."""
    rng = np.random.default_rng(7)
    p = tmp_path / "mix.tdump"
    live = {}  # key -> [array, its record id while its bytes are unchanged, else None]
    expected = {}  # name -> values when added
    must_share = {}  # name -> a record id its bytes must come from
    with tracedump.Writer(p, mode=mode) as w:
        for i in range(3000):
            action = rng.integers(0, 10)
            if action < 3 or not live:
                n = int(rng.choice([1, 3, 16, 64, 200, 1000, 5000]))
                a = rng.standard_normal(n).astype(np.float32)
                name = f"base{i}"
                live[name] = [a, w.add(name, a)]
                expected[name] = a.copy()
            elif action < 7:
                key = list(live)[rng.integers(0, len(live))]
                a, rid = live[key]
                lo = int(rng.integers(0, a.size))
                hi = int(rng.integers(lo + 1, a.size + 1))
                step = int(rng.choice([1, 1, 2, -1]))
                v = a[lo:hi:step] if step > 0 else a[lo:hi][::-1]
                name = f"view{i}"
                w.add(name, v, lineage="auto" if i % 2 else None)
                expected[name] = v.copy()
                if rid is not None:
                    must_share[name] = rid
            elif action < 9:
                key = list(live)[rng.integers(0, len(live))]
                live[key][0][rng.integers(0, live[key][0].size)] += 1.0
                live[key][1] = None  # changed since recorded
            else:
                del live[list(live)[rng.integers(0, len(live))]]
    t = tracedump.open(p)
    for name, values in expected.items():
        assert np.array_equal(t[name].numpy(), values), name
    for name, rid in must_share.items():
        assert t[name].storage == rid, name
    assert len(must_share) > 500
    assert t.verify().ok


@pytest.mark.parametrize("mode", ["sync", "background"])
def test_negative_views_read_back_negated(tmp_path, mode):
    # torch's lazy negation (the negative bit of `_neg_view`, `conj().imag`)
    # shares its base's memory: the bytes there are the base's, the values
    # are their negation. Each must read back as the tensor's values, beside
    # plain tensors of the same storage.
    torch = pytest.importorskip("torch")
    base = torch.arange(12.0).reshape(3, 4)
    c = torch.complex(torch.arange(4.0), torch.arange(4.0) + 10)
    cases = {
        "base": base,
        "neg": torch._neg_view(base),
        "neg_t": torch._neg_view(base).t(),
        "neg_7d": torch._neg_view(torch.arange(6.0).reshape(1, 1, 1, 1, 1, 2, 3)),
        "conj_imag": c.conj().imag,
        "row": base[1],
        "neg_grad": torch._neg_view(torch.ones(5, requires_grad=True)),
    }
    p = tmp_path / "neg.tdump"
    with tracedump.Writer(p, mode=mode) as w:
        for k, v in cases.items():
            w.add(k, v)
        # quantized from the negated values (q8_0 of 127/128 is exact: scale 1/128)
        w.add_quantized("q_neg", torch._neg_view(torch.full((32,), 127 / 128)))
    t = tracedump.open(p)
    assert t["q_neg"].numpy().tolist() == [-127 / 128] * 32
    for k, v in cases.items():
        want = v.detach().resolve_neg().numpy()
        assert np.array_equal(t[k].numpy(), want), k
    assert t["neg"].numpy()[2, 3] == -11.0 and t["conj_imag"].numpy()[1] == -11.0


def test_tensors_without_dense_values(tmp_path):
    # a ZeroTensor has no storage: it is recorded as the zeros it stands
    # for; nested, sparse and meta tensors have no dense values: a
    # TypeError that names the tensor, for add, add_stats and add_quantized
    torch = pytest.importorskip("torch")
    p = tmp_path / "exotic.tdump"
    with tracedump.Writer(p) as w:
        w.add("zero", torch._efficientzerotensor(2, 3))
        w.add_stats("zero_stats", torch._efficientzerotensor(4))
        cases = {
            "nested": (torch.nested.nested_tensor([torch.ones(2), torch.ones(3)], layout=torch.jagged), "nested tensors"),
            "sparse": (torch.eye(2).to_sparse(), "sparse_coo"),
            "meta": (torch.empty(32, device="meta"), "meta tensor"),
        }
        for name, (t, what) in cases.items():
            for add in (w.add, w.add_stats, w.add_quantized):
                with pytest.raises(TypeError, match=f"^tensor `{name}`: .*{what}") as e:
                    add(name, t)
                assert isinstance(e.value.__cause__, TypeError), add
    t = tracedump.open(p)
    assert t["zero"].numpy().tolist() == [[0.0] * 3] * 2
    assert t["zero_stats"].stats["count"] == 4 and t["zero_stats"].stats["abs_max"] == 0.0
    assert len(t) == 2


def test_metadata_that_contains_itself_or_nests_too_deep(tmp_path):
    """A dict or list that contains itself crashed the interpreter (exit
    139); nesting past 32 levels was written and then refused by the
    reader. Both are a ValueError naming the key path, before anything is
    written; 32 levels are written and read back."""
    d = {}
    d["me"] = d
    w = tracedump.Writer(tmp_path / "t.tdump")
    with pytest.raises(ValueError, match=r"metadata `meta\.me\.me\.….me\.me` is nested deeper than 32"):
        w.add("x", np.zeros(2, np.float32), meta=d)
    l = []
    l.append(l)
    with pytest.raises(ValueError, match=r"metadata `info\.0\.0"):
        tracedump.Writer(tmp_path / "u.tdump", info=l)
    deep = 1
    for _ in range(33):
        deep = {"in": deep}
    with pytest.raises(ValueError, match="nested deeper than 32"):
        w.add("y", np.zeros(2, np.float32), meta=deep)
    ok = deep["in"]  # 32 levels below the entry
    w.add("z", np.zeros(2, np.float32), meta=ok)
    w.close()
    t = tracedump.open(tmp_path / "t.tdump")
    assert t.names() == ["z"]
    assert t["z"].metadata["meta"] == ok
