"""Type stubs of the compiled module (re-exported by `tracedump`)."""

from __future__ import annotations

import os
from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, Sequence, ValuesView
from typing import Any, Literal, TypedDict

import numpy as np

__version__: str
# (file name, text) of the ggml adapter's C sources, embedded from trace-writer
_GGML_ADAPTER_SOURCES: list[tuple[str, str]]

StrPath = str | os.PathLike[str]

class TraceError(Exception):
    """Base class of every error tracedump raises."""

class TraceIOError(TraceError, OSError):
    """The file could not be opened, mapped or written (also an OSError:
    `errno`, `strerror` and `filename` are set where known)."""

class TraceFileNotFoundError(TraceIOError, FileNotFoundError):
    """The file does not exist (also a FileNotFoundError)."""

class TracePermissionError(TraceIOError, PermissionError):
    """The file may not be read or written (also a PermissionError)."""

class TraceFormatError(TraceError):
    """Not a readable trace or GGUF, or a malformed record in it."""

class TraceLayoutError(TraceError):
    """A tensor's layout is invalid or reaches outside its storage."""

class TraceNotFoundError(TraceError, KeyError):
    """No tensor has this name (or the occurrence asked for does not exist)."""

class TraceUnsupportedError(TraceError):
    """The tensor cannot do what was asked (values of a stats-only tensor, …)."""

class TraceWriteError(TraceError):
    """The writer refused a record."""

class Op(TypedDict, total=False):
    op: Literal[
        "view", "permute", "reshape", "transpose", "cont", "convert", "quantize", "dequantize", "concat"
    ]
    offset: int
    shape: list[int]
    byte_strides: list[int]
    axes: list[int]
    a: int
    b: int
    dtype: str
    axis: int

class Parent(TypedDict):
    id: int
    name: str | None

class Ggml(TypedDict):
    ne: list[int]
    nb: list[int]

class Stats(TypedDict):
    count: int
    nan_count: int
    inf_count: int
    min: float
    max: float
    mean: float
    std: float
    abs_max: float
    l2_norm: float
    bytes_crc32c: int | None

class Fault(TypedDict):
    record: int | None
    tensor: str | None
    offset: int
    message: str

def open(path: StrPath, *, copy: bool | None = None) -> Trace:
    """Open a `.tdump` trace or a `.gguf` file: read into memory (copy=True,
    the default for files up to 64 MiB) or memory-mapped read-only."""

def _describe(
    t: Any,
) -> tuple[str, list[int], list[int], int, int, int, bool]:
    """What the writer reads of `t` (for the tests): dtype, shape, byte
    strides, offset of element 0, storage address, storage bytes, read in
    Rust."""
    ...

def _shard_files(path: StrPath) -> list[str]: ...
def _is_sharded(path: StrPath) -> bool: ...

def compare(
    a: Trace | StrPath,
    b: Trace | StrPath,
    rules: None | str | Sequence[str | tuple[str, str]] | Mapping[str, str] = None,
    atol: float = 1e-3,
    rtol: float = 1e-2,
    min_cosine: float = 0.999,
) -> DiffResult:
    """Compare run `a` (under test) against run `b` (the reference)."""

def report(
    a: Trace | StrPath,
    b: Trace | StrPath,
    path: StrPath,
    rules: None | str | Sequence[str | tuple[str, str]] | Mapping[str, str] = None,
    atol: float = 1e-3,
    rtol: float = 1e-2,
    min_cosine: float = 0.999,
) -> DiffResult:
    """Compare as `compare` does and write the self-contained HTML divergence report to `path`."""

class Trace(Mapping[str, Tensor]):
    """A read-only mapping from keys (names; `name#k` for a repeated name's
    later occurrences) to tensors, in record order."""
    def __init__(self, path: StrPath, *, copy: bool | None = None) -> None: ...
    @property
    def path(self) -> str: ...
    @property
    def copied(self) -> bool: ...
    @property
    def metadata(self) -> dict[str, Any]: ...
    @property
    def version(self) -> tuple[int, int]: ...
    @property
    def is_finished(self) -> bool: ...
    @property
    def is_gguf(self) -> bool: ...
    @property
    def torn_tail(self) -> dict[str, Any] | None: ...
    @property
    def warnings(self) -> list[str]: ...
    @property
    def closed(self) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[str]: ...
    def __getitem__(self, key: str | int) -> Tensor: ...
    def __contains__(self, key: object) -> bool: ...
    def keys(self) -> KeysView[str]: ...
    def values(self) -> ValuesView[Tensor]: ...
    def items(self) -> ItemsView[str, Tensor]: ...
    # get(key, default=None): Mapping's
    def find(self, name: str) -> list[Tensor]: ...
    def names(self) -> list[str]: ...
    def filter(
        self,
        regex: str | None = None,
        layer: int | None = None,
        step: int | None = None,
        role: str | None = None,
    ) -> list[Tensor]: ...
    def verify(self) -> VerifyReport: ...
    def export(
        self,
        path: StrPath,
        *,
        to: Literal["safetensors", "npz"] = "safetensors",
        regex: str | None = None,
        layer: int | None = None,
        step: int | None = None,
        role: str | None = None,
    ) -> dict[str, Any]: ...
    def close(self) -> None: ...
    def __enter__(self) -> Trace: ...
    def __exit__(self, *args: object) -> bool: ...
    def _repr_html_(self) -> str: ...

