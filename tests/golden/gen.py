"""Write the Python golden traces in tests/golden/py/ (read by python/tests/test_golden.py).

    .venv/bin/python tests/golden/gen.py            # rewrite every file
    .venv/bin/python tests/golden/gen.py --no-rust  # keep mixed_kv.tdump (no cargo)

Needs torch, numpy and gguf-py (in .venv). The outputs are committed:

* ``tensors.tdump`` -- every dtype (f32, f16, bf16, f64, i8..i64, u8..u64,
  bool, f8_e4m3, f8_e5m2, with NaN/Inf/-0/subnormals and the integer
  extremes) and views with real strides: permuted, transposed, sliced with a
  step, expanded (stride 0), offset, negative strides (numpy). Written by the
  Python ``tracedump.Writer``.
* ``attention.tdump`` -- three attention layers as llama.cpp records them
  (Python ``Writer`` with ``ggml=(ne, nb)`` and lineage):
  layer 0: an f16 KV cache (``ne=[n_embd_k, n_ctx]``), K and V as
  ``view -> permute(0,2,1,3)`` of it, Q un-permuted (``ne=[d, n_head, n_tokens]``),
  GQA 4 query heads over 2 KV heads, the f16 ``KQ_mask`` padded to 4 rows,
  ``kqv_out`` as ``[n_tokens, n_head*d]``;
  layer 1: f32, llama.cpp's transposed V cache (``ne=[n_kv, d, n_head_kv]``),
  Q permuted from Qcur, the softmax scale 0.3 in SOFT_MAX's ``op_params``;
  layer 2: plain torch tensors ``[b, h, s, d]`` and a FLASH_ATTN_EXT output
  ``ne=[d, n_head, n_tokens]`` with scale 0.25 and logit soft-cap 20.
  The reference outputs are computed on the original (un-permuted) tensors.
* ``mixed_kv.tdump`` -- the mixed KV cache: K as a q8_0 cold part (a view of
  the cache whose heads are half a block, ``ne=[16,2,40,1]``,
  ``nb=[34,17,34,1360]``) plus an f16 hot window, V as q4_0 + f16; layer 0
  has the parts only, layer 1 also the derived ``K-1``/``V-1``
  (``concat -> permute``). The Python ``Writer`` has no way to record raw
  blocks or derived tensors, so this file is written by the Rust example
  ``tests/examples/json_to_trace.rs`` from a JSON description made here.
* ``expected.npz`` -- expected values (bit patterns as unsigned integers for
  the dtype tensors), and ``manifest.json`` -- each tensor's dtype, shape,
  byte strides, element strides, storage offset and contiguity.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = HERE / "py"
# fixed run metadata: the files do not change when nothing else did
RUN = {"command_line": "tests/golden/gen.py", "created_unix_ns": 0, "pid": 0, "engine": "tests/golden/gen.py"}

UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def bits(t) -> np.ndarray:
    """A tensor's row-major values as unsigned integers of the element size."""
    if isinstance(t, np.ndarray):
        a = np.ascontiguousarray(t)
        return a.view(UINT[a.dtype.itemsize]).copy()
    t = t.detach().contiguous()
    size = t.element_size()
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[size]
    return t.view(as_int).numpy().view(UINT[size]).copy()


