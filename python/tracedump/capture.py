"""Record every submodule's inputs and outputs of a torch model into a trace.

    import tracedump

    with tracedump.capture(model, "run.tdump", engine="torch") as cap:
        model(input_ids)          # step 0
        model(next_ids)           # step 1
    print(cap.records, "tensors in", cap.path)

Each submodule gets a forward hook (its outputs) and, with ``inputs=True``, a
forward pre-hook (its positional and keyword tensor arguments). Records are
named by the module's path as ``model.named_modules()`` gives it:

* outputs: ``<path>`` for a tensor, ``<path>.output.<i>`` for the items of a
  tuple or list (nested: ``<path>.output.<i>.<j>``), ``<path>.output.<key>``
  for a dict (HF ``ModelOutput``);
* inputs: ``<path>.input.<i>`` for positional arguments, ``<path>.input.<key>``
  for keyword arguments;
* the root module (path ``""``): ``output`` / ``output.<i>`` and
  ``input.<i>``.

Non-tensor values (``None``, caches, ints) are skipped. Tensors are detached
(no autograd graph is kept) and recorded with their real strides (CPU tensors
are not copied by the hook; others are copied to the CPU first). The layer
number comes from the first ``layers.N`` / ``h.N`` / ``blocks.N`` /
``layer.N`` component of the path, the step is the index of the top-level
``model(...)`` call (0 for the first), and ``roles`` (regex on the record
name -> role) can tag records for :mod:`tracedump.reference`.

Records carry what they were computed from, as lineage parents (with the
format's op relation ``tracedump.op``: computed, by the op's short name or
the module's class name), so that
``tracedump diff`` can blame the module that made a divergence: a module's
output has as parents its positional inputs' records (``<path>.input.<i>``,
or with ``inputs=False`` the records that produced those tensors), and an
input record has as parent the record that produced that tensor (an earlier
module's output).

Hooks are removed and the trace closed when the ``with`` block ends, also when
it ends with an exception.

Op-level capture (``ops=True``)
-------------------------------

Module hooks see no RoPE, no attention scores or softmax, no SwiGLU product:
those are plain torch calls inside a ``forward``. With ``ops=True`` a
``torch.overrides.TorchFunctionMode`` is on while the model's forward runs
(pushed by the outermost module's pre-hook, popped by its hook, also when
forward raises) and every floating-point tensor a torch function returns is
recorded, besides the module records, which keep their names. A record is
named ``<innermost module path>/<op>/<k>``:

* the module path is that of the innermost module whose forward is running
  (a function the module calls, such as HF's ``apply_rotary_pos_emb`` or
  ``eager_attention_forward``, counts as its module's); the root model's own
  ops have no path: ``mul/0``;
* ``<op>`` is a short name: ``Tensor.mul``, ``torch.mul`` and ``x * y``
  (``Tensor.__mul__`` / ``__rmul__``) are all ``mul``, ``x += y`` is
  ``add_``, ``x[i]`` is ``getitem``, ``F.linear`` is ``linear``
  (:func:`op_name`);
* ``<k>`` counts the calls of that op in that module's current forward
  call, from 0: it restarts with each call, so names are the same run to
  run, and ``trace["<name>#<s>"]`` is the one of the s-th call (the step, for
  a module called once per step);
* a call returning several tensors (``chunk``, ``split``) gives
  ``<op>/<k>.<i>``.

Op records have the module's layer and the step, the metadata ``op`` (the
short name), ``torch_func`` (torch's name for the function, e.g.
``torch.Tensor.__mul__``), ``module`` and ``module_type``, and as lineage
parents the records of the call's tensor arguments that this capture
recorded (an op's or a module's output, or the module input record of that
tensor): e.g.
``model.layers.1.mlp/mul/0`` has the parents ``model.layers.1.mlp.act_fn``
and ``model.layers.1.mlp.up_proj``. With ``stats_only=True`` (no lineage in
a stats record) the parents' names are in the metadata ``inputs``,
comma-separated.

Not recorded: results that are not floating point (int/bool masks, indices,
``argmax``), calls returning no tensor (``size``, ``dim``, ``shape``,
``is_contiguous``, ``item`` ...), property reads but ``.T``/``.mT``/``.H``/
``.mH``, autograd and memory bookkeeping (``requires_grad_``, ``storage``
...), and calls that hand back one of their arguments untouched (``x.to(x.dtype)``,
``x.contiguous()`` of a contiguous ``x``, dropout in eval) -- in-place ops
(``add_``, ``out=``) are recorded. Views (``view``, ``transpose``,
``getitem``, ``expand``) are recorded as the views they are, with their
strides, over the bytes already written (no copy). Calls made outside any
forward (between steps, by ``generate``) are not seen, nor the calls inside
a function torch already dispatched (``F.softmax``'s own ``torch.softmax``),
nor the recording itself (the mode steps aside while a record is written).
The mode changes no value: the model's outputs are bit-identical.

What an HF ``LlamaForCausalLM`` gives (transformers 5.25, ``attn_implementation="eager"``;
``P = model.layers.N``):

* ``P.input_layernorm/pow/0``, ``mean/0``, ``add/0``, ``rsqrt/0``,
  ``mul/0`` (x * rsqrt), ``mul/1`` (weight * ...; the same bytes as the
  record ``P.input_layernorm``);
* ``P.self_attn.q_proj/linear/0`` (= ``P.self_attn.q_proj``),
  ``P.self_attn/view/0``, ``transpose/0`` (Q, ``[b, heads, t, d]``); K:
  ``view/1``, ``transpose/1``; V: ``view/2``, ``transpose/2``;
* RoPE (``apply_rotary_pos_emb``): ``P.self_attn/unsqueeze/0`` (cos),
  ``unsqueeze/1`` (sin), ``mul/0`` (q * cos), ``getitem/0``, ``getitem/1``,
  ``neg/0``, ``cat/0`` (rotate_half(q)), ``mul/1`` (* sin), **post-RoPE Q:
  ``P.self_attn/add/0``** ``[b, heads, t, d]``; the same for K: ``mul/2``,
  ``getitem/2``, ``getitem/3``, ``neg/1``, ``cat/1``, ``mul/3``, **post-RoPE
  K: ``P.self_attn/add/1``** ``[b, kv_heads, t, d]``;
* with a KV cache (``use_cache``, the default): ``P.self_attn/cat/2`` /
  ``cat/3``, the layer's whole K / V (the cache's first call also records
  ``tensor/0``, ``tensor/1``, empty tensors);
* GQA ``repeat_kv``: ``getitem/4``, ``expand/0``, ``reshape/0`` (K) and
  ``getitem/5``, ``expand/1``, ``reshape/1`` (V), none without GQA;
* ``transpose/3`` (K^T), **scores Q K^T: ``P.self_attn/matmul/0``**,
  scaled: ``mul/4``, masked: ``add/2`` (+ the mask ``model/where/0``),
  **softmax: ``P.self_attn/softmax/0``** (float32; in a bf16/f16 model its
  cast back is ``to/0``, and the weights returned are that), P V:
  ``matmul/1`` ``[b, heads, t, d]``, ``transpose/4``, ``contiguous/0``
  ``[b, t, heads, d]``, **the attention output before o_proj:
  ``P.self_attn/reshape/2``** ``[b, t, heads * d]`` (``reshape/0`` without
  GQA; the same bytes as ``P.self_attn.o_proj.input.0``), then
  ``P.self_attn.o_proj/linear/0``;
* ``P/add/0`` (residual after attention), ``P.post_attention_layernorm/...``
  as above, ``P.mlp.gate_proj/linear/0``, ``P.mlp.act_fn/silu/0``,
  ``P.mlp.up_proj/linear/0``, **the SwiGLU product act(gate) * up:
  ``P.mlp/mul/0``** (= ``P.mlp.down_proj.input.0``),
  ``P.mlp.down_proj/linear/0``, ``P/add/1`` (residual after the MLP, = ``P``);
* outside the layers: ``model.embed_tokens/embedding/0``,
  ``model.rotary_emb/float/0`` (the positions), ``mul/0`` (the angles),
  ``cat/0``, ``cos/0``, ``mul/1`` (cos), ``sin/0``, ``mul/2`` (sin; in a
  bf16/f16 model cast by ``to/1``, ``to/2``), ``model/zeros/0``,
  ``model/where/0`` (the float causal mask),
  ``model.norm/...``, ``getitem/0`` (the root's slice of the hidden states),
  ``lm_head/linear/0``.

With ``attn_implementation="sdpa"`` there are no scores or softmax records:
the attention is one ``P.self_attn/scaled_dot_product_attention/0``.

Comparing a backend with the CPU op by op: capture the same model and input
twice with ``ops=True`` (on the device, and on the CPU) and
``tracedump.compare(device_run, cpu_run).first_divergence["key"]`` names the
first op whose result differs (e.g. ``model.layers.0.self_attn/contiguous/0``
for a backend that copies non-contiguous tensors wrongly), where the module
records alone would only show the module that consumed it.
"""