class Tensor:
    @property
    def name(self) -> str: ...
    @property
    def id(self) -> int: ...
    @property
    def occurrence(self) -> int: ...
    @property
    def dtype(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def ndim(self) -> int: ...
    @property
    def numel(self) -> int: ...
    @property
    def byte_strides(self) -> tuple[int, ...]: ...
    @property
    def strides(self) -> tuple[int, ...] | None: ...
    @property
    def storage_offset(self) -> int: ...
    @property
    def storage(self) -> int | None: ...
    @property
    def is_contiguous(self) -> bool: ...
    @property
    def is_stats_only(self) -> bool: ...
    @property
    def is_derived(self) -> bool: ...
    @property
    def is_quantized(self) -> bool: ...
    @property
    def layer(self) -> int | None: ...
    @property
    def step(self) -> int | None: ...
    @property
    def role(self) -> str | None: ...
    @property
    def lineage(self) -> list[Op]: ...
    @property
    def parents(self) -> list[Parent]: ...
    @property
    def engine_op(self) -> dict[str, Any] | None: ...
    @property
    def ggml(self) -> Ggml | None: ...
    @property
    def metadata(self) -> dict[str, Any]: ...
    @property
    def stats(self) -> Stats | None: ...
    def compute_stats(self) -> Stats: ...
    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray: ...
    def __dlpack__(
        self,
        *,
        stream: Any = None,
        max_version: tuple[int, int] | None = None,
        dl_device: tuple[int, int] | None = None,
        copy: bool | None = None,
    ) -> Any: ...
    def __dlpack_device__(self) -> tuple[int, int]: ...
    def numpy(self) -> np.ndarray:
        """Zero-copy, read-only, with the true byte strides (quantized/derived: f32 copy)."""
    def torch(self) -> Any:
        """A torch.Tensor: zero-copy over a private copy-on-write map where torch can
        describe the layout, else a copy."""
    def materialize(self, dtype: str | None = None) -> np.ndarray: ...
    def to_f32(self) -> np.ndarray: ...
    def raw(self) -> np.ndarray:
        """The stored bytes the view spans, as a read-only uint8 array (no copy)."""
    def _repr_html_(self) -> str: ...

class VerifyReport:
    @property
    def ok(self) -> bool: ...
    @property
    def faults(self) -> list[Fault]: ...
    @property
    def records(self) -> int: ...
    @property
    def tensors(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def lineages_replayed(self) -> int: ...
    @property
    def values_unchecked(self) -> int: ...
    def __bool__(self) -> bool: ...

class DiffResult:
    @property
    def pairs(self) -> list[dict[str, Any]]: ...
    @property
    def first_divergence(self) -> dict[str, Any] | None: ...
    @property
    def first_divergence_index(self) -> int | None: ...
    @property
    def blamed(self) -> list[dict[str, Any]]: ...
    def diagnosis(self, pair: int | str) -> list[dict[str, Any]]: ...
    @property
    def agrees(self) -> bool: ...
    @property
    def only_in_a(self) -> list[str]: ...
    @property
    def unpaired(self) -> list[dict[str, Any]]: ...
    @property
    def only_in_b(self) -> list[str]: ...
    @property
    def unreadable(self) -> list[str]: ...
    @property
    def layers(self) -> list[dict[str, Any]]: ...
    @property
    def tolerance(self) -> dict[str, float]: ...
    def to_pandas(self) -> Any: ...
    def _repr_html_(self) -> str: ...
    def __len__(self) -> int: ...

class Writer:
    def __init__(
        self,
        path: StrPath,
        *,
        mode: Literal["sync", "background"] = "sync",
        queue_bytes: int = ...,
        when_full: Literal["block", "drop"] = "block",
        preallocate: bool = False,
        include: str | None = None,
        layers: Iterable[int] | None = None,
        steps: Iterable[int] | None = None,
        **run_metadata: Any,
    ) -> None: ...
    @property
    def path(self) -> str: ...
    @property
    def dropped(self) -> int: ...
    def wants(self, name: str, *, layer: int | None = None, step: int | None = None) -> bool: ...
    @property
    def closed(self) -> bool: ...
    def add(
        self,
        name: str,
        tensor: Any,
        *,
        layer: int | None = None,
        step: int | None = None,
        role: str | None = None,
        lineage: None | Literal["auto"] | Mapping[str, Any] = None,
        ggml: tuple[Sequence[int], Sequence[int]] | None = None,
        **metadata: Any,
    ) -> int | None: ...
    def add_stats(
        self,
        name: str,
        tensor: Any,
        *,
        layer: int | None = None,
        step: int | None = None,
        role: str | None = None,
        **metadata: Any,
    ) -> int | None: ...
    def add_quantized(
        self,
        name: str,
        values: Any,
        dtype: Literal["q8_0", "q4_0"] = "q8_0",
        *,
        layer: int | None = None,
        step: int | None = None,
        role: str | None = None,
        **metadata: Any,
    ) -> int | None: ...
    def add_derived(
        self,
        name: str,
        shape: Sequence[int],
        parents: Sequence[int | str],
        ops: Sequence[Op],
        dtype: str = "f32",
        *,
        layer: int | None = None,
        step: int | None = None,
        role: str | None = None,
        **metadata: Any,
    ) -> int | None: ...
    def flush(self) -> None: ...
    def close(self) -> dict[str, int] | None: ...
    def __enter__(self) -> Writer: ...
    def __exit__(self, *args: object) -> bool: ...

class MappedBytes:
    """Bytes of a trace file described to numpy (`__array_interface__`); the
    `base` of every zero-copy array, keeping the mapping alive."""

    @property
    def __array_interface__(self) -> dict[str, Any]: ...
    @property
    def copy_on_write(self) -> bool: ...
