"""Bugs to plant in an HF model, one at a time, for the planted-bug suite
(tests/llama/test_hf_pairs.py) and ``python -m tests.hfpair --bug``.

Each bug is a function ``bug(model, layer, patch)`` that changes the model
in place (a deep copy: :func:`plant` makes one) or, through ``patch(obj,
name, value)``, a function of the transformers module the model's layers
come from; :func:`plant` undoes the patches when its block ends. Every bug
is one a user of these tools has had: see each docstring.
"""

from __future__ import annotations

import contextlib
import copy
import sys

__all__ = ["BUGS", "plant"]


def modeling(model):
    """The transformers module that defines `model`'s layers (its
    eager_attention_forward, repeat_kv and rotate_half)."""
    return sys.modules[type(model.model.layers[0].self_attn).__module__]


def silu_zero(model, layer, patch):
    """SiLU returns zeros in one layer's MLP (the TensorLogic report)."""
    import torch

    class Zero(torch.nn.Module):
        def forward(self, x):
            return torch.zeros_like(x)

    model.model.layers[layer].mlp.act_fn = Zero()


def rope_base(model, layer, patch):
    """RoPE computed with twice the model's base (theta)."""
    rot = model.model.rotary_emb
    d = rot.inv_freq.numel() * 2
    theta = 1.0 / rot.inv_freq[1].item() ** (d / 2)  # inv_freq[1] = theta^(-2/d)
    import torch

    rot.inv_freq = 1.0 / (2 * theta) ** (torch.arange(0, d, 2, dtype=torch.float32) / d)


def rope_type(model, layer, patch):
    """RoPE rotating adjacent pairs (GPT-J, llama.cpp's "normal") where the
    model rotates halves (NEOX)."""
    import torch

    def rotate_pairs(x):
        return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)

    patch(modeling(model), "rotate_half", rotate_pairs)


def attention_axes_swapped(model, layer, patch):
    """The attention output's head and token axes swapped without
    .contiguous() before .view(): [b, heads, t, d] bytes read as [b, t, heads, d]."""
    mod = modeling(model)
    inner = mod.eager_attention_forward

    def buggy(module, *args, **kwargs):
        out, weights = inner(module, *args, **kwargs)
        if module.layer_idx == layer:
            out = out.transpose(1, 2).contiguous().view(out.shape)
        return out, weights

    patch(mod, "eager_attention_forward", buggy)


def norm_scaled(model, layer, patch):
    """One layer's FFN norm weight scaled by 1.5."""
    import torch

    with torch.no_grad():
        model.model.layers[layer].post_attention_layernorm.weight.mul_(1.5)


def gqa_repeat(model, layer, patch):
    """GQA heads repeated with `repeat` (tiled) where the model interleaves
    (`repeat_interleave`): query head h reads KV head h % n_kv, not h // n_rep."""
    def tiled(hidden_states, n_rep):
        return hidden_states.repeat(1, n_rep, 1, 1)

    patch(modeling(model), "repeat_kv", tiled)


def kv_wrong_position(model, layer, patch):
    """In decode, the KV cache is read one position off (rolled by one)."""
    import torch

    mod = modeling(model)
    inner = mod.eager_attention_forward

    def buggy(module, query, key, value, *args, **kwargs):
        if query.shape[2] == 1:
            key, value = torch.roll(key, 1, dims=2), torch.roll(value, 1, dims=2)
        return inner(module, query, key, value, *args, **kwargs)

    patch(mod, "eager_attention_forward", buggy)


def mask_off_by_one(model, layer, patch):
    """The causal mask off by one: each prompt token also sees the next."""
    mod = modeling(model)
    inner = mod.eager_attention_forward

    def buggy(module, query, key, value, attention_mask, *args, **kwargs):
        if attention_mask is not None and query.shape[2] > 1:
            shifted = attention_mask.clone()
            shifted[..., :-1] = attention_mask[..., 1:]
            attention_mask = shifted
        return inner(module, query, key, value, attention_mask, *args, **kwargs)

    patch(mod, "eager_attention_forward", buggy)


#: The bugs by name.
BUGS = {f.__name__: f for f in (silu_zero, rope_base, rope_type, attention_axes_swapped, norm_scaled,
                                gqa_repeat, kv_wrong_position, mask_off_by_one)}


@contextlib.contextmanager
def plant(model, bug: str, layer: int = 0):
    """A deep copy of ``model`` with ``bug`` (a name of :data:`BUGS`) planted
    in ``layer``, for the duration of the block."""
    if bug not in BUGS:
        raise KeyError(f"unknown bug {bug!r}; known: {', '.join(BUGS)}")
    model = copy.deepcopy(model)
    undo = []

    def patch(obj, name, value):
        undo.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    try:
        BUGS[bug](model, layer, patch)
        yield model
    finally:
        for obj, name, old in reversed(undo):
            setattr(obj, name, old)
