"""Part of :mod:`tracedump.reference` (see its documentation)."""

from __future__ import annotations

import re
from typing import List, Optional, Sequence, Tuple




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
