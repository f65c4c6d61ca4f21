"""Recompute a layer's attention from the tensors an engine recorded.

    import tracedump, tracedump.reference as ref

    trace = tracedump.open("run.tdump")
    r = ref.attention(trace, layer=3)
    r.metrics["sdpa"]        # {'max_abs': ..., 'max_rel': ..., 'cosine': ..., ...}
    r                        # a table in a notebook (_repr_html_)

``attention`` finds the layer's Q, K, V, mask and the engine's attention
output by **role** (``q``, ``k``, ``v``, ``mask``, ``kqv_out`` or else
``attn_out``; K and V may instead be recorded as parts, ``k_quant`` (cold)
and ``k_hot``, joined cold-then-hot along the sequence axis), brings each to
torch's ``[batch, heads, seq, head_dim]``, and computes

* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` in float32;
* ``naive``: ``softmax(Q K^T * scale [soft-capped] + mask) V`` in float64;
* ``ggml`` (with ``round_q="ggml"`` on a ggml trace): ggml's CPU attention
  kernel emulated, its f16 rounding included (see :func:`attention`);

and, when the engine's output is there, max abs / max rel / cosine of each
against it.

Layout rules
------------

A recorded tensor is read in its canonical shape (outermost first; for a
ggml tensor ``reverse(ne)``). Letters name the axes: ``b`` batch, ``h``
heads, ``s`` sequence (query tokens for Q and the output, cache positions for
K/V), ``d`` head_dim, ``(hd)`` heads and head_dim merged (``h`` outer).

* An explicit layout wins: the ``layouts={'q': 'bshd'}`` argument, else a
  ``layout`` metadata key on the tensor. Nothing else is considered.
* Tensors without ggml layout (torch, numpy): 4 dims are ``bhsd`` (torch's
  SDPA convention), 3 dims ``hsd`` or ``bs(hd)``, 2 dims ``s(hd)``.
* ggml tensors (``.ggml`` present) are 4-dimensional canonically (a
  shorter recorded shape gets leading 1s); ``ne[0]`` is head_dim (``n_kv``
  for the transposed V cache).

  - lineage shows llama.cpp's ``permute(0, 2, 1, 3)`` (a ``Permute`` step
    with axes ``[0, 2, 1, 3]``, or an engine op ``PERMUTE`` with those
    parameters; followed through ``Cont``/``Convert``/``Dequantize``
    copies to the parent) -> ``bhsd`` (``ne = [head_dim, tokens, heads, batch]``);
  - the output of ``FLASH_ATTN_EXT`` -> ``bshd`` (``ne = [head_dim, heads, tokens, batch]``);
  - otherwise any of ``bhsd`` (permuted), ``bshd`` (un-permuted, ``ne =
    [head_dim, heads, tokens]``), for V also ``bhds`` (llama.cpp's transposed
    V cache, ``ne = [n_kv, head_dim, heads]``), and, when the leading
    extents are 1, ``s(hd)`` / ``bs(hd)`` (``ne = [heads*head_dim, tokens]``).
* K/V parts: the parts must agree on every axis but one, the sequence axis,
  which they are joined along (cold first). With equal lengths, every
  candidate layout joins along its own ``s``.

The candidates of Q, K, V and the output are then checked together: the
same batch, Q and the output the same heads and tokens, K and V the same
heads and positions, Q and K the same head_dim, V and the output the same,
query heads a multiple of KV heads (GQA), the ``n_heads`` / ``n_kv_heads`` /
``head_dim`` arguments, and a mask shaped ``[.., .., >= tokens, positions]``.
When no combination fits, or several fit and they read the data differently,
or one might fit but needs the head count to split a merged ``(hd)`` axis,
``LayoutError`` says so and names the candidates; pass ``n_heads=`` or
``layouts=`` to decide.

Several tensors with one role (llama.cpp's ``k-3`` view and its f16 copy):
the one derived (by lineage) from the others is taken; when none is, a
``LookupError`` names them and asks for the name (``k='k-3'``).

Masks: boolean means ``True`` = attend (torch's convention); otherwise
additive (llama.cpp's ``-inf``). A mask with more rows than query tokens
(llama.cpp pads ``KQ_mask``) is cut to the first rows. ``causal=None``
means causal exactly when no mask was found; the causal mask is aligned to
the end (query ``i`` sits at position ``n_kv - n_tokens + i``), as with a KV
cache. Scale: the argument, else ``FLASH_ATTN_EXT``'s or ``SOFT_MAX``'s
recorded ``op_params`` (with the soft-cap), else ``1/sqrt(head_dim)``.
Soft-capping is ``softcap * tanh(scale * QK^T / softcap)`` before the mask
(ggml's flash attention, HF Gemma 2); torch's SDPA has no soft-cap, so with
one only the naive output is computed.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ._lineage import _ID_CACHE, _engine_op, _values
from ._operands import _Operand, _layer_tensors, _operand, _parts_operand, _pick, _scale_from_ops
from ._solve import _resolve, _round_q
from ._kernels import _arrange_mask, _ggml_attention, _ggml_fa_path, _ggml_kernel_name
from ._layout import LayoutError, parse_layout

__all__ = ["AttentionResult", "LayoutError", "attention", "compare_tensors", "parse_layout"]


# --------------------------------------------------------------------------
# metrics and the result


def compare_tensors(a: Any, b: Any) -> Dict[str, float]:
    """max abs, max rel (to b's largest magnitude), mean abs and cosine of a vs b, in float64."""
    import torch

    a = a.detach().to(torch.float64).flatten()
    b = b.detach().to(torch.float64).flatten()
    both = torch.isfinite(a) & torch.isfinite(b)
    nonfinite_mismatch = int((torch.isfinite(a) != torch.isfinite(b)).sum())
    nan_mismatch = int((torch.isnan(a) != torch.isnan(b)).sum())
    a_f, b_f = a[both], b[both]
    if a_f.numel() == 0:
        return {
            "max_abs": math.nan,
            "max_rel": math.nan,
            "mean_abs": math.nan,
            "cosine": math.nan,
            "nonfinite_mismatch": nonfinite_mismatch,
            "nan_mismatch": nan_mismatch,
            "n": 0,
        }
    diff = (a_f - b_f).abs()
    max_abs = float(diff.max())
    ref = float(b_f.abs().max())
    max_rel = max_abs / ref if ref > 0 else (0.0 if max_abs == 0 else math.inf)
    na, nb = float(a_f.norm()), float(b_f.norm())
    cosine = float((a_f @ b_f) / (na * nb)) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
    return {
        "max_abs": max_abs,
        "max_rel": max_rel,
        "mean_abs": float(diff.mean()),
        "cosine": cosine,
        "nonfinite_mismatch": nonfinite_mismatch,
        "nan_mismatch": nan_mismatch,
        "n": int(a_f.numel()),
    }


@dataclass
class AttentionResult:
    """What :func:`attention` computed. Also readable as a dict (``r['sdpa']``).

    Tensors are ``[batch, n_heads, n_tokens, head_dim_v]``: ``sdpa`` (float32,
    None with a soft-cap), ``naive`` (float64), ``engine`` (the recorded
    output, float64, or None), ``ggml`` (float32: ggml's CPU kernel emulated,
    with ``round_q="ggml"`` when the trace records the ggml attention op;
    else None). ``q``, ``k``, ``v`` (K/V with the KV heads before the GQA
    repeat) and ``mask`` (additive, float64, or None) are the inputs as used.
    ``sources`` says which tensor and layout each came from; ``metrics`` has
    ``sdpa``/``naive``/``ggml`` vs the engine and ``sdpa_vs_naive``.
    """

    layer: Any
    step: Any
    sdpa: Any
    naive: Any
    engine: Any
    q: Any
    k: Any
    v: Any
    mask: Any
    scale: float
    softcap: Optional[float]
    causal: bool
    dims: Dict[str, int]
    sources: Dict[str, Dict[str, Any]]
    metrics: Dict[str, Dict[str, float]]
    notes: List[str] = field(default_factory=list)
    ggml: Any = None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def keys(self) -> List[str]:
        return [f for f in self.__dataclass_fields__]

    def __contains__(self, key) -> bool:
        return key in self.__dataclass_fields__

    def __repr__(self) -> str:
        lines = [
            f"attention layer {self.layer} step {self.step}: "
            + ", ".join(f"{k}={v}" for k, v in self.dims.items())
            + f", scale={self.scale:.6g}"
            + (f", softcap={self.softcap:g}" if self.softcap else "")
            + (", causal" if self.causal else "")
        ]
        for role, src in self.sources.items():
            lines.append(
                f"  {role:5} {src['name']}  {src['dtype']} {src['shape']}  layout {src['layout']} ({src['rule']})"
            )
        for key, m in self.metrics.items():
            lines.append(f"  {key:14} max_abs {m['max_abs']:.3e}  max_rel {m['max_rel']:.3e}  cosine {m['cosine']:.7f}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        e = html.escape
        head = e(self.__repr__().splitlines()[0])
        rows = "".join(
            f"<tr><td>{e(role)}</td><td><code>{e(str(src['name']))}</code></td><td>{e(str(src['dtype']))}</td>"
            f"<td>{e(str(src['shape']))}</td><td>{e(src['layout'])}</td><td>{e(src['rule'])}</td></tr>"
            for role, src in self.sources.items()
        )
        mrows = "".join(
            f"<tr><td>{e(k)}</td><td>{m['max_abs']:.3e}</td><td>{m['max_rel']:.3e}</td>"
            f"<td>{m['mean_abs']:.3e}</td><td>{m['cosine']:.7f}</td><td>{m['nonfinite_mismatch']}</td></tr>"
            for k, m in self.metrics.items()
        )
        notes = "".join(f"<li>{e(n)}</li>" for n in self.notes)
        return (
            f"<div><b>{head}</b>"
            "<table><tr><th>input</th><th>tensor</th><th>dtype</th><th>shape</th><th>layout</th><th>rule</th></tr>"
            f"{rows}</table>"
            + (
                "<table><tr><th>compare</th><th>max abs</th><th>max rel</th><th>mean abs</th><th>cosine</th>"
                f"<th>non-finite mismatches</th></tr>{mrows}</table>"
                if mrows
                else "<p>no engine output recorded (role kqv_out / attn_out)</p>"
            )
            + (f"<ul>{notes}</ul>" if notes else "")
            + "</div>"
        )


# --------------------------------------------------------------------------
# the entry point


def attention(
    trace: Any,
    layer: int,
    step: Optional[int] = None,
    *,
    q: Any = None,
    k: Any = None,
    v: Any = None,
    mask: Any = None,
    out: Any = None,
    scale: Optional[float] = None,
    causal: Optional[bool] = None,
    softcap: Optional[float] = None,
    n_kv_heads: Optional[int] = None,
    n_heads: Optional[int] = None,
    head_dim: Optional[int] = None,
    layouts: Optional[Dict[str, str]] = None,
    round_q: Optional[str] = None,
    ggml_threads: Optional[int] = None,
) -> AttentionResult:
    """Recompute layer ``layer``'s attention (at ``step``) from a trace.

    q, k, v, mask, out: a tensor name (``'k-3'``, ``'k-3#2'``), a trace
        Tensor or a torch/numpy array, instead of the tensor found by role.
        ``mask=False`` uses no mask even when one is recorded.
    scale: the softmax scale (default: the recorded op's, else 1/sqrt(head_dim)).
    causal: add a causal mask (aligned to the end); default: when there is no mask.
    softcap: logit soft-capping (``softcap * tanh(x / softcap)``); default: the
        recorded FLASH_ATTN_EXT's, else none.
    n_heads, n_kv_heads, head_dim: decide layouts the shapes cannot.
    layouts: ``{'q'|'k'|'v'|'out': code}``, e.g. ``{'q': 'bshd'}``; see the module doc.
    round_q: round Q first as the engine does before its dot products with K:
        ``"f16"``, ``"bf16"``, ``"q8_0"`` (ggml's x86-64 quantizer, 32-blocks
        along head_dim), or ``"ggml"``: what ggml's CPU kernels convert Q to
        for K's type (f16 -> f16, bf16 -> bf16, q4_0/q4_1/q5_0/q5_1/q8_0/iq4_nl
        -> q8_0; f32 -> no rounding; none in FLASH_ATTN_EXT's tiled kernel,
        which runs with 64 or more query tokens and an f16 or f32 K and V of
        one type). Default None: exact math. With a quantized KV cache
        llama.cpp's flash attention quantizes Q to q8_0, a difference of a few
        percent that is the engine's, not a bug. ``sdpa`` and ``naive`` are
        exact math on the rounded Q. ``"ggml"`` also emulates the rest of
        ggml's CPU kernel (its x86-64 build) when the trace records the
        attention op, as ``r.ggml`` and ``r.metrics["ggml"]``: FLASH_ATTN_EXT
        with an f16 V accumulates V·softmax in f16 (the online softmax's max
        and sum in f32, the V accumulator rounded to f16 after every key, in
        key order), about 1e-3 relative that ``sdpa``/``naive`` do not have;
        without flash attention (SOFT_MAX and MUL_MATs) the softmax is rounded
        to V's vec_dot type (f16 for an f16 V) before its product with V;
        otherwise (f32 or dequantized V, the tiled kernel) ``ggml`` is the
        exact result in f32. FLASH_ATTN_EXT's K·Q dot products are summed in
        the order of the build's ggml_vec_dot_f16 (AVX/AVX2: 8 f32 lanes x 4
        accumulators; AVX-512: 16 x 4; the values past the last whole step in
        double), read from the trace's ``ggml.system_info`` run metadata
        (``tracedump.ggml.capture`` records it); without it, or for another
        SIMD (NEON...), they are exact sums rounded to f32. The notes say
        which kernel and which order were emulated.
    ggml_threads: the ggml thread count of the recorded step (llama.cpp's
        ``n_threads`` for a one-token batch). Only FLASH_ATTN_EXT's split-KV
        kernel (one query token, batch 1, n_kv >= 512, f16 K and V) depends
        on it: each thread accumulates its share of the keys in f16. Without
        it that kernel's ``ggml`` is the exact result in f32 (a note says so).
    """
    import torch

    _ID_CACHE.clear()
    layouts = dict(layouts or {})
    if "kqv_out" in layouts and "out" not in layouts:
        layouts["out"] = layouts.pop("kqv_out")
    tensors, step = _layer_tensors(trace, layer, step)
    notes: List[str] = []

    graph_op = None
    if q is None and k is None and v is None and not any(t.role == "q" for t in tensors):
        # no roles: a ggml trace names its attention inputs through the graph
        from .. import ggml as _ggml

        found = _ggml.attention_inputs(trace, layer, step)
        if found is not None:
            q, k, v = found["q"], found["k"], found["v"]
            if mask is None and found["mask"] is not None:
                mask = found["mask"]
            elif mask is None and found.get("mask_name"):
                # comparing without the mask the engine used reports a
                # divergence that is not there
                raise LookupError(
                    f"layer {layer}: {found['op'].name} ({_engine_op(found['op'])[1]}) used the mask "
                    f"`{found['mask_name']}`, which this trace does not hold (a capture filter left it "
                    "out?): record it, pass mask='NAME', or mask=False to compare without it"
                )
            if out is None:
                out = found["out"]
            graph_op = found["op"]
            step = graph_op.step if step is None else step
            notes.append(f"inputs from the ggml graph of {graph_op.name} ({_engine_op(graph_op)[1]})")

    operands: Dict[str, _Operand] = {}
    for role, spec in (("q", q), ("k", k), ("v", v)):
        if spec is not None:
            operands[role] = _operand(role, spec, trace, layouts)
            continue
        t = _pick(trace, tensors, role, layer, step)
        if t is not None:
            operands[role] = _operand(role, t, trace, layouts)
            continue
        if role in ("k", "v"):
            cold = _pick(trace, tensors, f"{role}_quant", layer, step)
            hot = _pick(trace, tensors, f"{role}_hot", layer, step)
            if cold is not None and hot is not None:
                operands[role] = _parts_operand(role, cold, hot, trace, layouts)
                continue
            if cold is not None or hot is not None:
                only = cold if cold is not None else hot
                notes.append(f"{role}: only one part ({only.name}) is recorded; using it alone")
                operands[role] = _operand(role, only, trace, layouts)
                continue
        raise LookupError(
            f"layer {layer} step {step}: no tensor with role {role!r}"
            + (f" (or {role}_quant + {role}_hot)" if role != "q" else "")
            + f"; pass {role}='NAME'"
        )

    out_tensor = None
    if out is not None:
        operands["out"] = _operand("out", out, trace, layouts)
        out_tensor = operands["out"].tensors[0] if operands["out"].tensors else None
    else:
        for role in ("kqv_out", "attn_out"):
            out_tensor = _pick(trace, tensors, role, layer, step)
            if out_tensor is not None:
                operands["out"] = _operand("out", out_tensor, trace, layouts)
                break

    mask_op = None
    if mask is False:
        mask_vals = None
    elif mask is not None:
        mask_op = _operand_mask(mask, trace)
        mask_vals = mask_op[1]
    else:
        mt = _pick(trace, tensors, "mask", layer, step)
        if mt is None:  # llama.cpp's mask has no layer: one for all layers
            cands = [
                t
                for t in (trace.filter(role="mask", step=step) if step is not None else trace.filter(role="mask"))
                if getattr(t, "layer", None) is None
            ]
            mt = _pick(trace, cands, "mask", None, step) if cands else None
        mask_op = (mt.name, _values(mt), str(mt.dtype)) if mt is not None else None
        mask_vals = mask_op[1] if mask_op else None

    known = {k_: v_ for k_, v_ in (("n_heads", n_heads), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim)) if v_}
    try:
        arranged, env, chosen = _resolve(operands, None if mask_vals is None else tuple(mask_vals.shape), known)
    except LayoutError:
        if "out" not in operands or out is not None:
            raise
        # the engine output alone may be what does not fit (e.g. attn_out after o_proj)
        dropped = operands.pop("out")
        arranged, env, chosen = _resolve(operands, None if mask_vals is None else tuple(mask_vals.shape), known)
        notes.append(f"{dropped.label} {list(dropped.shape)} does not fit the attention output; not compared")
        out_tensor = None

    qa, ka, va = arranged["q"], arranged["k"], arranged["v"]
    n_tok, n_kv = qa.shape[2], ka.shape[2]
    hq, hkv = qa.shape[1], ka.shape[1]
    if va.shape[1] != hkv:
        raise LayoutError(f"K has {hkv} heads and V {va.shape[1]}")

    # scale / softcap from the recorded ops
    op_scale, op_softcap, max_bias, src = _scale_from_ops(
        ([graph_op] if graph_op is not None else [])
        + ([out_tensor] if out_tensor is not None else [])
        + [t for t in tensors if t.role in ("kq", "kqv_out", "attn_out")]
    )
    if max_bias:
        notes.append(f"{src}: max_bias={max_bias} (ALiBi) is not modelled")
    if scale is None:
        if op_scale is not None:
            scale = op_scale
            notes.append(f"scale from {src}")
        else:
            scale = 1.0 / math.sqrt(qa.shape[-1])
    if softcap is None and op_softcap:
        softcap = op_softcap
        notes.append(f"softcap from {src}")

    # the mask, additive, [b|1, h|1, n_tok, n_kv]
    add_mask = None
    if mask_vals is not None:
        m = _arrange_mask(mask_vals, n_tok, n_kv)
        if m.dtype == torch.bool:
            add_mask = torch.zeros(m.shape, dtype=torch.float64).masked_fill(~m, -math.inf)
        else:
            add_mask = m.to(torch.float64)
    if causal is None:
        causal = mask_vals is None
    if causal:
        i = torch.arange(n_tok).unsqueeze(1) + (n_kv - n_tok)
        j = torch.arange(n_kv).unsqueeze(0)
        cm = torch.zeros((1, 1, n_tok, n_kv), dtype=torch.float64).masked_fill(j > i, -math.inf)
        add_mask = cm if add_mask is None else add_mask + cm

    # which of ggml's CPU kernels computed the recorded output (round_q="ggml")
    path = None
    if round_q == "ggml":
        kernel = _ggml_kernel_name(graph_op, out_tensor, tensors)
        if kernel == "FLASH_ATTN_EXT":
            path = _ggml_fa_path(
                n_tok, int(qa.shape[0]), n_kv, operands["q"].dtype, operands["k"].dtype, operands["v"].dtype
            )
        elif kernel == "SOFT_MAX":
            path = "soft_max"
    if round_q is not None:
        qa = _round_q(qa, round_q, operands["k"], notes, path)

    group = hq // hkv
    k_full = ka.repeat_interleave(group, dim=1) if group > 1 else ka
    v_full = va.repeat_interleave(group, dim=1) if group > 1 else va

    # float64 naive
    q64, k64, v64 = (x.to(torch.float64) for x in (qa, k_full, v_full))
    s = torch.matmul(q64, k64.transpose(-1, -2)) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    if add_mask is not None:
        s = s + add_mask
    naive = torch.matmul(torch.softmax(s, dim=-1), v64)

    # float32 SDPA
    sdpa = None
    if softcap:
        notes.append("torch SDPA has no soft-capping: only the naive float64 output is computed")
    else:
        q32, k32, v32 = (x.to(torch.float32) for x in (qa, k_full, v_full))
        m32 = None if add_mask is None else add_mask.to(torch.float32).expand(q32.shape[0], hq, n_tok, n_kv)
        sdpa = torch.nn.functional.scaled_dot_product_attention(q32, k32, v32, attn_mask=m32, scale=scale)

    # ggml's CPU kernel, emulated
    ggml_out = None
    if round_q == "ggml":
        ggml_out = _ggml_attention(
            path, qa, k_full, v_full, add_mask, scale, softcap, operands["v"].dtype, ggml_threads, naive, notes,
            _run_metadata(trace).get("ggml.system_info"),
        )

    engine = arranged["out"].to(torch.float64) if "out" in arranged else None
    metrics: Dict[str, Dict[str, float]] = {}
    if engine is not None:
        if sdpa is not None:
            metrics["sdpa"] = compare_tensors(sdpa, engine)
        metrics["naive"] = compare_tensors(naive, engine)
        if ggml_out is not None:
            metrics["ggml"] = compare_tensors(ggml_out, engine)
    if sdpa is not None:
        metrics["sdpa_vs_naive"] = compare_tensors(sdpa, naive)

    sources: Dict[str, Dict[str, Any]] = {}
    for role, op in operands.items():
        code, rule = chosen[role]
        sources[role] = {"name": op.label, "dtype": op.dtype, "shape": list(op.shape), "layout": code, "rule": rule}
    if mask_op is not None:
        sources["mask"] = {
            "name": mask_op[0],
            "dtype": mask_op[2],
            "shape": list(mask_op[1].shape),
            "layout": "[b|1, h|1, >=t, s]",
            "rule": "broadcast",
        }
    dims = {
        "batch": int(qa.shape[0]),
        "n_heads": int(hq),
        "n_kv_heads": int(hkv),
        "n_tokens": int(n_tok),
        "n_kv": int(n_kv),
        "head_dim": int(qa.shape[-1]),
        "head_dim_v": int(va.shape[-1]),
    }
    return AttentionResult(
        layer=layer,
        step=step,
        sdpa=sdpa,
        naive=naive,
        engine=engine,
        q=qa,
        k=ka,
        v=va,
        mask=add_mask,
        scale=float(scale),
        softcap=softcap,
        causal=bool(causal),
        dims=dims,
        sources=sources,
        metrics=metrics,
        notes=notes,
        ggml=ggml_out,
    )


def _run_metadata(trace) -> Dict[str, Any]:
    """The trace's run metadata (a dict), or none."""
    md = getattr(trace, "metadata", None)
    return md if isinstance(md, dict) else {}


def _operand_mask(spec, trace):
    import numpy as np
    import torch

    if isinstance(spec, str):
        t = trace[spec]
        return t.name, _values(t), str(t.dtype)
    if isinstance(spec, (torch.Tensor, np.ndarray)):
        x = torch.as_tensor(spec)
        return "<given tensor>", x, str(x.dtype).replace("torch.", "")
    if hasattr(spec, "torch"):
        return spec.name, _values(spec), str(spec.dtype)
    raise TypeError(
        f"mask=: give a tensor name, a trace Tensor, a torch/numpy array or False, not {type(spec).__name__}"
    )
