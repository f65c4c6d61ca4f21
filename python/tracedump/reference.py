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
import itertools
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["attention", "AttentionResult", "LayoutError", "compare_tensors", "parse_layout"]


class LayoutError(ValueError):
    """The layout of a recorded tensor cannot be decided (or is inconsistent)."""


# --------------------------------------------------------------------------
# layout codes


def parse_layout(code: str) -> Tuple[str, ...]:
    """``'bs(hd)'`` -> ``('b', 's', 'hd')``; checks the letters."""
    text = code.replace(" ", "").lower()
    tokens = tuple("hd" if t == "(hd)" else t for t in re.findall(r"\(hd\)|[bhsd]", text))
    if _code_str(tokens) != text:
        raise LayoutError(f"layout {code!r}: use the letters b, h, s, d and (hd), e.g. 'bhsd', 'bshd', 's(hd)'")
    flat = "".join(tokens)
    if sorted(flat.replace("b", "")) != ["d", "h", "s"] or flat.count("b") > 1:
        raise LayoutError(f"layout {code!r} needs h, s and d exactly once (b is optional)")
    return tokens


def _code_str(code: Sequence[str]) -> str:
    return "".join(t if len(t) == 1 else "(hd)" for t in code)


_VARS = {
    # role -> axis letter -> variable
    "q": {"b": "batch", "h": "n_heads", "s": "n_tokens", "d": "head_dim"},
    "k": {"b": "batch", "h": "n_kv_heads", "s": "n_kv", "d": "head_dim"},
    "v": {"b": "batch", "h": "n_kv_heads", "s": "n_kv", "d": "head_dim_v"},
    "out": {"b": "batch", "h": "n_heads", "s": "n_tokens", "d": "head_dim_v"},
}


