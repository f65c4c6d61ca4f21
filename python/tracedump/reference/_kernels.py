"""Part of :mod:`tracedump.reference` (see its documentation)."""

from __future__ import annotations

import math
from typing import List, Optional

from ._lineage import _engine_op
from ._solve import _GGML_VEC_DOT, _round_to


# --------------------------------------------------------------------------
# ggml's CPU attention kernels, emulated (the x86-64 build of the pinned
# llama.cpp, ggml/src/ggml-cpu/ops.cpp)


def _ggml_kernel_name(graph_op, out_tensor, tensors) -> Optional[str]:
    """``'FLASH_ATTN_EXT'`` or ``'SOFT_MAX'`` (mul_mat, soft_max, mul_mat): the recorded attention op."""
    for t in ([graph_op] if graph_op is not None else []) + ([out_tensor] if out_tensor is not None else []):
        engine, op, _ = _engine_op(t)
        if engine == "ggml" and op == "FLASH_ATTN_EXT":
            return "FLASH_ATTN_EXT"
        if engine == "ggml" and op in ("SOFT_MAX", "SOFT_MAX_EXT"):
            return "SOFT_MAX"
    for t in tensors:
        engine, op, _ = _engine_op(t)
        if engine == "ggml" and op == "FLASH_ATTN_EXT":
            return "FLASH_ATTN_EXT"
    for t in tensors:
        engine, op, _ = _engine_op(t)
        if engine == "ggml" and op in ("SOFT_MAX", "SOFT_MAX_EXT"):
            return "SOFT_MAX"
    return None


def _ggml_fa_path(n_tok: int, batch: int, n_kv: int, qd: str, kd: str, vd: str) -> str:
    """Which CPU FLASH_ATTN_EXT kernel ggml runs (ggml_compute_forward_flash_attn_ext_f16)."""
    f32_f16 = kd == vd and kd in ("f16", "f32") and qd == "f32"
    if f32_f16 and n_tok == 1 and batch == 1 and n_kv >= 512:
        return "fa_split"  # one_chunk per thread's share of the keys, then reduced in f32
    if f32_f16 and n_tok >= 64:  # GGML_FA_TILE_Q
        return "fa_tiled"  # f32 GEMMs, Q not converted
    return "fa_one_chunk"


def _ggml_simd(system_info: Optional[str]):
    """How the recorded build's ggml_vec_dot_f16 sums (ggml-cpu/vec.cpp,
    simd-mappings.h), from its ``llama_print_system_info()``: ``("avx512",
    16)`` (__AVX512F__: 16-lane f32 vectors), ``("avx", 8)`` (__AVX__ or
    __AVX2__: 8 lanes), both with 4 accumulators over steps of 4 vectors;
    ``("scalar", 0)`` for a build without SIMD flags; None when unknown (no
    system info, or a SIMD not modelled: SSE3 alone, NEON, SVE, RISC-V V...)."""
    if not system_info:
        return None
    flags = {}
    for part in system_info.replace("\n", "|").split("|"):
        if "=" in part:
            k, _, v = part.partition("=")
            flags[k.strip().rsplit(" ", 1)[-1].upper()] = v.strip()
    on = {k for k, v in flags.items() if v == "1"}
    if "AVX512" in on:
        return ("avx512", 16)
    if "AVX" in on or "AVX2" in on:
        return ("avx", 8)
    if not on & {"NEON", "ARM_FMA", "SVE", "RISCV_V", "VSX", "WASM_SIMD", "LASX", "LSX", "VXE", "SSE3"}:
        return ("scalar", 0)
    return None