from __future__ import annotations

import re
import warnings
import weakref
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Pattern, Sequence, Tuple, Union

if TYPE_CHECKING:
    import os

__all__ = ["capture", "Capture", "layer_of", "op_name"]

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)(?=\.|$)")

Patterns = Union[None, str, Pattern[str], Sequence[Union[str, Pattern[str]]]]


def layer_of(path: str) -> Optional[int]:
    """The layer number in a module path: ``model.layers.3.mlp`` -> 3.

    The first ``layers.N``, ``h.N``, ``blocks.N`` or ``layer.N`` component
    counts (``model.layers.2.mlp.experts.7`` is layer 2); ``None`` when there
    is none.
    """
    m = _LAYER_RE.search(path)
    return int(m.group(1)) if m else None


def _supported_dtypes():
    """The torch dtypes the format has an id for (SPEC.md §8)."""
    import torch

    names = [
        "float32",
        "float16",
        "bfloat16",
        "float64",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "bool",
        "float8_e4m3fn",
        "float8_e5m2",
    ]
    return {getattr(torch, n) for n in names if hasattr(torch, n)}


def _compile(patterns: Patterns) -> List[Pattern[str]]:
    if patterns is None:
        return []
    if isinstance(patterns, (str, re.Pattern)):
        patterns = [patterns]
    return [p if isinstance(p, re.Pattern) else re.compile(p) for p in patterns]


