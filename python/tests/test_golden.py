"""The committed golden traces of tests/golden/py/ (made by tests/golden/gen.py):
read back bit for bit with their layouts, and tracedump.reference.attention
against torch SDPA computed on the original tensors."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

tracedump = pytest.importorskip("tracedump")
try:
    import torch
except ImportError:  # the torch checks are skipped, the numpy ones still run
    torch = None

from tracedump import reference  # noqa: E402  (imports torch only when called)

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

GOLDEN = Path(__file__).resolve().parents[2] / "tests" / "golden" / "py"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
EXPECTED = np.load(GOLDEN / "expected.npz")
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(UINT[a.dtype.itemsize])


def trace_of(file: str):
    return tracedump.open(str(GOLDEN / file))


@pytest.mark.parametrize("file", ["tensors.tdump", "attention.tdump", "mixed_kv.tdump"])
def test_files_verify(file):
    report = trace_of(file).verify()
    assert report.ok, report.faults


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_layout_and_numpy_bits(name):
    want = MANIFEST[name]
    t = trace_of(want["file"])[name]
    if "dtype" in want:
        assert t.dtype == want["dtype"]
    assert list(t.shape) == want["shape"]
    assert list(t.byte_strides) == want["byte_strides"]
    assert list(t.strides) == want["strides"]
    assert t.storage_offset == want["storage_offset"]
    assert t.is_contiguous == want["is_contiguous"]
    a = t.numpy()
    # zero-copy: numpy sees the recorded strides themselves
    assert list(a.strides) == want["byte_strides"]
    expected = EXPECTED[want["key"]]
    assert a.shape == expected.shape
    np.testing.assert_array_equal(bits(a), expected)


@needs_torch
@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_torch_bits(name):
    want = MANIFEST[name]
    t = trace_of(want["file"])[name]
    x = t.torch()
    assert list(x.shape) == want["shape"]
    if all(s >= 0 for s in want["strides"]):
        assert list(x.stride()) == want["strides"]  # zero-copy, the true strides
    # else: torch has no negative strides; a copy
    size = x.element_size()
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[size]
    got = x.contiguous().view(as_int).numpy().view(UINT[size])
    np.testing.assert_array_equal(got, EXPECTED[want["key"]])


def test_views_record_their_parent():
    trace = trace_of("tensors.tdump")
    base = trace["view.base"]
    for name in ("view.permuted", "view.transposed", "view.sliced_step", "view.offset", "view.rows"):
        t = trace[name]
        assert [p["name"] for p in t.parents] == ["view.base"], name
        assert [op["op"] for op in t.lineage] == ["view"], name
        assert t.storage == base.id  # a view of the base's bytes: nothing stored twice
    assert trace["view.offset"].storage_offset == 7 * 4
    assert trace["view.expanded"].byte_strides[1] == 0


def test_special_values_survive():
    trace = trace_of("tensors.tdump")
    f32 = trace["dtype.f32"].numpy().ravel()
    assert math.isnan(f32[0]) and f32[1] == math.inf and f32[2] == -math.inf
    assert f32[3] == 0 and math.copysign(1, f32[3]) == -1
    assert trace["dtype.i64"].numpy().ravel()[:2].tolist() == [-(2**63), 2**63 - 1]
    assert trace["dtype.u64"].numpy().ravel()[1] == np.iinfo(np.uint64).max
    assert trace["dtype.f8_e4m3"].numpy().view(np.uint8).ravel()[0] == 0x7F


# --------------------------------------------------------------------------
# tracedump.reference.attention


def rel(a, b) -> float:
    a = torch.as_tensor(a).double()
    b = torch.as_tensor(b).double()
    return float((a - b).abs().max() / b.abs().max())


@needs_torch
def test_attention_permuted_f16_cache_gqa():
    r = reference.attention(trace_of("attention.tdump"), 0)
    assert r.dims == {
        "batch": 1,
        "n_heads": 4,
        "n_kv_heads": 2,
        "n_tokens": 3,
        "n_kv": 8,
        "head_dim": 16,
        "head_dim_v": 16,
    }
    assert r.sources["q"]["layout"] == "bshd"  # Qcur: ne=[d, n_head, n_tokens]
    assert r.sources["k"]["layout"] == "bhsd" and r.sources["k"]["name"] == "k-0"
    assert r.sources["out"]["layout"] == "s(hd)"
    assert r.sources["mask"]["name"] == "KQ_mask"
    assert r.scale == pytest.approx(0.25)
    # the inputs as read equal the original tensors exactly
    assert torch.equal(r.q.float(), torch.from_numpy(EXPECTED["attn.l0.q"]))
    assert torch.equal(r.k.float(), torch.from_numpy(EXPECTED["attn.l0.k"]))
    assert torch.equal(r.v.float(), torch.from_numpy(EXPECTED["attn.l0.v"]))
    sdpa = torch.from_numpy(EXPECTED["attn.l0.sdpa"])  # SDPA on the original tensors
    assert r.sdpa.shape == sdpa.shape == (1, 4, 3, 16)
    assert rel(r.sdpa, sdpa) <= 1e-3
    assert rel(r.naive, sdpa) <= 1e-3
    assert r.metrics["sdpa"]["max_rel"] <= 1e-3
    assert r.metrics["naive"]["cosine"] > 0.99999
    html = r._repr_html_()
    assert "kqv_out-0" in html and "<table>" in html
    assert r["sdpa"] is r.sdpa


@needs_torch
def test_attention_f32_transposed_v_and_recorded_scale():
    r = reference.attention(trace_of("attention.tdump"), 1, step=0)
    assert r.sources["q"]["name"] == "q-1"  # the permuted view, not its source Qcur-1
    assert r.sources["v"]["layout"] == "bhds"  # llama.cpp's transposed V cache
    assert r.scale == struct.unpack("<f", struct.pack("<f", 0.3))[0]
    sdpa = torch.from_numpy(EXPECTED["attn.l1.sdpa"])
    assert rel(r.sdpa, sdpa) <= 1e-6
    assert rel(r.naive, torch.from_numpy(EXPECTED["attn.l1.naive"])) <= 1e-12
    assert r.metrics["sdpa"]["max_rel"] <= 1e-6 and r.metrics["naive"]["max_rel"] <= 1e-6


@needs_torch
def test_attention_softcap_from_flash_attn_ext():
    trace = trace_of("attention.tdump")
    r = reference.attention(trace, 2)
    assert r.softcap == 20.0 and r.scale == 0.25
    assert r.sources["out"]["layout"] == "bshd"
    assert r.sdpa is None and "sdpa" not in r.metrics
    assert rel(r.naive, torch.from_numpy(EXPECTED["attn.l2.naive"])) <= 1e-12
    assert r.metrics["naive"]["max_rel"] <= 1e-6
    # soft-capping off: SDPA again, and the engine's (capped) output differs
    r0 = reference.attention(trace, 2, softcap=0)
    assert rel(r0.sdpa, torch.from_numpy(EXPECTED["attn.l2.nocap_sdpa"])) <= 1e-6
    assert r0.metrics["sdpa"]["max_rel"] > 1e-3


@needs_torch
@pytest.mark.parametrize("layer", [0, 1])
def test_attention_mixed_kv_cache(layer):
    # layer 0: K/V only as q8_0|q4_0 cold + f16 hot parts; layer 1: also the derived K-1/V-1
    r = reference.attention(trace_of("mixed_kv.tdump"), layer)
    if layer == 0:
        assert r.sources["k"]["name"] == "concat(K_quant-0, K_hot-0)"
    else:
        assert r.sources["k"]["name"] == "K-1"
    assert r.causal and r.dims["n_kv"] == 48
    assert torch.equal(r.k.float(), torch.from_numpy(EXPECTED[f"mixed.l{layer}.k"]))
    assert torch.equal(r.v.float(), torch.from_numpy(EXPECTED[f"mixed.l{layer}.v"]))
    assert rel(r.sdpa, torch.from_numpy(EXPECTED[f"mixed.l{layer}.sdpa"])) <= 1e-6
    assert r.metrics["sdpa"]["max_rel"] <= 1e-6 and r.metrics["naive"]["max_rel"] <= 1e-6


@needs_torch
def test_attention_names_override_roles():
    trace = trace_of("attention.tdump")
    a = reference.attention(trace, 1)
    b = reference.attention(trace, 1, q="Qcur-1", k="k-1", v=trace["v-1"], out="kqv_out-1", mask="KQ_mask")
    assert b.sources["q"]["layout"] == "bshd"
    assert torch.equal(a.sdpa, b.sdpa)
    # arrays in torch's layout
    c = reference.attention(trace, 1, q=a.q, k=a.k, v=a.v, mask=False, causal=True)
    assert rel(c.sdpa, a.sdpa) <= 1e-6  # the KQ_mask is causal


def _write(path, tensors):
    with tracedump.Writer(str(path)) as w:
        for name, t, kw in tensors:
            w.add(name, t, **kw)
    return tracedump.open(str(path))


@needs_torch
def test_ambiguous_layout_is_an_error(tmp_path):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 4, 16, generator=g) for _ in range(3))
    ggml = ([16, 4, 4, 1], [4, 64, 256, 1024])
    trace = _write(
        tmp_path / "amb.tdump",
        [
            ("q", q, dict(layer=0, role="q", ggml=ggml)),
            ("k", k, dict(layer=0, role="k", ggml=ggml)),
            ("v", v, dict(layer=0, role="v", ggml=ggml)),
        ],
    )
    # 4 heads x 4 tokens: ggml [d, tokens, heads] and [d, heads, tokens] both fit
    with pytest.raises(reference.LayoutError, match="ambiguous"):
        reference.attention(trace, 0)
    r = reference.attention(trace, 0, layouts={"q": "bhsd", "k": "bhsd", "v": "bhsd"})
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert rel(r.sdpa, want) <= 1e-6
    r = reference.attention(trace, 0, layouts={"q": "bshd", "k": "bshd", "v": "bshd"})
    want = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), is_causal=True)
    assert rel(r.sdpa, want) <= 1e-6


@needs_torch
def test_inconsistent_layout_is_an_error(tmp_path):
    trace = _write(
        tmp_path / "bad.tdump",
        [
            ("q", torch.randn(1, 2, 3, 16), dict(layer=0, role="q")),
            ("k", torch.randn(1, 2, 5, 8), dict(layer=0, role="k")),
            ("v", torch.randn(1, 2, 5, 8), dict(layer=0, role="v")),
        ],
    )
    with pytest.raises(reference.LayoutError, match="no consistent attention layout"):
        reference.attention(trace, 0)


@needs_torch
def test_missing_role_and_steps(tmp_path):
    q = torch.randn(1, 2, 1, 8)
    trace = _write(
        tmp_path / "steps.tdump",
        [
            (f"{r}-0", torch.randn(1, 2, 1 if r == "q" else 3 + s, 8), dict(layer=0, step=s, role=r))
            for s in (0, 1)
            for r in ("q", "k", "v")
        ]
        + [("lonely", q, dict(layer=1, step=0, role="q"))],
    )
    with pytest.raises(LookupError, match="steps"):
        reference.attention(trace, 0)
    r = reference.attention(trace, 0, step=1)
    assert r.dims["n_kv"] == 4 and r.step == 1
    with pytest.raises(LookupError, match="role 'k'"):
        reference.attention(trace, 1)


@needs_torch
def test_boolean_mask_and_bottom_right_causal(tmp_path):
    g = torch.Generator().manual_seed(3)
    q, k, v = (
        torch.randn(1, 2, 2, 8, generator=g),
        torch.randn(1, 2, 5, 8, generator=g),
        torch.randn(1, 2, 5, 8, generator=g),
    )
    keep = torch.ones(2, 5, dtype=torch.bool)
    keep[0, 4] = False  # query 0 (position 3) must not see position 4
    trace = _write(
        tmp_path / "m.tdump",
        [
            ("q", q, dict(layer=0, role="q")),
            ("k", k, dict(layer=0, role="k")),
            ("v", v, dict(layer=0, role="v")),
            ("mask", keep, dict(layer=0, role="mask")),
        ],
    )
    r = reference.attention(trace, 0)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    assert not r.causal and rel(r.sdpa, want) <= 1e-6
    r2 = reference.attention(trace, 0, mask=False)  # causal, aligned to the end: the same mask
    assert r2.causal and rel(r2.sdpa, want) <= 1e-6


@needs_torch
def test_attention_on_the_cli_demo(demo):
    """The Rust demo's runs: Q/V as [n_tokens, n_embd], K as the f16 copy of a permuted cache view."""
    test_run, reference_run = demo
    for path, tol in ((test_run, 1e-3), (reference_run, 1e-6)):
        trace = tracedump.open(str(path))
        for layer in range(4):
            r = reference.attention(trace, layer)
            assert r.dims["n_heads"] == 4 and r.dims["head_dim"] == 16 and r.causal
            assert r.sources["q"]["layout"] == "s(hd)" and r.sources["k"]["layout"] == "bhsd"
            assert r.metrics["sdpa"]["max_rel"] <= tol, (path.name, layer, r.metrics)
        if path == test_run:  # the f16 copy flash attention reads, not the f32 view it was made from
            assert r.sources["k"]["name"] == "k-3 (copy)"