def _ggml_dot_f16(q, k, simd):
    """q·k as ggml_vec_dot_f16 sums it, float64 tensors holding the f16
    values of q ``[.., t, d]`` and k ``[.., s, d]``: ``[.., t, s]`` holding
    f32 values. Products of two f16 values are exact in f32, so only the
    order of the sums matters: per 4·lanes values, lane j of accumulator a
    adds q[i+a·lanes+j]·k[..] (f32); the accumulators are added (0+2, 1+3,
    then 0+1), then the lanes (AVX: j+4, then adjacent pairs twice;
    AVX-512's _mm512_reduce_add_ps: j+8, j+4, j+2, j+1), all in f32; the
    values past the last whole step are added one by one in double, and the
    sum is rounded to f32. ``simd`` scalar: every value one by one in double;
    None (unknown): the exact sum, rounded."""
    import torch

    if simd is None:
        return _f32(torch.matmul(q, k.transpose(-1, -2)))
    d = q.shape[-1]
    lanes = simd[1]
    step = 4 * lanes
    whole = d - d % step if step else 0
    kt = k.transpose(-1, -2)

    def product(c):
        return q[..., c : c + 1] * kt[..., c : c + 1, :]

    if not whole:
        total = torch.zeros(q.shape[:-1] + kt.shape[-1:], dtype=torch.float64)
        for c in range(d):
            total = total + product(c)  # double, one by one
        return _f32(total)

    lane_sums = []
    for j in range(lanes):
        acc = []
        for a in range(4):
            x = None
            for i in range(0, whole, step):
                p = product(i + a * lanes + j)
                x = p if x is None else _f32(x + p)
            acc.append(x)
        lane_sums.append(_f32(_f32(acc[0] + acc[2]) + _f32(acc[1] + acc[3])))
    while len(lane_sums) > 1:
        half = len(lane_sums) // 2
        lane_sums = [_f32(lane_sums[j] + lane_sums[j + half]) for j in range(half)]
        if simd[0] == "avx" and half == 4:
            # _mm_hadd_ps twice: adjacent pairs, then the two pair sums
            t = lane_sums
            lane_sums = [_f32(_f32(t[0] + t[1]) + _f32(t[2] + t[3]))]
    total = lane_sums[0]
    for c in range(whole, d):
        total = total + product(c)  # double, one by one
    return _f32(total)


def _f32(x):
    import torch

    return x.to(torch.float32).to(torch.float64)


def _f16(x):
    import torch

    return x.to(torch.float32).to(torch.float16).to(torch.float64)