def _arrange(x, code: Sequence[str], n_heads: Optional[int] = None):
    """A tensor in layout ``code`` -> ``[b, h, s, d]`` (a view when possible)."""
    shape = list(x.shape)
    letters: List[str] = []
    new_shape: List[int] = []
    for extent, tok in zip(shape, code):
        if tok == "hd":
            if not n_heads or extent % n_heads:
                raise LayoutError(f"cannot split {extent} into {n_heads} heads")
            new_shape += [n_heads, extent // n_heads]
            letters += ["h", "d"]
        else:
            new_shape.append(extent)
            letters.append(tok)
    x = x.reshape(new_shape)
    if "b" not in letters:
        x = x.unsqueeze(0)
        letters = ["b"] + letters
    return x.permute([letters.index(c) for c in "bhsd"])


# --------------------------------------------------------------------------
# the binding's objects, read defensively


def _get(obj, key, default=None):
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _lineage(t) -> Tuple[List[int], List[Any], Any]:
    """(parent record ids, lineage ops as dicts, engine op dict or None)."""
    parents = [p["id"] if isinstance(p, dict) else int(p) for p in (getattr(t, "parents", None) or [])]
    lin = getattr(t, "lineage", None)
    if isinstance(lin, dict):  # a lineage given as one dict
        parents = parents or list(lin.get("parents", []) or [])
        return parents, list(lin.get("ops", []) or []), lin.get("engine_op", getattr(t, "engine_op", None))
    return parents, list(lin or []), getattr(t, "engine_op", None)


def _op_name(op) -> str:
    if isinstance(op, str):
        return op.lower()
    if isinstance(op, (tuple, list)) and op and isinstance(op[0], str):
        return op[0].lower()
    for key in ("op", "kind", "name", "type"):
        v = _get(op, key)
        if isinstance(v, str):
            return v.lower()
    return type(op).__name__.lower()


def _op_axes(op) -> Optional[List[int]]:
    if isinstance(op, (tuple, list)) and len(op) >= 2 and isinstance(op[1], (list, tuple)):
        return [int(a) for a in op[1]]
    v = _get(op, "axes")
    return [int(a) for a in v] if v is not None else None


def _engine_op(t) -> Tuple[Optional[str], Optional[str], bytes]:
    _, _, eop = _lineage(t)
    if eop is None:
        return None, None, b""
    if isinstance(eop, (tuple, list)):
        engine, op, params = (list(eop) + [None, None, b""])[:3]
    else:
        engine, op, params = _get(eop, "engine"), _get(eop, "op"), _get(eop, "params", b"")
    return engine, op, bytes(params or b"")


def _ggml(t) -> Optional[Tuple[List[int], List[int]]]:
    g = getattr(t, "ggml", None)
    if g is None:
        return None
    if isinstance(g, (tuple, list)) and len(g) == 2:
        return list(g[0]), list(g[1])
    return list(_get(g, "ne")), list(_get(g, "nb"))


def _has_values(t) -> bool:
    for attr in ("is_stats_only", "stats_only"):
        v = getattr(t, attr, None)
        if v is not None:
            return not (v() if callable(v) else v)
    for attr in ("has_values", "has_data"):
        v = getattr(t, attr, None)
        if v is not None:
            return bool(v() if callable(v) else v)
    return True


def _values(t):
    """A recorded tensor's values as a torch tensor (f16 stays f16)."""
    import torch

    x = t.torch()
    if not isinstance(x, torch.Tensor):  # pragma: no cover - defensive
        x = torch.as_tensor(x)
    return x


def _is_permuted_0213(t, trace, depth: int = 0) -> bool:
    """Whether the tensor is llama.cpp's ``permute(0,2,1,3)`` of its source."""
    parents, ops, _ = _lineage(t)
    n = 0
    copy_only = True
    for op in ops:
        name = _op_name(op)
        if name == "permute" and _op_axes(op) == [0, 2, 1, 3]:
            n += 1
        elif name not in ("cont", "convert", "dequantize"):
            copy_only = False
    engine, op, params = _engine_op(t)
    if not ops and engine == "ggml" and op == "PERMUTE" and len(params) >= 16:
        if list(struct.unpack("<4i", params[:16])) == [0, 2, 1, 3]:
            return True
    if n % 2 == 1:
        return True
    if ops and copy_only and n == 0 and parents and depth < 8 and trace is not None:
        parent = _by_id(trace, parents[0])
        if parent is not None and _ggml(parent) is not None:
            return _is_permuted_0213(parent, trace, depth + 1)
    return False


_ID_CACHE: Dict[int, Tuple[Any, Dict[Any, Any]]] = {}


def _by_id(trace, rid):
    """The trace's tensor with record id ``rid`` (an index built once per call)."""
    if trace is None:
        return None
    hit = _ID_CACHE.get(id(trace))
    if hit is None or hit[0] is not trace:
        _ID_CACHE.clear()
        hit = (trace, {getattr(t, "id", None): t for t in trace.values()})
        _ID_CACHE[id(trace)] = hit
    return hit[1].get(rid)


# --------------------------------------------------------------------------
# operands and their candidate layouts


@dataclass
class _Interp:
    code: Tuple[str, ...]
    values: Any  # torch tensor, canonical shape of this interpretation
    why: str


@dataclass
class _Operand:
    role: str
    label: str
    dtype: str
    shape: Tuple[int, ...]
    interps: List[_Interp]
    ggml: Any = None
    tensors: List[Any] = field(default_factory=list)


_GGML_CODES = {
    "q": ["bhsd", "bshd", "bs(hd)", "s(hd)"],
    "k": ["bhsd", "bshd", "bs(hd)", "s(hd)"],
    "v": ["bhsd", "bshd", "bhds", "bs(hd)", "s(hd)"],
    "out": ["bhsd", "bshd", "bs(hd)", "s(hd)"],
}
_PLAIN_CODES = {4: ["bhsd"], 3: ["hsd", "bs(hd)"], 2: ["s(hd)"]}


def _fit(values, code: Tuple[str, ...]):
    """``values`` with leading size-1 dims dropped to the code's rank, or None."""
    extra = values.dim() - len(code)
    if extra < 0 or any(values.shape[i] != 1 for i in range(extra)):
        return None
    return values.reshape(tuple(values.shape[extra:]))


def _candidates(role: str, values, t, trace, explicit: Optional[str]) -> List[_Interp]:
    if explicit is not None:
        code = parse_layout(explicit)
        v = _fit(values, code)
        if v is None:
            raise LayoutError(f"{role}: layout {explicit!r} does not fit shape {list(values.shape)}")
        return [_Interp(code, v, "given")]
    rank = values.dim()
    ggml = _ggml(t) if t is not None else None
    if ggml is not None:
        # a ggml tensor is 4-d canonically: pad a shorter recorded shape with leading 1s
        if values.dim() < 4:
            values = values.reshape((1,) * (4 - values.dim()) + tuple(values.shape))
        if role == "out" and _engine_op(t)[:2] == ("ggml", "FLASH_ATTN_EXT"):
            codes, why = ["bshd"], "FLASH_ATTN_EXT output"
        elif _is_permuted_0213(t, trace):
            # llama.cpp's transposed V cache (ne = [n_kv, heads, head_dim]
            # before the permute) comes out bhds
            codes, why = (["bhsd", "bhds"] if role == "v" else ["bhsd"]), "ggml permute(0,2,1,3)"
        else:
            codes, why = _GGML_CODES[role], "ggml"
    else:
        codes = _PLAIN_CODES.get(values.dim())
        why = "torch convention"
        if codes is None:
            raise LayoutError(
                f"{role}: a {values.dim()}-dimensional tensor {list(values.shape)} is not attention-shaped"
            )
    out = []
    for c in codes:
        code = parse_layout(c)
        v = _fit(values, code)
        if v is not None:
            out.append(_Interp(code, v, why))
    # equivalent readings (a [t, h*d] tensor as s(hd) or, padded, bs(hd)) are
    # reported in the recorded rank
    out.sort(key=lambda it: len(it.code) != rank)
    return out


def _explicit_layout(role: str, t, layouts: Dict[str, str]) -> Optional[str]:
    if role in layouts:
        return layouts[role]
    md = getattr(t, "metadata", None) if t is not None else None
    if isinstance(md, dict) and isinstance(md.get("layout"), str):
        return md["layout"]
    return None


def _describe(t) -> str:
    return f"`{t.name}` (#{getattr(t, 'id', '?')})"


def _operand(role: str, spec, trace, layouts: Dict[str, str]) -> _Operand:
    """An operand from a name, a binding Tensor or a raw torch/numpy array."""
    import numpy as np
    import torch

    if isinstance(spec, str):
        t = trace[spec]
        if not _has_values(t):
            raise ValueError(f"{role}: {_describe(t)} is recorded as statistics only; it has no values")
        values = _values(t)
        interps = _candidates(role, values, t, trace, _explicit_layout(role, t, layouts))
        return _Operand(role, t.name, str(t.dtype), tuple(values.shape), interps, _ggml(t), [t])
    if isinstance(spec, (torch.Tensor, np.ndarray)):
        values = torch.as_tensor(spec)
        interps = _candidates(role, values, None, trace, layouts.get(role))
        return _Operand(role, "<given tensor>", str(values.dtype).replace("torch.", ""), tuple(values.shape), interps)
    if hasattr(spec, "torch") and hasattr(spec, "name"):
        values = _values(spec)
        interps = _candidates(role, values, spec, trace, _explicit_layout(role, spec, layouts))
        return _Operand(role, spec.name, str(spec.dtype), tuple(values.shape), interps, _ggml(spec), [spec])
    raise TypeError(f"{role}=: give a tensor name, a trace Tensor or a torch/numpy array, not {type(spec).__name__}")


def _parts_operand(role: str, cold, hot, trace, layouts: Dict[str, str]) -> _Operand:
    """K or V given as a quantized cold part and an f16 hot window."""
    import torch

    a = _values(cold).to(torch.float32)
    b = _values(hot).to(torch.float32)
    label = f"concat({cold.name}, {hot.name})"
    if a.dim() != b.dim():
        # pad the lower-rank part with leading 1s (ggml tensors are 4-d)
        n = max(a.dim(), b.dim())
        a = a.reshape((1,) * (n - a.dim()) + tuple(a.shape))
        b = b.reshape((1,) * (n - b.dim()) + tuple(b.shape))
    differ = [i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y]
    if len(differ) > 1:
        raise LayoutError(
            f"{role}: parts {_describe(cold)} {list(a.shape)} and {_describe(hot)} {list(b.shape)} "
            "differ on more than one axis; they cannot be joined"
        )
    explicit = _explicit_layout(role, cold, layouts) or _explicit_layout(role, hot, layouts)
    if explicit is not None:
        codes, why = [parse_layout(explicit)], "given"
    elif differ or _ggml(cold) is not None or _ggml(hot) is not None:
        # where the parts differ is the sequence axis, whatever the rank
        codes, why = [parse_layout(c) for c in _GGML_CODES[role]], "parts"
    else:
        codes, why = [parse_layout(c) for c in _PLAIN_CODES.get(a.dim(), [])], "parts (torch convention)"
    interps: List[_Interp] = []
    for code in codes:
        extra = a.dim() - len(code)
        if extra < 0 or any(a.shape[i] != 1 or b.shape[i] != 1 for i in range(extra)):
            continue
        s_axis = extra + list(code).index("s")
        if differ and differ[0] != s_axis:
            continue
        joined = torch.cat([a, b], dim=s_axis)
        interps.append(_Interp(code, joined.reshape(tuple(joined.shape[extra:])), why + f", joined on axis {s_axis}"))
    if not interps:
        raise LayoutError(
            f"{role}: no layout has the sequence axis where parts {_describe(cold)} {list(a.shape)} and "
            f"{_describe(hot)} {list(b.shape)} differ"
        )
    return _Operand(
        role, label, f"{cold.dtype}+{hot.dtype}", tuple(interps[0].values.shape), interps, None, [cold, hot]
    )


# --------------------------------------------------------------------------
# finding tensors by role


def _pick(trace, tensors: List[Any], role: str, layer, step) -> Optional[Any]:
    """One tensor of a role: the last of a chain of copies, else an error."""
    found = [t for t in tensors if getattr(t, "role", None) == role and _has_values(t)]
    if not found:
        return None
    ids = {getattr(t, "id", None) for t in found}
    ancestors = set()
    for t in found:
        stack = list(_lineage(t)[0])
        seen = set()
        while stack:
            rid = stack.pop()
            if rid in seen:
                continue
            seen.add(rid)
            if rid in ids:
                ancestors.add(rid)
            p = _by_id(trace, rid)
            if p is not None:
                stack.extend(_lineage(p)[0])
    left = [t for t in found if getattr(t, "id", None) not in ancestors]
    if len(left) == 1:
        return left[0]
    names = ", ".join(_describe(t) for t in left)
    kw = "out" if role in ("kqv_out", "attn_out") else role.split("_")[0]
    raise LookupError(
        f"layer {layer} step {step}: {len(left)} tensors have role {role!r} ({names}) and none is derived "
        f"from the others; pass {kw}='NAME'"
    )


_ROLES = ("q", "k", "v", "mask", "kqv_out", "attn_out", "k_quant", "k_hot", "v_quant", "v_hot", "kq")


def _layer_tensors(trace, layer, step):
    ts = list(trace.filter(layer=layer)) if step is None else list(trace.filter(layer=layer, step=step))
    ts = [t for t in ts if getattr(t, "role", None) in _ROLES]
    if step is None:
        steps = sorted({t.step for t in ts if getattr(t, "step", None) is not None})
        if len(steps) > 1:
            raise LookupError(f"layer {layer} has attention tensors at steps {steps}; pass step=")
        step = steps[0] if steps else None
    return ts, step


def _scale_from_ops(tensors) -> Tuple[Optional[float], Optional[float], Optional[float], str]:
    """(scale, softcap, max_bias, source) from FLASH_ATTN_EXT / SOFT_MAX op_params."""
    for t in tensors:
        engine, op, params = _engine_op(t)
        if engine != "ggml":
            continue
        if op == "FLASH_ATTN_EXT" and len(params) >= 12:
            scale, max_bias, softcap = struct.unpack("<3f", params[:12])
            return scale, (softcap or None), max_bias, f"{t.name} FLASH_ATTN_EXT op_params"
        if op in ("SOFT_MAX", "SOFT_MAX_EXT") and len(params) >= 8:
            scale, max_bias = struct.unpack("<2f", params[:8])
            return scale, None, max_bias, f"{t.name} SOFT_MAX op_params"
    return None, None, None, ""


# --------------------------------------------------------------------------
# solving the layouts together


def _solve(ops: Dict[str, _Operand], mask_shape, known: Dict[str, int]):
    names = list(ops)
    fits = []
    rejects = []
    undetermined = []
    for combo in itertools.product(*(ops[n].interps for n in names)):
        env = dict(known)
        merged = []
        why = None
        for role, it in zip(names, combo):
            table = _VARS[role]
            for extent, tok in zip(it.values.shape, it.code):
                if tok == "hd":
                    merged.append((table["h"], table["d"], int(extent), role))
                    continue
                var = table[tok]
                if env.setdefault(var, int(extent)) != int(extent):
                    why = f"{role} {_code_str(it.code)} gives {var}={extent}, another tensor {env[var]}"
                    break
            if why:
                break
        changed = True
        while why is None and changed:
            changed = False
            for hv, dv, ext, role in merged:
                h, d = env.get(hv), env.get(dv)
                if h is not None and d is not None:
                    if h * d != ext:
                        why = f"{role}: {hv}*{dv} = {h}*{d} != {ext}"
                elif h is not None and ext % h == 0:
                    env[dv] = ext // h
                    changed = True
                elif d is not None and ext % d == 0:
                    env[hv] = ext // d
                    changed = True
                elif h is not None or d is not None:
                    why = f"{role}: {ext} is not a multiple of {h or d}"
        if why is None:
            hq, hkv = env.get("n_heads"), env.get("n_kv_heads")
            if hq and hkv and hq % hkv:
                why = f"{hq} query heads are not a multiple of {hkv} KV heads"
        if why is None and mask_shape is not None:
            m = [1] * (4 - len(mask_shape)) + list(mask_shape)
            if len(m) > 4:
                why = f"mask has {len(mask_shape)} dims"
            else:
                t, s = env.get("n_tokens"), env.get("n_kv")
                if m[3] != s:
                    why = f"mask {list(mask_shape)}: last extent {m[3]} != n_kv {s}"
                elif not (m[2] == 1 or (t is not None and m[2] >= t)):
                    why = f"mask {list(mask_shape)}: {m[2]} rows < {t} tokens"
                elif m[1] not in (1, env.get("n_heads")):
                    why = f"mask {list(mask_shape)}: {m[1]} heads"
                elif m[0] not in (1, env.get("batch")):
                    why = f"mask {list(mask_shape)}: batch {m[0]}"
        if why is None:
            for hv, dv, ext, role in merged:
                if hv not in env or dv not in env:
                    # everything else fits: a possibility that cannot be checked
                    undetermined.append((combo, f"{role}: {ext} = heads*head_dim cannot be split"))
                    why = "undetermined"
                    break
        if why is None:
            fits.append((combo, env))
        elif why != "undetermined":
            rejects.append((combo, why))
    return names, fits, rejects, undetermined


def _combo_str(names, combo) -> str:
    return ", ".join(f"{n}={_code_str(it.code)} ({it.why})" for n, it in zip(names, combo))


def _resolve(ops: Dict[str, _Operand], mask_shape, known: Dict[str, int]):
    import torch

    names, fits, rejects, undetermined = _solve(ops, mask_shape, known)
    shapes = "; ".join(f"{n} {ops[n].label} {ops[n].dtype} {list(ops[n].shape)}" for n in names)
    if undetermined:
        c, why = undetermined[0]
        if fits:
            raise LayoutError(
                f"ambiguous attention layout for {shapes}: {_combo_str(names, fits[0][0])} fits, and "
                f"{_combo_str(names, c)} might ({why}). Pass n_heads= (or head_dim=), or layouts={{...}}."
            )
        raise LayoutError(
            f"attention layout for {shapes} needs the head count: {_combo_str(names, c)} fits but {why}. "
            "Pass n_heads= (or head_dim=), or layouts={...}."
        )
    if not fits:
        lines = "\n".join(f"  {_combo_str(names, c)}: {why}" for c, why in rejects[:12])
        raise LayoutError(f"no consistent attention layout for {shapes}. Tried:\n{lines}\nPass layouts={{...}}.")
    arranged = []
    for combo, env in fits:
        arr = {}
        for n, it in zip(names, combo):
            heads = env.get(_VARS[n]["h"])
            arr[n] = _arrange(it.values, it.code, heads)
        arranged.append(arr)
    first = arranged[0]
    for other, (combo, _) in zip(arranged[1:], fits[1:]):
        for n in names:
            a, b = first[n], other[n]
            same = a.shape == b.shape and bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())
            if not same:
                raise LayoutError(
                    f"ambiguous attention layout for {shapes}: both\n  {_combo_str(names, fits[0][0])}\n"
                    f"and\n  {_combo_str(names, combo)}\nfit and read {n} differently. "
                    "Pass layouts={'q': 'bhsd', ...} (or record a 'layout' metadata key)."
                )
    return first, fits[0][1], {n: (_code_str(it.code), it.why) for n, it in zip(names, fits[0][0])}