def _flatten(value: Any, prefix: str, out: List[tuple], depth: int = 0) -> None:
    """Collect (suffix, tensor) pairs from a tensor / tuple / list / dict."""
    import torch

    if isinstance(value, torch.Tensor):
        out.append((prefix, value))
        return
    if depth > 8:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}", out, depth + 1)
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            _flatten(item, f"{prefix}.{i}", out, depth + 1)


# -- op-level capture (ops=True) ----------------------------------------------

# Python operators -> the torch op they stand for (reflected ones included:
# ``2 * x`` is ``Tensor.__rmul__``, recorded as ``mul``; in-place ones get
# torch's trailing underscore: ``x += y`` is ``add_``).
_DUNDER_OPS = {
    "add": "add", "radd": "add", "iadd": "add_",
    "sub": "sub", "rsub": "sub", "isub": "sub_",
    "mul": "mul", "rmul": "mul", "imul": "mul_",
    "truediv": "div", "rtruediv": "div", "itruediv": "div_", "div": "div", "rdiv": "div", "idiv": "div_",
    "floordiv": "floor_divide", "rfloordiv": "floor_divide", "ifloordiv": "floor_divide_",
    "mod": "remainder", "rmod": "remainder", "imod": "remainder_",
    "pow": "pow", "rpow": "pow", "ipow": "pow_",
    "matmul": "matmul", "rmatmul": "matmul", "imatmul": "matmul_",
    "neg": "neg", "pos": "positive", "abs": "abs", "invert": "bitwise_not",
    "and": "bitwise_and", "rand": "bitwise_and", "iand": "bitwise_and_",
    "or": "bitwise_or", "ror": "bitwise_or", "ior": "bitwise_or_",
    "xor": "bitwise_xor", "rxor": "bitwise_xor", "ixor": "bitwise_xor_",
    "lshift": "bitwise_left_shift", "rlshift": "bitwise_left_shift", "ilshift": "bitwise_left_shift_",
    "rshift": "bitwise_right_shift", "rrshift": "bitwise_right_shift", "irshift": "bitwise_right_shift_",
    "eq": "eq", "ne": "ne", "lt": "lt", "le": "le", "gt": "gt", "ge": "ge",
    "getitem": "getitem", "setitem": "setitem",
}

