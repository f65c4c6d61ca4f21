"""Part of :mod:`tracedump.reference` (see its documentation)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ._layout import LayoutError, parse_layout
from ._lineage import _by_id, _engine_op, _ggml, _has_values, _is_permuted_0213, _lineage, _values


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