def _ggml_fa_f16(q, k, v, mask, scale: float, softcap: Optional[float], n_chunks: int, simd=None):
    """ggml_compute_forward_flash_attn_ext_f16_one_chunk with an f16 V, float64
    tensors holding the f32/f16 values ggml holds. q ``[b, h, t, d]`` (already
    converted to K's vec_dot type), k/v ``[b, h, s, d]`` (GQA repeated), mask
    additive ``[.., t, s]`` or None. Per query row: s = q.k in f32, scaled (and
    soft-capped), plus the mask (keys masked -inf skipped); the online softmax's
    max M and sum S in f32; the V accumulator VKQ in f16, in key order:
    on a new max VKQ = f16(VKQ*expf(Mold-M)), then VKQ = f16(VKQ + v*expf(s-M))
    (ggml_vec_scale_f16 / ggml_vec_mad_f16: f32 arithmetic, each element rounded
    to f16 per step); out = f32(VKQ) * (1/S). With ``n_chunks`` > 1 (the split-KV
    path, one chunk of ceil(s/n_chunks) keys per thread) each chunk does that
    from scratch and the chunks are merged in f32 (ggml_flash_attn_ext_reduce_partials).
    ``simd`` (:func:`_ggml_simd`): the order of q·k's sums.
    """
    import torch

    f64 = torch.float64

    def expf(x):
        return _f32(torch.exp(x))

    q, k, v = (x.to(f64) for x in (q, k, v))
    b, h, t, _ = q.shape
    n_kv, dv = k.shape[2], v.shape[-1]
    s = _ggml_dot_f16(q, k, simd)  # ggml_vec_dot_f16, in the build's order
    if softcap:
        sc = float(torch.tensor(scale, dtype=torch.float32) / torch.tensor(softcap, dtype=torch.float32))
        s = _f32(softcap * torch.tanh(_f32(s * sc)))
    else:
        s = _f32(s * float(torch.tensor(scale, dtype=torch.float32)))
    if mask is not None:
        m = _f32(mask.to(f64)).expand(b, h, t, n_kv)
        valid = m != -math.inf
        s = _f32(s + m)
    else:
        valid = torch.ones((b, h, t, n_kv), dtype=torch.bool)
    size = -(-n_kv // n_chunks)
    pad = size * n_chunks - n_kv
    if pad:
        s = torch.nn.functional.pad(s, (0, pad))
        valid = torch.nn.functional.pad(valid, (0, pad), value=False)
        v = torch.nn.functional.pad(v, (0, 0, 0, pad))
    # chunks first: [c, b, h, t, size] and V [c, b, h, 1, size, dv]
    s = s.reshape(b, h, t, n_chunks, size).permute(3, 0, 1, 2, 4)
    valid = valid.reshape(b, h, t, n_chunks, size).permute(3, 0, 1, 2, 4)
    vv = v.reshape(b, h, n_chunks, size, dv).permute(2, 0, 1, 3, 4).unsqueeze(3)
    M = torch.full((n_chunks, b, h, t), -math.inf, dtype=f64)
    S = torch.zeros((n_chunks, b, h, t), dtype=f64)
    acc = torch.zeros((n_chunks, b, h, t, dv), dtype=f64)
    live = valid.reshape(-1, size).any(dim=0)
    for i in torch.nonzero(live).flatten().tolist():
        si, ok = s[..., i], valid[..., i]
        new = ok & (si > M)
        ms = torch.where(new, expf(torch.where(new, _f32(M - si), 0.0)), 1.0)
        vs = torch.where(new, 1.0, torch.where(ok & ~new, expf(torch.where(ok & ~new, _f32(si - M), 0.0)), 0.0))
        acc = torch.where(new.unsqueeze(-1), _f16(acc * ms.unsqueeze(-1)), acc)
        acc = torch.where(ok.unsqueeze(-1), _f16(acc + vv[..., i, :] * vs.unsqueeze(-1)), acc)
        M = torch.where(new, si, M)
        S = torch.where(ok, _f32(S * ms + vs), S)
    if n_chunks == 1:
        inv = torch.where(S[0] == 0, 0.0, _f32(1 / S[0]))
        return _f32(acc[0] * inv.unsqueeze(-1)).to(torch.float32)
    Mf = torch.full((b, h, t), -math.inf, dtype=f64)
    Sf = torch.zeros((b, h, t), dtype=f64)
    Vf = torch.zeros((b, h, t, dv), dtype=f64)
    for c in range(n_chunks):
        use = S[c] != 0
        Mn = torch.maximum(Mf, M[c])
        so = expf(torch.where(use, _f32(Mf - Mn), 0.0))
        sn = expf(torch.where(use, _f32(M[c] - Mn), 0.0))
        Vf = torch.where(use.unsqueeze(-1), _f32(Vf * so.unsqueeze(-1) + acc[c] * sn.unsqueeze(-1)), Vf)
        Sf = torch.where(use, _f32(Sf * so + S[c] * sn), Sf)
        Mf = torch.where(use, Mn, Mf)
    inv = torch.where(Sf == 0, 1.0, _f32(1 / Sf))
    return _f32(Vf * inv.unsqueeze(-1)).to(torch.float32)


def _ggml_attention(path, q, k, v, mask, scale, softcap, vd: str, threads, naive, notes: List[str], system_info=None):
    """The output of ggml's CPU kernel for ``path`` (see :func:`attention`), float32, or None."""
    import torch

    if path is None:
        notes.append(
            "round_q='ggml': no recorded ggml attention op (FLASH_ATTN_EXT, or SOFT_MAX and its MUL_MATs); "
            "no kernel emulated (r.ggml is None)"
        )
        return None
    if path == "soft_max":
        to = _GGML_VEC_DOT.get(vd, "?")
        if to == "?":
            notes.append(f"ggml: no rule for V of type {vd}; kq·V emulated without rounding the softmax")
            to = None
        if to is None:
            return naive.to(torch.float32)
        if to == "q8_0" and k.shape[2] % 32:
            notes.append("ggml: the softmax cannot be q8_0 blocks (n_kv not a multiple of 32); not rounded")
            return naive.to(torch.float32)
        s = torch.matmul(q.to(torch.float64), k.to(torch.float64).transpose(-1, -2)) * scale
        if softcap:
            s = softcap * torch.tanh(s / softcap)
        if mask is not None:
            s = s + mask
        p = _round_to(torch.softmax(s, dim=-1).to(torch.float32), to, "the softmax").to(torch.float64)
        notes.append(f"ggml: SOFT_MAX then MUL_MAT with V ({vd}): the softmax rounded to {to}, as ggml's mul_mat does")
        return torch.matmul(p, v.to(torch.float64)).to(torch.float32)
    if path == "fa_tiled":
        notes.append("ggml: FLASH_ATTN_EXT's tiled kernel (64+ query tokens): f32 Q, K, V and accumulators")
        return naive.to(torch.float32)
    if vd != "f16":
        notes.append(f"ggml: FLASH_ATTN_EXT with V of type {vd}: V converted to f32, f32 accumulation")
        return naive.to(torch.float32)
    if path == "fa_split":
        if not threads:
            notes.append(
                "ggml: FLASH_ATTN_EXT's split-KV kernel (one query token, n_kv >= 512) accumulates V in f16 over "
                "each thread's share of the keys: pass ggml_threads= (llama.cpp's n_threads) to emulate it; "
                "r.ggml is the f32 attention"
            )
            return naive.to(torch.float32)
        notes.append(
            f"ggml: FLASH_ATTN_EXT's split-KV kernel on {threads} threads: f16 V accumulation per chunk of "
            f"{-(-k.shape[2] // threads)} keys, chunks merged in f32"
        )
        return _ggml_fa_f16(q, k, v, mask, scale, softcap, int(threads), _dot_order(system_info, notes))
    notes.append("ggml: FLASH_ATTN_EXT with an f16 V: V·softmax accumulated in f16, key by key")
    return _ggml_fa_f16(q, k, v, mask, scale, softcap, 1, _dot_order(system_info, notes))


def _dot_order(system_info: Optional[str], notes: List[str]):
    """The build's SIMD for FLASH_ATTN_EXT's q·k (:func:`_ggml_simd`), with a note."""
    simd = _ggml_simd(system_info)
    if simd is None:
        why = "the trace does not say" if not system_info else "a SIMD not modelled: SSE3-only, NEON, SVE..."
        notes.append(
            f"ggml: K·Q summed exactly, then rounded to f32: the order of ggml's SIMD sums is unknown ({why}; "
            "tracedump.ggml.capture records ggml.system_info)"
        )
    elif simd[0] == "scalar":
        notes.append("ggml: K·Q summed one by one in double (a build without SIMD), rounded to f32")
    else:
        notes.append(
            f"ggml: K·Q summed as {simd[0].upper()} ggml_vec_dot_f16 does: {simd[1]} f32 lanes x 4 accumulators, "
            "the rest in double (ggml.system_info)"
        )
    return simd


def _arrange_mask(m, n_tokens: int, n_kv: int):
    """A mask -> 4-d ``[b|1, h|1, n_tokens, n_kv]``, padded rows cut."""
    while m.dim() < 4:
        m = m.unsqueeze(0)
    if m.shape[-2] > n_tokens:
        m = m[..., :n_tokens, :]
    return m
