"""Part of :mod:`tracedump.reference` (see its documentation)."""

from __future__ import annotations

import struct
from typing import Any, Dict, List, Optional, Tuple




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
