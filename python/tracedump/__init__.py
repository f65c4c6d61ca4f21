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
    TraceFormatError,
    TraceIOError,
    TraceLayoutError,
    TraceNotFoundError,
    TraceUnsupportedError,
    TraceWriteError,
    VerifyReport,
    Writer,
    __version__,
    compare,
    report,
    open,
)
from . import ggml, reference
from .capture import capture

__all__ = [
    "DiffResult",
    "MappedBytes",
    "Tensor",
    "Trace",
    "TraceError",
    "TraceFormatError",
    "TraceIOError",
    "TraceLayoutError",
    "TraceNotFoundError",
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
]
