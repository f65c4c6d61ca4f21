"""Traces from many processes: a directory (or glob) of shards opened as one.

    trace = tracedump.open("run/")            # run/rank0.tdump, run/rank1.tdump, ...
    trace.ranks                               # [0, 1, ...] from each shard's run metadata
    trace["rank1/attn_out-0"]                 # names that collide are qualified by rank
    trace["logits_rank0_only"]                # a name one shard has keeps its name
    tracedump.compare(trace, "ref_run/")      # {rank: DiffResult}, rank by rank

Each shard is an ordinary trace whose run metadata has ``rank`` and
``world_size`` (``tracedump.Writer(path, rank=r, world_size=n)``); without
``rank``, ranks follow the sorted file names. The same rules as the CLI's
(``trace_reader::shards``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple, Union

if TYPE_CHECKING:
    from ._tracedump import DiffResult, Tensor, Trace, VerifyReport

StrPath = Union[str, "os.PathLike[str]"]

__all__ = ["ShardedTrace", "is_sharded", "shard_files", "compare_by_rank"]


def is_sharded(path: StrPath) -> bool:
    """Whether ``path`` names shards: a directory, or a name with ``*``/``?``
    (the CLI's rule, ``trace_reader::shards::is_sharded``)."""
    from ._tracedump import _is_sharded

    return _is_sharded(os.fspath(path))


def shard_files(path: StrPath) -> List[str]:
    """The shard files, sorted: a directory's ``*.tdump``, or the files a
    ``dir/pattern*`` glob matches (the CLI's rules,
    ``trace_reader::shards::shard_files``; TraceIOError when none)."""
    from ._tracedump import _shard_files

    return _shard_files(os.fspath(path))


class ShardedTrace(Mapping[str, "Tensor"]):
    """Several shard traces read as one (see the module docstring): a
    read-only mapping, as a :class:`Trace` is, from keys (qualified names;
    ``name#k`` for a repeated name's later occurrences) to tensors."""

    def __init__(self, path: StrPath, copy: Optional[bool] = None) -> None:
        from ._tracedump import open as _open

        self.path = os.fspath(path)
        shards = []
        for i, f in enumerate(shard_files(path)):
            t = _open(f, copy=copy)
            rank = t.metadata.get("rank", i)
            shards.append((int(rank), t))
        shards.sort(key=lambda s: s[0])
        self.shards: List[Tuple[int, Trace]] = shards
        self.warnings: List[str] = []
        ranks = [r for r, _ in shards]
        if len(set(ranks)) != len(ranks):
            self.warnings.append(f"repeated ranks: {ranks}")
        for r, t in shards:
            ws = t.metadata.get("world_size")
            if ws is not None and int(ws) != len(shards):
                self.warnings.append(f"{t.path} says world_size {ws}, {len(shards)} shards are here")
        owners: Dict[str, set] = {}
        for r, t in shards:
            for n in t.names():
                owners.setdefault(n, set()).add(r)
        self._names: List[Tuple[str, int, Any]] = []
        self._by_name: Dict[str, List[int]] = {}
        for k, (r, t) in enumerate(shards):
            for x in t.values():
                q = f"rank{r}/{x.name}" if len(owners[x.name]) > 1 else x.name
                self._by_name.setdefault(q, []).append(len(self._names))
                self._names.append((q, k, x.id))

    @property
    def ranks(self) -> List[int]:
        return [r for r, _ in self.shards]

    @property
    def traces(self) -> List[Trace]:
        return [t for _, t in self.shards]

    def shard(self, rank: int) -> Trace:
        """The trace of one rank."""
        for r, t in self.shards:
            if r == rank:
                return t
        raise KeyError(f"{self.path}: no rank {rank} (ranks {self.ranks})")

    @property
    def metadata(self) -> Dict[int, Dict[str, Any]]:
        """Each rank's run metadata."""
        return {r: t.metadata for r, t in self.shards}

    def names(self) -> List[str]:
        """Qualified names, each once, rank by rank."""
        seen, out = set(), []
        for q, _, _ in self._names:
            if q not in seen:
                seen.add(q)
                out.append(q)
        return out

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[str]:
        """The keys, rank by rank, each shard's in record order."""
        seen: Dict[str, int] = {}
        for q, _, _ in self._names:
            n = seen[q] = seen.get(q, -1) + 1
            yield q if n == 0 else f"{q}#{n}"

    def _tensor(self, k: int, rid: int) -> Tensor:
        return self._ids(k)[rid]

    def _ids(self, k: int) -> Dict[int, Tensor]:
        cache = getattr(self, "_id_cache", None)
        if cache is None:
            cache = self._id_cache = {}
        if k not in cache:
            cache[k] = {x.id: x for x in self.shards[k][1].values()}
        return cache[k]

    def __getitem__(self, name: str) -> Tensor:
        hit = self._by_name.get(name)
        if hit is None and "#" in name:
            base, _, n = name.rpartition("#")
            if n.isdigit() and base in self._by_name and int(n) < len(self._by_name[base]):
                hit = [self._by_name[base][int(n)]]
        if not hit:
            from ._tracedump import TraceNotFoundError

            raise TraceNotFoundError(f"{self.path}: no tensor named {name!r}")
        _, k, rid = self._names[hit[0]]
        return self._tensor(k, rid)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self[name]
        except KeyError:
            return False
        return True

    def filter(
        self,
        regex: Optional[str] = None,
        layer: Optional[int] = None,
        step: Optional[int] = None,
        role: Optional[str] = None,
        rank: Optional[int] = None,
    ) -> List[Tensor]:
        out = []
        for r, t in self.shards:
            if rank is None or r == rank:
                out.extend(t.filter(regex=regex, layer=layer, step=step, role=role))
        return out

    def verify(self) -> Dict[int, VerifyReport]:
        """Each rank's VerifyReport."""
        return {r: t.verify() for r, t in self.shards}

    def close(self) -> None:
        for _, t in self.shards:
            t.close()

    def __enter__(self) -> "ShardedTrace":
        return self

    def __exit__(self, *exc: object) -> bool:
        self.close()
        return False

    def __repr__(self) -> str:
        return f"ShardedTrace({self.path!r}, ranks={self.ranks}, {len(self)} tensors)"


def compare_by_rank(a: ShardedTrace | StrPath, b: ShardedTrace | StrPath, **kwargs: Any) -> Dict[int, DiffResult]:
    """``{rank: DiffResult}``: rank r of ``a`` against rank r of ``b``."""
    from ._tracedump import compare as _compare

    a = a if isinstance(a, ShardedTrace) else ShardedTrace(a)
    b = b if isinstance(b, ShardedTrace) else ShardedTrace(b)
    out = {}
    for r in sorted(set(a.ranks) | set(b.ranks)):
        if r in a.ranks and r in b.ranks:
            out[r] = _compare(a.shard(r), b.shard(r), **kwargs)
    missing = sorted(set(a.ranks) ^ set(b.ranks))
    if missing:
        from ._tracedump import TraceNotFoundError

        raise TraceNotFoundError(f"ranks {missing} are in only one of the runs")
    return out