# Tensor properties whose value is a computed tensor (``x.T``); every other
# property read (``.shape``, ``.dtype``, ``.data``, ``.grad`` ...) is skipped.
_TENSOR_PROPERTIES = {"T", "mT", "H", "mH"}

# Calls that return a tensor but compute nothing (or only touch autograd /
# memory bookkeeping), by short name (``__deepcopy__`` is ``deepcopy``):
# never recorded.
_NOT_OPS = {
    "requires_grad_", "retain_grad", "register_hook", "share_memory_", "record_stream",
    "pin_memory", "untyped_storage", "storage", "_typed_storage", "data_ptr",
    "reduce_ex", "deepcopy", "setstate", "array", "array_wrap", "dlpack", "format", "repr",
    "torch_function",
}

_OP_NAMES: Dict[Any, Tuple[str, str, bool]] = {}


def op_name(func: Any) -> Tuple[str, str, bool]:
    """``(short, full, is_property)`` for a function seen by ``__torch_function__``.

    ``short`` is what op records are named by: ``Tensor.__mul__``,
    ``Tensor.mul`` and ``torch.mul`` are all ``mul``; ``F.linear`` is
    ``linear``; ``x += y`` is ``add_``; the read of a property (``x.T``) is
    the property's name, with ``is_property`` True. ``full`` is torch's name
    for it (``torch.overrides.resolve_name``: ``torch.Tensor.__mul__``) or
    the function's module and qualified name.
    """
    try:
        return _OP_NAMES[func]
    except (KeyError, TypeError):
        pass
    name = getattr(func, "__name__", None) or type(func).__name__
    prop = name in ("__get__", "__set__", "__delete__")
    if prop:
        owner = getattr(func, "__self__", None)
        name = getattr(owner, "__name__", None) or "property"
    short = name
    m = re.fullmatch(r"__(\w+?)__", name)
    if m and not prop:
        short = _DUNDER_OPS.get(m.group(1), m.group(1))
    full = None
    try:
        import torch.overrides

        full = torch.overrides.resolve_name(func)
    except Exception:  # resolve_name may not know a function: fall back below
        full = None
    if not full:
        mod = getattr(func, "__module__", None) or ""
        qual = getattr(func, "__qualname__", None) or name
        if prop:
            qual = f"Tensor.{name}.{func.__name__}"
        full = f"{mod}.{qual}" if mod else qual
    result = (short, full, prop)
    try:
        _OP_NAMES[func] = result
    except TypeError:
        pass
    return result


def _tensors_in(value: Any, out: List[Any], depth: int = 0) -> None:
    """The tensors among a call's arguments (lists, tuples and dicts searched)."""
    import torch

    if isinstance(value, torch.Tensor):
        out.append(value)
    elif depth < 4 and isinstance(value, (tuple, list)):
        for item in value:
            _tensors_in(item, out, depth + 1)
    elif depth < 4 and isinstance(value, dict):
        for item in value.values():
            _tensors_in(item, out, depth + 1)


