"""Traces from many processes: a directory of per-rank shards read as one, by
Python and by the CLI (inspect, verify, diff rank by rank, Parquet with a
rank column)."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import tracedump

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def write_run(d: Path, bug_on_rank=None):
    d.mkdir()
    for rank in range(2):
        with tracedump.Writer(d / f"rank{rank}.tdump", rank=rank, world_size=2) as w:
            for layer in range(3):
                x = np.full((4, 8), rank * 10 + layer, np.float32)
                if rank == bug_on_rank and layer == 2:
                    x[1, 3] += 1.0
                w.add(f"attn_out-{layer}", x, layer=layer)
            w.add(f"only_rank{rank}", np.arange(5, dtype=np.float32))
    return d


@pytest.fixture
def runs(tmp_path):
    return write_run(tmp_path / "a", bug_on_rank=1), write_run(tmp_path / "b")


def test_open_a_directory_as_one_trace(runs):
    a, _ = runs
    t = tracedump.open(a)
    assert isinstance(t, tracedump.ShardedTrace) and t.ranks == [0, 1]
    assert len(t) == 8
    names = t.names()
    assert "rank0/attn_out-0" in names and "rank1/attn_out-2" in names
    assert "only_rank0" in names and "only_rank1" in names  # unique names stay as they are
    np.testing.assert_array_equal(t["rank1/attn_out-1"].numpy(), np.full((4, 8), 11, np.float32))
    assert t["only_rank1"].numpy().tolist() == [0, 1, 2, 3, 4]
    assert {r: v.ok for r, v in t.verify().items()} == {0: True, 1: True}
    assert t.metadata[1]["world_size"] == 2 and not t.warnings
    assert len(t.filter(layer=2)) == 2 and len(t.filter(layer=2, rank=0)) == 1
    # a glob opens the same shards
    g = tracedump.open(str(a / "rank*.tdump"))
    assert g.ranks == [0, 1] and len(g) == 8
    with pytest.raises(tracedump.TraceNotFoundError):
        t["attn_out-0"]  # ambiguous without a rank


def test_compare_rank_by_rank(runs):
    a, b = runs
    res = tracedump.compare(a, b)
    assert sorted(res) == [0, 1]
    assert res[0].agrees and not res[1].agrees
    assert res[1].first_divergence["key"] == "attn_out-2"


def cli(*args, ok=(0,)):
    exe = TARGET / "debug" / "tracedump"
    assert exe.exists(), f"{exe}: `make debug-build` makes it"
    r = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
    assert r.returncode in ok, r.stdout + r.stderr
    return r.stdout


def test_cli_reads_shards(runs, tmp_path):
    a, b = runs
    out = cli("inspect", a)
    assert "rank 0" in out and "rank 1" in out and "== rank 1:" in out and "only_rank1" in out
    assert "world_size 2" in out
    out = cli("verify", a)
    assert out.count(": OK") == 2
    out = cli("diff", a, b, ok=(1,))
    assert "rank 0    4 pairs, 0 divergent" in out
    assert "rank 1    4 pairs, 1 divergent, first divergence: attn_out-2" in out
    assert "== rank 1 ==" in out and "== rank 0 ==" not in out
    # one Parquet table for the run, with a rank column
    import pyarrow.parquet as pq

    cli("export", a, "--to", "parquet", tmp_path / "t.parquet")
    rows = pq.read_table(tmp_path / "t.parquet").to_pylist()
    assert sorted({(r["rank"], r["name"]) for r in rows}) == sorted(
        [(r, f"attn_out-{l}") for r in (0, 1) for l in range(3)] + [(0, "only_rank0"), (1, "only_rank1")]
    )
    assert all(r["file"].endswith(f"rank{r['rank']}.tdump") for r in rows)
