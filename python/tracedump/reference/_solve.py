"""Part of :mod:`tracedump.reference` (see its documentation)."""

from __future__ import annotations

import itertools
from typing import Dict, List, Optional

from ._layout import LayoutError, _VARS, _arrange, _code_str
from ._operands import _Operand


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