def _op_mode_class():
    """A ``TorchFunctionMode`` that hands every call's result to a Capture."""
    import torch.overrides

    class _OpCapture(torch.overrides.TorchFunctionMode):
        def __init__(self, cap: "Capture") -> None:
            super().__init__()
            self.cap = cap

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if kwargs is None:
                kwargs = {}
            # torch pops this mode while we run: neither ``func`` nor the
            # recording below comes back here
            result = func(*args, **kwargs)
            cap = self.cap
            if cap._frames and not cap._busy:
                cap._busy = True
                try:
                    cap._record_op(func, args, kwargs, result)
                finally:
                    cap._busy = False
            return result

    return _OpCapture


class Capture:
    """The object ``capture(...)`` yields: ``.path``, ``.step``, ``.records``.

    ``step`` is the number of top-level forward calls seen so far (the step
    the next call will record); ``records`` counts the records written;
    ``skipped`` lists ``(name, reason)`` for tensors that could not be
    recorded (e.g. a dtype the format has no id for).
    """

    def __init__(
        self,
        model,
        path,
        *,
        include: Patterns = None,
        exclude: Patterns = None,
        stats_only: bool = False,
        inputs: bool = True,
        outputs: bool = True,
        roles: Optional[Dict[str, str]] = None,
        layers: Optional[Sequence[int]] = None,
        steps: Optional[Sequence[int]] = None,
        mode: str = "sync",
        queue_bytes: int = 256 << 20,
        when_full: str = "block",
        preallocate: bool = False,
        ops: bool = False,
        **run_metadata: Any,
    ) -> None:
        import torch

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"capture() needs a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.path = str(path)
        self.include = _compile(include)
        self.exclude = _compile(exclude)
        self.stats_only = bool(stats_only)
        self.inputs = bool(inputs)
        self.outputs = bool(outputs)
        self.roles = [(re.compile(k), v) for k, v in (roles or {}).items()]
        self.layers = None if layers is None else frozenset(int(x) for x in layers)
        self.steps = None if steps is None else frozenset(int(x) for x in steps)
        self.writer_options = dict(mode=mode, queue_bytes=int(queue_bytes), when_full=when_full,
                                   preallocate=bool(preallocate))
        self.run_metadata = dict(run_metadata)
        self.run_metadata.setdefault("engine", "torch")
        self.run_metadata.setdefault("engine_version", torch.__version__)
        self.run_metadata.setdefault("model", type(model).__name__)
        self.step = 0
        self.records = 0
        self.skipped: List[tuple] = []
        self.writer = None
        self._handles: List[Any] = []
        self._depth = 0
        self._current_step: Optional[int] = None
        # ops=True: the modules whose forward is running (innermost last),
        # each with its per-op-name counters, and the recorded tensors
        self.ops = bool(ops)
        self._frames: List[list] = []
        self._busy = False
        self._mode = None
        self._mode_pushed = False
        self._produced: Dict[int, tuple] = {}
        # per module (by id), the input records of each call under way:
        # its output's parents
        self._call_inputs: Dict[int, List[List[tuple]]] = {}

    # -- filters and naming -------------------------------------------------
    def wants(self, name: str) -> bool:
        """Whether a record called ``name`` passes the include/exclude filters."""
        if self.include and not any(p.search(name) for p in self.include):
            return False
        return not any(p.search(name) for p in self.exclude)

    def _role(self, name: str) -> Optional[str]:
        for pattern, role in self.roles:
            if pattern.search(name):
                return role
        return None

    def _record(
        self,
        module_path: str,
        module,
        name: str,
        tensor,
        *,
        parents: Optional[List[tuple]] = None,
        extra: Optional[Dict[str, Any]] = None,
    ) -> Optional[int]:
        import torch

        if not self.wants(name):
            return None
        layer = layer_of(module_path)
        if self.layers is not None and layer is not None and layer not in self.layers:
            return None
        if self.steps is not None and self._current_step is not None and self._current_step not in self.steps:
            return None
        t = tensor.detach()
        if t.layout != torch.strided or t.device.type == "meta" or t.dtype not in _supported_dtypes():
            self.skipped.append((name, f"no trace dtype/layout for {t.dtype} {t.layout} on {t.device}"))
            return None
        if t.device.type != "cpu":
            t = t.to("cpu")
        if isinstance(t, torch.nn.Parameter) or type(t) is not torch.Tensor:
            t = t.as_subclass(torch.Tensor)
        kwargs: Dict[str, Any] = {}
        if layer is not None:
            kwargs["layer"] = layer
        if self._current_step is not None:
            kwargs["step"] = self._current_step
        role = self._role(name)
        if role is not None:
            kwargs["role"] = role
        if extra:
            kwargs.update(extra)
        if self.stats_only:
            if parents:  # no lineage in a stats record: the parents' names
                kwargs["inputs"] = ",".join(n for _, n in parents)
            rid = self.writer.add_stats(name, t, **kwargs)
        else:
            if parents:
                kwargs["lineage"] = {"parents": [i for i, _ in parents]}
                if not name.startswith(f"{module_path}.input") and not name.startswith("input"):
                    # computed from those parents (SPEC.md §5.4, format 1.1):
                    # by the op, or by the module's forward
                    op = (extra or {}).get("op") or type(module).__name__
                    kwargs["tracedump.op"] = {"relation": "computed", "name": op}
            rid = self.writer.add(name, t, module=module_path, module_type=type(module).__name__, **kwargs)
        self.records += 1
        return rid

    # -- op-level capture -----------------------------------------------------
    def _remember(self, tensor, rid: Optional[int], name: str) -> None:
        """Note that ``tensor`` (this very object) was recorded as ``rid``."""
        if rid is None:
            return
        key = id(tensor)
        produced = self._produced

        def forget(ref, key=key):
            entry = produced.get(key)
            if entry is not None and entry[0] is ref:
                del produced[key]

        try:
            ref = weakref.ref(tensor, forget)
        except TypeError:
            return
        produced[key] = (ref, rid, name)

    def _parents(self, args, kwargs) -> List[tuple]:
        """(record id, name) of the call's tensor arguments recorded before."""
        found: List[Any] = []
        _tensors_in(args, found)
        _tensors_in(kwargs, found)
        parents: List[tuple] = []
        for t in found:
            entry = self._produced.get(id(t))
            if entry is not None and entry[0]() is t and (entry[1], entry[2]) not in parents:
                parents.append((entry[1], entry[2]))
        return parents

    def _record_op(self, func, args, kwargs, result) -> None:
        """Record the floating-point tensors ``func(*args, **kwargs)`` returned."""
        import torch

        frame = self._frames[-1]
        short, full, prop = op_name(func)
        if short in _NOT_OPS or (prop and short not in _TENSOR_PROPERTIES):
            return
        outs: List[tuple] = []
        if isinstance(result, torch.Tensor):
            outs.append(("", result))
        elif isinstance(result, (tuple, list)):
            _flatten(result, "", outs)
        if not outs:
            return
        inputs: List[Any] = []
        _tensors_in(args, inputs)
        inplace = (short.endswith("_") and not short.startswith("_")) or "out" in kwargs
        # a call that hands back one of its arguments untouched (x.to(x.dtype),
        # x.contiguous() of a contiguous x, dropout in eval) computed nothing
        outs = [
            (suffix, t)
            for suffix, t in outs
            if t.is_floating_point() and (inplace or not any(t is i for i in inputs))
        ]
        if not outs:
            return
        path, module, counts = frame
        k = counts.get(short, 0)
        counts[short] = k + 1
        if self.steps is not None and self._current_step is not None and self._current_step not in self.steps:
            return
        base = f"{path}/{short}/{k}" if path else f"{short}/{k}"
        parents = self._parents(args, kwargs)
        extra = {"op": short, "torch_func": full}
        for suffix, t in outs:
            name = base + suffix
            rid = self._record(path, module, name, t, parents=parents, extra=extra)
            self._remember(t, rid, name)

    def _unpush_mode(self) -> None:
        """Take this capture's mode off torch's mode stack, through its
        documented context-manager exit: it is on top unless a forward
        entered a mode of its own and never left it, which is not supported
        (torch offers no public way to take a mode from under another)."""
        self._mode.__exit__(None, None, None)

    def _make_frame_pre_hook(self, module_path: str):
        def pre_hook(module, args):
            if not self._frames and not self._mode_pushed:
                # the outermost forward starts: the mode goes on
                self._mode.__enter__()
                self._mode_pushed = True
            self._frames.append([module_path, module, {}])
            return None

        return pre_hook

    def _make_frame_hook(self):
        def hook(module, args, output):
            try:
                # pop down to this module's frame (one whose pre-hooks raised
                # after ours ran has no hook call to pop its frame)
                while self._frames:
                    if self._frames.pop()[1] is module:
                        break
            finally:
                if not self._frames and self._mode_pushed:
                    # the outermost forward ends (or raised): the mode goes off
                    self._mode_pushed = False
                    self._unpush_mode()
            return None

        return hook

    @staticmethod
    def _names(module_path: str, kind: str, value: Any) -> List[tuple]:
        """(name, tensor) pairs for a module's inputs (``kind='input'``) or outputs."""
        import torch

        base = module_path
        pairs: List[tuple] = []
        if kind == "output" and isinstance(value, torch.Tensor):
            return [(base or "output", value)]
        prefix = f"{base}.{kind}" if base else kind
        _flatten(value, prefix, pairs)
        return pairs

    # -- hooks --------------------------------------------------------------
    def _make_pre_hook(self, module_path: str, is_root: bool):
        def pre_hook(module, args, kwargs):
            if is_root:
                if self._depth == 0:
                    self._current_step = self.step
                    self.step += 1
                self._depth += 1
            if self.inputs:
                call_inputs: List[tuple] = []
                busy, self._busy = self._busy, True  # ops=True: the recording is no op
                try:
                    for name, t in self._names(module_path, "input", tuple(args)) + self._names(
                        module_path, "input", dict(kwargs)
                    ):
                        # an input's parent is the record that produced it
                        # (an earlier module's output); the module's output
                        # then has its input records as parents
                        producer = self._parents((t,), {})
                        rid = self._record(module_path, module, name, t, parents=producer)
                        if rid is not None:
                            call_inputs.append((rid, name))
                finally:
                    self._call_inputs.setdefault(id(module), []).append(call_inputs)
                    self._busy = busy
            return None

        return pre_hook

    def _make_hook(self, module_path: str, is_root: bool):
        def hook(module, args, output):
            busy, self._busy = self._busy, True  # ops=True: the recording is no op
            try:
                if self.outputs and output is not None:
                    # computed from the call's inputs: their records (or,
                    # with inputs=False, the records that produced them)
                    calls = self._call_inputs.get(id(module))
                    parents = calls.pop() if calls else self._parents(tuple(args), {})
                    for name, t in self._names(module_path, "output", output):
                        rid = self._record(module_path, module, name, t, parents=parents)
                        self._remember(t, rid, name)
            finally:
                self._busy = busy
                if is_root:
                    self._depth = max(self._depth - 1, 0)
                    if self._depth == 0:
                        self._current_step = None
            return None

        return hook

    def __enter__(self) -> "Capture":
        import tracedump

        self.writer = tracedump.Writer(self.path, **self.writer_options, **self.run_metadata)
        try:
            for module_path, module in self.model.named_modules():
                is_root = module is self.model and module_path == ""
                # the pre-hook always runs on the root: it counts the steps
                if self.inputs or is_root:
                    self._handles.append(
                        module.register_forward_pre_hook(self._make_pre_hook(module_path, is_root), with_kwargs=True)
                    )
                if self.outputs or is_root:
                    # always_call: the step depth is unwound when forward raises
                    self._handles.append(
                        module.register_forward_hook(self._make_hook(module_path, is_root), always_call=True)
                    )
                if self.ops:
                    # which module's forward is running: first of the
                    # pre-hooks, last of the hooks; the outermost one also
                    # turns the TorchFunctionMode on and off (on for forward only)
                    self._handles.append(
                        module.register_forward_pre_hook(self._make_frame_pre_hook(module_path), prepend=True)
                    )
                    self._handles.append(
                        module.register_forward_hook(self._make_frame_hook(), always_call=True)
                    )
            if self.ops:
                self._mode = _op_mode_class()(self)
        except BaseException:
            self._remove()
            self.writer.close()
            raise
        return self

    def _remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._remove()
        finally:
            self._depth = 0
            self._current_step = None
            try:
                if self._mode_pushed:  # a forward left by BaseException (KeyboardInterrupt)
                    self._mode_pushed = False
                    self._unpush_mode()
            finally:
                self._frames.clear()
                self._produced.clear()
                self._call_inputs.clear()
                self._busy = False
                if self.writer is not None:
                    self.writer.close()
        if self.skipped:
            names = ", ".join(n for n, _ in self.skipped[:5])
            more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            warnings.warn(
                f"tracedump.capture skipped {len(self.skipped)} tensors it cannot record: {names}{more}", stacklevel=2
            )
        return None

    def __repr__(self) -> str:
        return f"<tracedump.capture {self.path!r}: {self.records} records, {self.step} steps>"