_GGML_VEC_DOT = {
    # a ggml type -> the type ggml's CPU kernels convert the other operand of
    # a dot product with it to (type_traits_cpu[...].vec_dot_type); None: f32
    "f16": "f16",
    "bf16": "bf16",
    "q4_0": "q8_0",
    "q4_1": "q8_0",
    "q5_0": "q8_0",
    "q5_1": "q8_0",
    "q8_0": "q8_0",
    "iq4_nl": "q8_0",
    "f32": None,
}


def _round_to(x, how: str, what: str = "round_q"):
    """``x`` rounded to ``how`` (f16, bf16, q8_0 in 32-blocks along the last axis), same dtype."""
    import torch

    if how == "f16":
        return x.to(torch.float32).to(torch.float16).to(x.dtype)
    if how == "bf16":
        return x.to(torch.float32).to(torch.bfloat16).to(x.dtype)
    if how == "q8_0":
        # ggml's x86-64 quantize_row_q8_0 (AVX): d = amax/127 stored as f16,
        # x * (127/amax) in f32 rounded to nearest (ties to even)
        x32 = x.to(torch.float32)
        if x32.shape[-1] % 32:
            raise ValueError(f"{what}: q8_0 needs the last axis a multiple of 32, not {x32.shape[-1]}")
        b = x32.reshape(-1, 32)
        amax = b.abs().amax(dim=1, keepdim=True)
        inv = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
        qs = torch.round(b * inv)
        d16 = (amax / 127).to(torch.float16).to(torch.float32)
        return (qs * d16).reshape(x.shape).to(x.dtype)
    raise ValueError(f"{what}={how!r}: use 'f16', 'bf16', 'q8_0' or 'ggml'")