class Golden:
    """Collects expected values and layouts while a Writer records."""

    def __init__(self, file: str):
        self.file = file
        self.manifest: dict = {}
        self.arrays: dict = {}

    def expect(self, name, t, *, storage_offset: int, key: str | None = None, extra: dict | None = None):
        """Record what reading ``name`` back must give: ``t``'s values and layout."""
        if isinstance(t, np.ndarray):
            isz = t.dtype.itemsize
            shape = list(t.shape)
            byte_strides = [int(s) for s in t.strides]
            dtype = str(t.dtype)
        else:
            isz = t.element_size()
            shape = list(t.shape)
            byte_strides = [int(s) * isz for s in t.stride()]
            dtype = str(t.dtype).replace("torch.", "")
        key = key or name
        self.arrays[key] = bits(t)
        contiguous = True
        expect = isz
        for n, s in zip(reversed(shape), reversed(byte_strides)):
            if n != 1:
                contiguous &= s == expect
                expect *= n
        self.manifest[name] = {
            "file": self.file,
            "key": key,
            "source_dtype": dtype,
            "shape": shape,
            "byte_strides": byte_strides,
            "strides": [s // isz for s in byte_strides],
            "storage_offset": storage_offset,
            "is_contiguous": bool(contiguous),
            **(extra or {}),
        }


# --------------------------------------------------------------------------
# dtypes and views


def float_values(n: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, generator=gen, dtype=torch.float64) * 3
    x[:6] = torch.tensor([math.nan, math.inf, -math.inf, -0.0, 0.0, 1.0])
    return x


def write_tensors(golden: Golden) -> None:
    import tracedump

    gen = torch.Generator().manual_seed(1234)
    path = OUT / "tensors.tdump"
    with tracedump.Writer(path, **RUN) as w:
        # ---- every dtype, contiguous [3, 5]
        x = float_values(15, gen)
        cases = {
            "f32": x.to(torch.float32),
            "f16": torch.cat([x[:13], torch.tensor([65504.0, 6e-8], dtype=torch.float64)]).to(torch.float16),
            "bf16": torch.cat([x[:13], torch.tensor([3e38, 1e-40], dtype=torch.float64)]).to(torch.bfloat16),
            "f64": torch.cat([x[:13], torch.tensor([1.7e308, 5e-324], dtype=torch.float64)]),
            "f8_e4m3": torch.cat(
                [
                    x[:13].clamp(-448, 448).nan_to_num(posinf=448.0, neginf=-448.0),
                    torch.tensor([448.0, 2.0**-9], dtype=torch.float64),
                ]
            ).to(torch.float8_e4m3fn),
            "f8_e5m2": torch.cat([x[:13], torch.tensor([57344.0, 2.0**-16], dtype=torch.float64)]).to(
                torch.float8_e5m2
            ),
            "i8": torch.tensor([-128, 127, 0, -1, 1] + list(range(-50, 50, 10)), dtype=torch.int8),
            "i16": torch.tensor([-32768, 32767, 0, -1, 1] + list(range(-5000, 5000, 1000)), dtype=torch.int16),
            "i32": torch.tensor([-(2**31), 2**31 - 1, 0, -1, 1] + list(range(-5, 5)), dtype=torch.int32),
            "i64": torch.tensor([-(2**63), 2**63 - 1, 0, -1, 1] + list(range(-5, 5)), dtype=torch.int64),
            "u8": torch.tensor([0, 255, 1, 128, 127] + list(range(10, 20)), dtype=torch.uint8),
            "bool": torch.tensor([True, False, True, True, False] * 3),
        }
        # f8 NaN: e4m3fn's only NaN is 0x7F/0xFF; e5m2's are the f16 ones
        cases["f8_e4m3"].view(torch.uint8)[0] = 0x7F
        for name, t in cases.items():
            t = t.reshape(3, 5).contiguous()
            w.add(f"dtype.{name}", t, role="dtype")
            golden.expect(f"dtype.{name}", t, storage_offset=0, extra={"dtype": name})
        # numpy-only unsigned widths
        for name, npt in {"u16": np.uint16, "u32": np.uint32, "u64": np.uint64}.items():
            info = np.iinfo(npt)
            a = np.array([0, info.max, 1, info.max // 2, 7] + list(range(100, 110)), dtype=npt).reshape(3, 5)
            w.add(f"dtype.{name}", a, role="dtype")
            golden.expect(f"dtype.{name}", a, storage_offset=0, extra={"dtype": name})

        # ---- views over one recorded base: kind-1 views of its record
        base = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float32)
        w.add("view.base", base)
        golden.expect("view.base", base, storage_offset=0, extra={"dtype": "f32"})
        views = {
            "view.permuted": base.permute(0, 2, 1, 3),
            "view.transposed": base[1, 2].t(),
            "view.sliced_step": base[:, ::2, 1::2, ::3],
            "view.offset": base.flatten()[7:19],
            "view.rows": base[1, 1:3],
        }
        for name, v in views.items():
            w.add(name, v, lineage="auto")
            golden.expect(name, v, storage_offset=v.storage_offset() * 4, extra={"dtype": "f32", "parent": "view.base"})

        # ---- views whose base was not recorded: the storage once + a view
        h = torch.randn(2, 3, 4, generator=gen).to(torch.float16)
        standalone = {
            "view.f16_permuted": (h.permute(2, 0, 1), "f16", 2),
            "view.expanded": (torch.arange(4, dtype=torch.float32).reshape(4, 1).expand(4, 6), "f32", 4),
            "view.bf16_sliced": (torch.randn(6, 8, generator=gen).to(torch.bfloat16)[1:, ::2], "bf16", 2),
            "view.i16_expanded_permuted": (
                torch.arange(-6, 6, dtype=torch.int16).reshape(3, 1, 4).expand(3, 5, 4).permute(2, 1, 0),
                "i16",
                2,
            ),
            "view.f8_transposed": (
                torch.randn(4, 6, generator=gen).to(torch.float8_e4m3fn).t(),
                "f8_e4m3",
                1,
            ),
        }
        for name, (v, dt, isz) in standalone.items():
            w.add(name, v)
            golden.expect(name, v, storage_offset=v.storage_offset() * isz, extra={"dtype": dt})

        # ---- numpy: negative strides (torch has none)
        a = np.arange(24, dtype=np.float32).reshape(4, 6) * 0.5 - 3
        flipped = a[::-1, ::2]
        w.add("view.np_flipped", flipped)
        # the storage holds all of `a`; element 0 of the view is a[3, 0]
        golden.expect("view.np_flipped", flipped, storage_offset=3 * 24, extra={"dtype": "f32"})


# --------------------------------------------------------------------------
# attention, llama.cpp's layouts


def sdpa(q, k, v, mask=None, scale=None):
    """torch SDPA in float32 on [b, h, s, d] tensors, KV heads repeated for GQA."""
    g = q.shape[1] // k.shape[1]
    k = k.float().repeat_interleave(g, dim=1)
    v = v.float().repeat_interleave(g, dim=1)
    m = None if mask is None else mask.float()
    return torch.nn.functional.scaled_dot_product_attention(q.float(), k, v, attn_mask=m, scale=scale)


def naive64(q, k, v, mask, scale, softcap=None):
    g = q.shape[1] // k.shape[1]
    q, k, v = (x.double() for x in (q, k, v))
    k = k.repeat_interleave(g, dim=1)
    v = v.repeat_interleave(g, dim=1)
    s = q @ k.transpose(-1, -2) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    if mask is not None:
        s = s + mask.double()
    return torch.softmax(s, dim=-1) @ v


def causal_mask(n_tokens: int, n_kv: int, rows: int) -> torch.Tensor:
    """llama.cpp's KQ_mask: 0 / -inf, query i at position n_kv - n_tokens + i, padded rows -inf."""
    m = torch.full((rows, n_kv), -math.inf)
    for i in range(n_tokens):
        m[i, : n_kv - n_tokens + i + 1] = 0.0
    return m


def ggml_contiguous_nb(ne, isz):
    nb = [isz]
    for n in ne[:-1]:
        nb.append(nb[-1] * n)
    return nb


def permute_lineage(parent: str, view_shape, view_strides, engine_op: bool = True) -> dict:
    lin = {
        "parents": [parent],
        "ops": [
            {"op": "view", "offset": 0, "shape": list(view_shape), "byte_strides": list(view_strides)},
            {"op": "permute", "axes": [0, 2, 1, 3]},
        ],
    }
    if engine_op:
        lin["engine_op"] = {"engine": "ggml", "op": "PERMUTE", "params": struct.pack("<4i", 0, 2, 1, 3)}
    return lin


def write_attention(golden: Golden) -> None:
    import tracedump

    gen = torch.Generator().manual_seed(42)
    HQ, HKV, D, N_CTX, S, T, T_PAD = 4, 2, 16, 16, 8, 3, 4
    E = HKV * D
    path = OUT / "attention.tdump"
    mask = causal_mask(T, S, T_PAD)
    with tracedump.Writer(path, **RUN) as w:
        # the mask llama.cpp builds once per batch: f16, no layer
        mask16 = mask.to(torch.float16)
        w.add("KQ_mask", mask16, step=0, role="mask", ggml=([S, T_PAD, 1, 1], ggml_contiguous_nb([S, T_PAD, 1, 1], 2)))
        golden.expect("KQ_mask", mask16, storage_offset=0)

        # ---------------- layer 0: f16 cache, FA layout, GQA, un-permuted Q
        q = torch.randn(1, HQ, T, D, generator=gen)
        k = torch.randn(1, HKV, S, D, generator=gen).to(torch.float16)
        v = torch.randn(1, HKV, S, D, generator=gen).to(torch.float16)
        for which, orig in (("k", k), ("v", v)):
            cache = torch.randn(N_CTX, E, generator=gen).to(torch.float16)  # stale slots past n_kv
            cache[:S] = orig[0].permute(1, 0, 2).reshape(S, E)
            w.add(
                f"cache_{which}_l0",
                cache,
                layer=0,
                role=f"{which}_cache",
                ggml=([E, N_CTX, 1, 1], ggml_contiguous_nb([E, N_CTX, 1, 1], 2)),
            )
            view = cache[:S].view(1, S, HKV, D)
            perm = view.permute(0, 2, 1, 3)
            w.add(
                f"{which}-0",
                perm,
                layer=0,
                step=0,
                role=which,
                ggml=([D, S, HKV, 1], [2, 2 * E, 2 * D, 2 * E * S]),
                lineage=permute_lineage(f"cache_{which}_l0", view.shape, [s * 2 for s in view.stride()]),
            )
            golden.expect(f"{which}-0", perm, storage_offset=0)
        qcur = q.permute(0, 2, 1, 3).contiguous()  # [1, T, HQ, D]: ggml ne=[D, HQ, T, 1]
        w.add("Qcur-0", qcur, layer=0, step=0, role="q", ggml=([D, HQ, T, 1], ggml_contiguous_nb([D, HQ, T, 1], 4)))
        out = sdpa(q, k, v, mask[:T])
        kqv_out = out.permute(0, 2, 1, 3).reshape(T, HQ * D).contiguous()
        w.add(
            "kqv_out-0",
            kqv_out,
            layer=0,
            step=0,
            role="kqv_out",
            ggml=([HQ * D, T, 1, 1], ggml_contiguous_nb([HQ * D, T, 1, 1], 4)),
        )
        golden.arrays["attn.l0.q"] = q.numpy()
        golden.arrays["attn.l0.k"] = k.float().numpy()
        golden.arrays["attn.l0.v"] = v.float().numpy()
        golden.arrays["attn.l0.sdpa"] = out.numpy()
        golden.arrays["attn.l0.naive"] = naive64(q, k, v, mask[:T], 1 / math.sqrt(D)).numpy()

        # ---------------- layer 1: f32, transposed V cache, permuted Q, scale in SOFT_MAX
        scale1 = 0.3
        q = torch.randn(1, HQ, T, D, generator=gen)
        k = torch.randn(1, HKV, S, D, generator=gen)
        v = torch.randn(1, HKV, S, D, generator=gen)
        kc = torch.randn(N_CTX, E, generator=gen)
        kc[:S] = k[0].permute(1, 0, 2).reshape(S, E)
        w.add(
            "cache_k_l1", kc, layer=1, role="k_cache", ggml=([E, N_CTX, 1, 1], ggml_contiguous_nb([E, N_CTX, 1, 1], 4))
        )
        kview = kc[:S].view(1, S, HKV, D)
        w.add(
            "k-1",
            kview.permute(0, 2, 1, 3),
            layer=1,
            step=0,
            role="k",
            ggml=([D, S, HKV, 1], [4, 4 * E, 4 * D, 4 * E * S]),
            lineage=permute_lineage("cache_k_l1", kview.shape, [s * 4 for s in kview.stride()], engine_op=False),
        )
        # v_trans: the cache is [n_embd_v, n_ctx] (ggml ne=[n_ctx, n_embd_v]), one row per channel
        vc = torch.randn(E, N_CTX, generator=gen)
        vc[:, :S] = v[0].permute(0, 2, 1).reshape(E, S)
        w.add(
            "cache_v_l1", vc, layer=1, role="v_cache", ggml=([N_CTX, E, 1, 1], ggml_contiguous_nb([N_CTX, E, 1, 1], 4))
        )
        vview = vc.view(1, HKV, D, N_CTX)[..., :S]  # ggml_view_3d(v, n_kv, D, n_head_kv): ne=[S, D, HKV, 1]
        w.add(
            "v-1",
            vview,
            layer=1,
            step=0,
            role="v",
            ggml=([S, D, HKV, 1], [4, 4 * N_CTX, 4 * N_CTX * D, 4 * N_CTX * E]),
            lineage={
                "parents": ["cache_v_l1"],
                "ops": [
                    {
                        "op": "view",
                        "offset": 0,
                        "shape": list(vview.shape),
                        "byte_strides": [s * 4 for s in vview.stride()],
                    }
                ],
            },
        )
        golden.expect("v-1", vview, storage_offset=0)
        qcur = q.permute(0, 2, 1, 3).contiguous()
        w.add("Qcur-1", qcur, layer=1, step=0, role="q", ggml=([D, HQ, T, 1], ggml_contiguous_nb([D, HQ, T, 1], 4)))
        w.add(
            "q-1",
            qcur.permute(0, 2, 1, 3),
            layer=1,
            step=0,
            role="q",
            ggml=([D, T, HQ, 1], [4, 4 * D * HQ, 4 * D, 4 * D * HQ * T]),
            lineage={
                "parents": ["Qcur-1"],
                "ops": [{"op": "permute", "axes": [0, 2, 1, 3]}],
                "engine_op": {"engine": "ggml", "op": "PERMUTE", "params": struct.pack("<4i", 0, 2, 1, 3)},
            },
        )
        out = sdpa(q, k, v, mask[:T], scale=scale1)
        probs = torch.softmax((q @ k.repeat_interleave(HQ // HKV, 1).transpose(-1, -2)) * scale1 + mask[:T], -1)
        w.add(
            "kq_soft_max-1",
            probs.contiguous(),
            layer=1,
            step=0,
            role="kq",
            lineage={"engine_op": {"engine": "ggml", "op": "SOFT_MAX", "params": struct.pack("<2f", scale1, 0.0)}},
        )
        w.add(
            "kqv_out-1",
            out.permute(0, 2, 1, 3).reshape(T, HQ * D).contiguous(),
            layer=1,
            step=0,
            role="kqv_out",
            ggml=([HQ * D, T, 1, 1], ggml_contiguous_nb([HQ * D, T, 1, 1], 4)),
        )
        golden.arrays["attn.l1.sdpa"] = out.numpy()
        golden.arrays["attn.l1.naive"] = naive64(q, k, v, mask[:T], np.float32(scale1).item()).numpy()

        # ---------------- layer 2: torch tensors [b,h,s,d], FLASH_ATTN_EXT output with soft-cap
        scale2, softcap = 0.25, 20.0
        q = torch.randn(1, HKV, T, D, generator=gen) * 8
        k = torch.randn(1, HKV, S, D, generator=gen) * 8
        v = torch.randn(1, HKV, S, D, generator=gen)
        w.add("q-2", q, layer=2, step=0, role="q")
        w.add("k-2", k, layer=2, step=0, role="k")
        w.add("v-2", v, layer=2, step=0, role="v")
        out = naive64(q, k, v, mask[:T], scale2, softcap)
        fa = out.permute(0, 2, 1, 3).contiguous().float()  # [1, T, H, D]: ggml ne=[D, H, T, 1]
        w.add(
            "__fattn__-2",
            fa,
            layer=2,
            step=0,
            role="kqv_out",
            ggml=([D, HKV, T, 1], ggml_contiguous_nb([D, HKV, T, 1], 4)),
            lineage={
                "engine_op": {
                    "engine": "ggml",
                    "op": "FLASH_ATTN_EXT",
                    "params": struct.pack("<3fi", scale2, 0.0, softcap, 0),
                }
            },
        )
        golden.arrays["attn.l2.naive"] = out.numpy()
        golden.arrays["attn.l2.nocap_sdpa"] = sdpa(q, k, v, mask[:T], scale=scale2).numpy()


# --------------------------------------------------------------------------
# the mixed KV cache (q8_0 / q4_0 cold + f16 hot), written by the Rust example


def write_mixed_kv(golden: Golden, rust: bool) -> None:
    from gguf import GGMLQuantizationType, quants

    gen = torch.Generator().manual_seed(7)
    HQ, HKV, D, N_CACHE, N_COLD, N_HOT, T = 4, 2, 16, 48, 40, 8, 2
    S = N_COLD + N_HOT
    E = HKV * D
    qtypes = {"k": ("q8_0", GGMLQuantizationType.Q8_0, 32, 34), "v": ("q4_0", GGMLQuantizationType.Q4_0, 32, 18)}
    records: list = []
    logical = {}
    tmp = Path(tempfile.mkdtemp(prefix="tdump-gen-"))
    q = torch.randn(1, HQ, T, D, generator=gen)
    for layer in (0, 1):
        for which in ("k", "v"):
            qname, qt, be, bb = qtypes[which]
            cold = (torch.rand(N_CACHE, E, generator=gen) * 6 - 3).numpy().astype(np.float32)
            blocks = quants.quantize(cold, qt)  # [N_CACHE, E/32 * bb]
            hot = (torch.rand(N_HOT, E, generator=gen) * 6 - 3).to(torch.float16).numpy()
            cache_file, hot_file = f"l{layer}_{which}_cache.bin", f"l{layer}_{which}_hot.bin"
            blocks.tofile(tmp / cache_file)
            hot.astype("<f2").tofile(tmp / hot_file)
            row = E // be * bb  # bytes per position
            head = row // HKV  # half a block for head_dim 16
            ne_full, nb_full = [D, HKV, N_CACHE, 1], [bb, head, row, row * N_CACHE]
            ne, nb = [D, HKV, N_COLD, 1], [bb, head, row, row * N_COLD]
            up = which.upper()
            records += [
                {"kind": "storage", "name": f"cache_{which}_l{layer}", "file": cache_file},
                {
                    "kind": "view",
                    "name": f"cache_{which}_l{layer}",
                    "dtype": qname,
                    "storage": f"cache_{which}_l{layer}",
                    "shape": ne_full[::-1],
                    "byte_strides": nb_full[::-1],
                    "offset": 0,
                    "meta": {"layer": layer, "role": f"{which}_cache", "ggml": [ne_full, nb_full]},
                },
                {
                    "kind": "view",
                    "name": f"{up}_quant-{layer}",
                    "dtype": qname,
                    "storage": f"cache_{which}_l{layer}",
                    "shape": ne[::-1],
                    "byte_strides": nb[::-1],
                    "offset": 0,
                    "meta": {"layer": layer, "step": 0, "role": f"{which}_quant", "ggml": [ne, nb]},
                },
                {
                    "kind": "tensor",
                    "name": f"{up}_hot-{layer}",
                    "dtype": "f16",
                    "shape": [1, N_HOT, HKV, D],
                    "file": hot_file,
                    "meta": {"layer": layer, "step": 0, "role": f"{which}_hot"},
                },
            ]
            if layer == 1:
                records.append(
                    {
                        "kind": "derived",
                        "name": f"{up}-{layer}",
                        "dtype": "f32",
                        "shape": [1, HKV, S, D],
                        "meta": {
                            "layer": layer,
                            "step": 0,
                            "role": which,
                            "parents": [f"{up}_quant-{layer}", f"{up}_hot-{layer}"],
                            "ops": [{"op": "concat", "axis": 1}, {"op": "permute", "axes": [0, 2, 1, 3]}],
                        },
                    }
                )
            # the logical tensor, independently: gguf-py dequantization ++ hot, [1, HKV, S, D]
            deq = quants.dequantize(blocks[:N_COLD], qt).reshape(N_COLD, HKV, D)
            full = np.concatenate([deq, hot.astype(np.float32).reshape(N_HOT, HKV, D)], axis=0)
            logical[(layer, which)] = torch.from_numpy(np.ascontiguousarray(full.transpose(1, 0, 2)[None]))
            golden.arrays[f"mixed.l{layer}.{which}"] = logical[(layer, which)].numpy()
        # Q (un-permuted, ggml) and the engine output
        qcur = q.permute(0, 2, 1, 3).contiguous()
        qcur.numpy().astype("<f4").tofile(tmp / f"l{layer}_q.bin")
        cm = causal_mask(T, S, T)
        out = sdpa(q, logical[(layer, "k")], logical[(layer, "v")], cm)
        out.permute(0, 2, 1, 3).reshape(T, HQ * D).contiguous().numpy().astype("<f4").tofile(tmp / f"l{layer}_out.bin")
        records += [
            {
                "kind": "tensor",
                "name": f"Qcur-{layer}",
                "dtype": "f32",
                "shape": [1, T, HQ, D],
                "file": f"l{layer}_q.bin",
                "meta": {
                    "layer": layer,
                    "step": 0,
                    "role": "q",
                    "ggml": [[D, HQ, T, 1], ggml_contiguous_nb([D, HQ, T, 1], 4)],
                },
            },
            {
                "kind": "tensor",
                "name": f"kqv_out-{layer}",
                "dtype": "f32",
                "shape": [T, HQ * D],
                "file": f"l{layer}_out.bin",
                "meta": {
                    "layer": layer,
                    "step": 0,
                    "role": "kqv_out",
                    "ggml": [[HQ * D, T, 1, 1], ggml_contiguous_nb([HQ * D, T, 1, 1], 4)],
                },
            },
        ]
        golden.arrays[f"mixed.l{layer}.sdpa"] = out.numpy()
        golden.arrays[f"mixed.l{layer}.naive"] = naive64(
            q, logical[(layer, "k")], logical[(layer, "v")], cm, 1 / math.sqrt(D)
        ).numpy()
    golden.arrays["mixed.q"] = q.numpy()
    spec = {"run_metadata": {k: str(v) for k, v in RUN.items()}, "records": records}
    (tmp / "spec.json").write_text(json.dumps(spec, indent=1))
    if not rust:
        print("--no-rust: keeping", OUT / "mixed_kv.tdump")
        return
    cmd = [
        "cargo",
        "run",
        "-q",
        "-p",
        "tracedump-tests",
        "--example",
        "json_to_trace",
        "--",
        str(tmp / "spec.json"),
        str(OUT / "mixed_kv.tdump"),
    ]
    subprocess.run(cmd, cwd=ROOT, check=True)


def main() -> None:
    rust = "--no-rust" not in sys.argv[1:]
    OUT.mkdir(parents=True, exist_ok=True)
    golden = Golden("tensors.tdump")
    write_tensors(golden)
    golden.file = "attention.tdump"
    write_attention(golden)
    golden.file = "mixed_kv.tdump"
    write_mixed_kv(golden, rust)
    np.savez_compressed(OUT / "expected.npz", **golden.arrays)
    (OUT / "manifest.json").write_text(json.dumps(golden.manifest, indent=1, sort_keys=True) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir() if p.is_file())
    print(
        f"wrote {OUT.relative_to(ROOT)}: {len(golden.manifest)} tensors with expected layouts, "
        f"{len(golden.arrays)} arrays, {total} bytes"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