def capture(
    model: Any,
    path: str | os.PathLike[str],
    *,
    include: Patterns = None,
    exclude: Patterns = None,
    stats_only: bool = False,
    inputs: bool = True,
    outputs: bool = True,
    roles: Optional[Dict[str, str]] = None,
    layers: Optional[Sequence[int]] = None,
    steps: Optional[Sequence[int]] = None,
    mode: str = "sync",
    queue_bytes: int = 256 << 20,
    when_full: str = "block",
    preallocate: bool = False,
    ops: bool = False,
    **run_metadata: Any,
) -> Capture:
    """Record the inputs and outputs of every submodule of ``model`` into ``path``.

    Use as a context manager; the hooks live for the ``with`` block only.

    include / exclude: a regex (or a list of them) searched in each record's
        name; a record is written when it matches some ``include`` (all do
        when ``include`` is None) and no ``exclude``.
    stats_only: write statistics (``Writer.add_stats``) instead of the values.
    inputs / outputs: record the modules' arguments / results.
    roles: ``{regex: role}``; the first regex found in a record's name gives
        its role (``{r"self_attn\\.q_norm$": "q"}``).
    layers / steps: record only these layers (modules outside any layer, such
        as the embedding and the head, are kept) / these forward calls.
    mode, queue_bytes, when_full, preallocate: the :class:`tracedump.Writer`
        options; ``mode="background"`` leaves the file I/O to a writer thread.
    ops: also record every floating-point tensor a torch function returns
        inside a module's forward (``<module path>/<op>/<k>``: RoPE, scores,
        softmax, the SwiGLU product ...), through a
        ``torch.overrides.TorchFunctionMode`` active during the forward; see
        the module's docstring.
    run_metadata: the trace's run metadata (``engine``, ``model`` ... are
        filled in when not given).
    """
    return Capture(
        model,
        path,
        include=include,
        exclude=exclude,
        stats_only=stats_only,
        inputs=inputs,
        outputs=outputs,
        roles=roles,
        layers=layers,
        steps=steps,
        mode=mode,
        queue_bytes=queue_bytes,
        when_full=when_full,
        preallocate=preallocate,
        ops=ops,
        **run_metadata,
    )
