"""tracedump: read and write tensor traces.

    >>> import tracedump
    >>> with tracedump.open("run.tdump") as trace:
    ...     k = trace["k-0"]
    ...     k.shape, k.byte_strides, k.lineage
    ...     a = k.numpy()         # zero-copy, the engine's true strides
    ...     t = k.torch()         # zero-copy over a private copy-on-write map

Everything is implemented in Rust (the `trace-reader` and `trace-writer`
crates); this package is a thin binding (`tracedump._tracedump`) plus the
small helpers below.
"""

from __future__ import annotations

import os
from collections.abc import Mapping as _Mapping
from collections.abc import Sequence as _Sequence
from typing import Any, Union, overload

from ._tracedump import (
    DiffResult,
    MappedBytes,
    Tensor,
    Trace,
    TraceError,
    TraceFileNotFoundError,
    TraceFormatError,
    TraceIOError,
    TraceLayoutError,
    TraceNotFoundError,
    TracePermissionError,
    TraceUnsupportedError,
    TraceWriteError,
    VerifyReport,
    Writer,
    __version__,
    report,
)
from ._tracedump import compare as _compare
from ._tracedump import open as _open
from . import ggml, reference
from .capture import capture
from .shards import ShardedTrace, compare_by_rank, is_sharded


# a read-only mapping, as the stubs say (iteration gives keys)
_Mapping.register(Trace)


#: A path: ``str`` or ``os.PathLike[str]``.
StrPath = Union[str, "os.PathLike[str]"]
#: Rename rules of :func:`compare`: a preset name, ``"PATTERN => REPLACEMENT"``
#: lines, ``(pattern, replacement)`` pairs, or a ``{pattern: replacement}`` dict.
Rules = Union[None, str, _Sequence[Union[str, "tuple[str, str]"]], _Mapping[str, str]]


def open(path: StrPath, *, copy: bool | None = None) -> Trace | ShardedTrace:
    """Open a trace (``.tdump``), a GGUF file, or a sharded trace (a
    directory or glob of per-rank traces: a :class:`ShardedTrace`). ``copy``:
    see :class:`Trace` (read into memory, the default up to 64 MiB)."""
    if is_sharded(path):
        return ShardedTrace(path, copy=copy)
    return _open(path, copy=copy)


@overload
def compare(
    a: Trace,
    b: Trace,
    rules: Rules = None,
    atol: float = 1e-3,
    rtol: float = 1e-2,
    min_cosine: float = 0.999,
) -> DiffResult: ...
@overload
def compare(
    a: ShardedTrace,
    b: ShardedTrace | StrPath,
    rules: Rules = None,
    atol: float = 1e-3,
    rtol: float = 1e-2,
    min_cosine: float = 0.999,
) -> dict[int, DiffResult]: ...
@overload
def compare(
    a: Trace | ShardedTrace | StrPath,
    b: Trace | ShardedTrace | StrPath,
    rules: Rules = None,
    atol: float = 1e-3,
    rtol: float = 1e-2,
    min_cosine: float = 0.999,
) -> DiffResult | dict[int, DiffResult]: ...
def compare(
    a: Trace | ShardedTrace | StrPath,
    b: Trace | ShardedTrace | StrPath,
    rules: Rules = None,
    atol: float = 1e-3,
    rtol: float = 1e-2,
    min_cosine: float = 0.999,
) -> DiffResult | dict[int, DiffResult]:
    """Compare run ``a`` (under test) against run ``b`` (the reference); see
    ``DiffResult``. Sharded runs are compared rank by rank: ``{rank: DiffResult}``."""
    def sharded(x: Any) -> bool:
        return isinstance(x, ShardedTrace) or (not isinstance(x, Trace) and is_sharded(x))

    if sharded(a) or sharded(b):
        return compare_by_rank(a, b, rules=rules, atol=atol, rtol=rtol, min_cosine=min_cosine)
    return _compare(a, b, rules=rules, atol=atol, rtol=rtol, min_cosine=min_cosine)

__all__ = [
    "DiffResult",
    "MappedBytes",
    "Tensor",
    "Trace",
    "TraceError",
    "TraceFileNotFoundError",
    "TraceFormatError",
    "TraceIOError",
    "TraceLayoutError",
    "TraceNotFoundError",
    "TracePermissionError",
    "TraceUnsupportedError",
    "TraceWriteError",
    "VerifyReport",
    "StrPath",
    "Rules",
    "Writer",
    "__version__",
    "capture",
    "compare",
    "report",
    "open",
    "reference",
    "ShardedTrace",
    "compare_by_rank",
    "ggml",
]