def _round_q(q, how: str, k_operand, notes: List[str], kernel: Optional[str] = None):
    """Q rounded as an engine rounds it before multiplying with K."""
    if how == "ggml":
        kd = k_operand.dtype
        if kernel == "fa_tiled":
            notes.append("round_q='ggml': FLASH_ATTN_EXT's tiled kernel (64+ query tokens) keeps Q in f32")
            return q
        if kd not in _GGML_VEC_DOT:
            notes.append(f"round_q='ggml': no rule for K of type {kd}; Q not rounded")
            return q
        how = _GGML_VEC_DOT[kd]
        if how is None:
            return q
        notes.append(f"Q rounded to {how} as ggml's CPU kernels do for K of type {kd}")
    else:
        notes.append(f"Q rounded to {how}")
    if how == "q8_0" and q.shape[-1] % 32:
        raise ValueError(f"round_q='q8_0' needs head_dim a multiple of 32, not {q.shape[-1]}")
    return _round_to(q, how)


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


def _f32(x):
    import torch

    return x.to(torch.float32).to(torch.float64)


def _f16(x):
    import torch

    return x.to(torch.float32).to(torch.float16).to(torch.float64)


def _ggml_fa_f16(q, k, v, mask, scale: float, softcap: Optional[float], n_chunks: int):
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
    """
    import torch

    f64 = torch.float64

    def expf(x):
        return _f32(torch.exp(x))

    q, k, v = (x.to(f64) for x in (q, k, v))
    b, h, t, _ = q.shape
    n_kv, dv = k.shape[2], v.shape[-1]
    s = _f32(torch.matmul(q, k.transpose(-1, -2)))  # ggml_vec_dot_f16 & co: an f32 sum
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


def _ggml_attention(path, q, k, v, mask, scale, softcap, vd: str, threads, naive, notes: List[str]):
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
        return _ggml_fa_f16(q, k, v, mask, scale, softcap, int(threads))
    notes.append("ggml: FLASH_ATTN_EXT with an f16 V: V·softmax accumulated in f16, key by key")
    return _ggml_fa_f16(q, k, v, mask, scale, softcap, 1)


def _arrange_mask(m, n_tokens: int, n_kv: int):
    """A mask -> 4-d ``[b|1, h|1, n_tokens, n_kv]``, padded rows cut."""
    while m.dim() < 4:
        m = m.unsqueeze(0)
    if m.shape[-2] > n_tokens:
        m = m[..., :n_tokens, :]
    return m


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
        exact result in f32. The notes say which kernel was emulated.
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
        from . import ggml as _ggml

        found = _ggml.attention_inputs(trace, layer, step)
        if found is not None:
            q, k, v = found["q"], found["k"], found["v"]
            if mask is None and found["mask"] is not None:
                mask = found["mask"]
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
            path, qa, k_full, v_full, add_mask, scale, softcap, operands["v"].dtype, ggml_threads, naive, notes
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
