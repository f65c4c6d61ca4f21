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
from collections.abc import Mapping as _Mapping

from ._tracedump import compare as _compare
from ._tracedump import open as _open
from . import ggml, reference
from .capture import capture
from .shards import ShardedTrace, compare_by_rank, is_sharded


# a read-only mapping, as the stubs say (iteration gives keys)
_Mapping.register(Trace)


def open(path, *, copy=None):
    """Open a trace (``.tdump``), a GGUF file, or a sharded trace (a
    directory or glob of per-rank traces: a :class:`ShardedTrace`). ``copy``:
    see :class:`Trace` (read into memory, the default up to 64 MiB)."""
    if is_sharded(path):
        return ShardedTrace(path, copy=copy)
    return _open(path, copy=copy)


def compare(a, b, rules=None, atol=1e-3, rtol=1e-2, min_cosine=0.999):
    """Compare run ``a`` (under test) against run ``b`` (the reference); see
    ``DiffResult``. Sharded runs are compared rank by rank: ``{rank: DiffResult}``."""
    def sharded(x):
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
