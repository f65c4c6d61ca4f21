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

Hooks are removed and the trace closed when the ``with`` block ends, also when
it ends with an exception.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Dict, List, Optional, Pattern, Sequence, Union

__all__ = ["capture", "Capture", "layer_of"]

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

    def _record(self, module_path: str, module, name: str, tensor) -> None:
        import torch

        if not self.wants(name):
            return
        layer = layer_of(module_path)
        if self.layers is not None and layer is not None and layer not in self.layers:
            return
        if self.steps is not None and self._current_step is not None and self._current_step not in self.steps:
            return
        t = tensor.detach()
        if t.layout != torch.strided or t.device.type == "meta" or t.dtype not in _supported_dtypes():
            self.skipped.append((name, f"no trace dtype/layout for {t.dtype} {t.layout} on {t.device}"))
            return
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
        if self.stats_only:
            self.writer.add_stats(name, t, **kwargs)
        else:
            self.writer.add(name, t, module=module_path, module_type=type(module).__name__, **kwargs)
        self.records += 1

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
                for name, t in self._names(module_path, "input", tuple(args)):
                    self._record(module_path, module, name, t)
                for name, t in self._names(module_path, "input", dict(kwargs)):
                    self._record(module_path, module, name, t)
            return None

        return pre_hook

    def _make_hook(self, module_path: str, is_root: bool):
        def hook(module, args, output):
            try:
                if self.outputs and output is not None:
                    for name, t in self._names(module_path, "output", output):
                        self._record(module_path, module, name, t)
            finally:
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
        **run_metadata,
    )
