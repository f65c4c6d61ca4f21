"""Reading traces recorded from ggml graphs (the C adapter, SPEC.md §7).

    import tracedump

    trace = tracedump.open("llama.tdump")
    found = tracedump.ggml.attention_inputs(trace, layer=0, step=1)
    found["q"], found["k"], found["v"], found["mask"], found["out"]   # trace Tensors

:func:`attention_inputs` follows the attention op's own inputs in the graph —
no roles, no names: with flash attention the ``FLASH_ATTN_EXT`` node
(``src = [q, k, v, mask]``, its output is the attention output); without, the
``SOFT_MAX`` node whose input is ``kq = MUL_MAT(k, q)`` and the ``MUL_MAT(v,
softmax)`` that consumes it (the output). The K/V found are the views of the
KV cache exactly as llama.cpp passed them (permuted, the V cache transposed
without flash attention, quantized with a q8_0 cache).
:func:`tracedump.reference.attention` uses it when a layer has no role-tagged
tensors.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

__all__ = ["attention_inputs", "srcs"]


def _op(t) -> Optional[str]:
    e = t.engine_op
    return e["op"] if e and e.get("engine") == "ggml" else None


def _id(t) -> Optional[int]:
    return None if t is None else t.id


def srcs(t, by_id: Dict[int, Any]) -> List[Optional[Any]]:
    """The tensor's ggml ``src[]`` as trace Tensors, by position (None for a
    source that was not recorded: a weight, the KV cache itself)."""
    names = (t.metadata.get("ggml.srcs") or "").split(",") if t.metadata.get("ggml.srcs") else []
    parents = [by_id.get(p["id"]) for p in t.parents]
    out: List[Optional[Any]] = []
    j = 0
    for name in names:
        if j < len(parents) and parents[j] is not None and parents[j].name == name:
            out.append(parents[j])
            j += 1
        else:
            out.append(None)
    return out


def attention_inputs(trace, layer: int, step: Optional[int] = None) -> Optional[Dict[str, Any]]:
    """``{"q", "k", "v", "mask", "out", "op"}`` of layer ``layer``'s attention
    at ``step``, found in the ggml graph; None when the trace has no ggml
    attention op for that layer and step. Raises ``LookupError`` when the
    layer has several at that step (pass ``step=``)."""
    ts = list(trace.filter(layer=layer) if step is None else trace.filter(layer=layer, step=step))
    by_id = {t.id: t for t in trace}
    found = []
    for t in ts:
        op = _op(t)
        if op == "FLASH_ATTN_EXT":
            s = srcs(t, by_id) + [None] * 4
            if s[0] is not None and s[1] is not None and s[2] is not None:
                found.append({"q": s[0], "k": s[1], "v": s[2], "mask": s[3], "out": t, "op": t})
        elif op in ("SOFT_MAX", "SOFT_MAX_EXT"):
            s = srcs(t, by_id) + [None] * 2
            kq = s[0]
            if kq is None or _op(kq) != "MUL_MAT":
                continue
            k, q = (srcs(kq, by_id) + [None, None])[:2]
            users = [u for u in ts if _op(u) == "MUL_MAT" and _id((srcs(u, by_id) + [None, None])[1]) == t.id]
            if k is None or q is None or len(users) != 1:
                continue
            v = srcs(users[0], by_id)[0]
            if v is not None:
                found.append({"q": q, "k": k, "v": v, "mask": s[1], "out": users[0], "op": t})
    if not found:
        return None
    if len(found) > 1:
        steps = sorted({f["op"].step for f in found if f["op"].step is not None})
        raise LookupError(f"layer {layer}: {len(found)} ggml attention ops (steps {steps}); pass step=")
    return found[0]
