"""Parquet tables from the CLI (`export --to parquet`, `diff --parquet`),
read back with pyarrow and with DuckDB, checked against the traces read with
the Python package. Parquet is a default feature of the CLI (make test's
debug build has it)."""

import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import tracedump

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def cli(*args, ok=(0,)):
    exe = TARGET / "debug" / "tracedump"
    assert exe.exists(), f"{exe}: `make debug-build` makes it"
    r = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
    assert r.returncode in ok, r.stderr
    return r


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pq")
    a, b = tmp / "demo.tdump", tmp / "demo.reference.tdump"
    cli("demo", a)
    cli("export", a, "--to", "parquet", tmp / "tensors.parquet", "--values-max", "1024")
    cli("diff", a, b, "--parquet", tmp / "diff.parquet", ok=(1,))
    return tmp, a, b


def test_tensors_table_with_pyarrow(tables):
    import pyarrow.parquet as pq

    tmp, a, _ = tables
    t = pq.read_table(tmp / "tensors.parquet").to_pylist()
    trace = tracedump.open(a)
    assert len(t) == len(trace)
    by_id = {r["id"]: r for r in t}
    for x in trace.values():
        r = by_id[x.id]
        assert r["name"] == x.name and r["dtype"] == x.dtype
        assert tuple(r["shape"]) == x.shape and tuple(r["byte_strides"]) == x.byte_strides
        assert r["storage_offset"] == x.storage_offset and r["contiguous"] == x.is_contiguous
        assert (r["layer"], r["step"], r["role"]) == (x.layer, x.step, x.role)
        assert [p["id"] for p in x.parents] == r["parents"]
        if x.ggml:
            assert r["ggml_ne"] == x.ggml["ne"] and r["ggml_nb"] == x.ggml["nb"]
        if x.stats is not None:  # stored statistics, verbatim
            assert r["stats_source"] == "stored" and r["mean"] == x.stats["mean"] and r["std"] == x.stats["std"]
        else:  # computed from the values
            v = x.materialize("f64").ravel()
            assert r["stats_source"] == "computed" and r["count"] == v.size
            assert math.isclose(r["mean"], float(v.mean()), rel_tol=1e-9, abs_tol=1e-12)
            assert math.isclose(r["std"], float(v.std()), rel_tol=1e-9, abs_tol=1e-12)
            assert r["max"] == float(v.max()) and r["min"] == float(v.min())
    k = next(r for r in t if r["name"] == "k-0")
    assert "permute(0,2,1,3)" in k["lineage"] and k["engine_op"] == "ggml PERMUTE"


def test_values_table_with_duckdb(tables):
    import duckdb

    tmp, a, _ = tables
    trace = tracedump.open(a)
    con = duckdb.connect()
    small = [x for x in trace.values() if not x.is_stats_only and int(np.prod(x.shape)) <= 1024]
    n = con.sql(f"select count(distinct id), count(*) from '{tmp / 'tensors.values.parquet'}'").fetchall()[0]
    assert n == (len(small), sum(int(np.prod(x.shape)) for x in small))
    x = small[0]
    vals = con.sql(
        f"select value from '{tmp / 'tensors.values.parquet'}' where id = {x.id} order by flat_index"
    ).fetchnumpy()["value"]
    np.testing.assert_array_equal(vals, x.materialize("f64").ravel())
    # the tables join: per-layer means from SQL equal numpy's
    rows = con.sql(
        f"""select t.layer, avg(v.value) as m from '{tmp / 'tensors.values.parquet'}' v
            join '{tmp / 'tensors.parquet'}' t using (id)
            where t.name like 'l_out-%' group by t.layer order by t.layer"""
    ).fetchall()
    for layer, m in rows:
        want = trace[f"l_out-{layer}"].materialize("f64").mean()
        assert math.isclose(m, want, rel_tol=1e-9, abs_tol=1e-12)


def test_diff_table(tables):
    import duckdb
    import pyarrow.parquet as pq

    tmp, a, b = tables
    r = tracedump.compare(a, b)
    t = pq.read_table(tmp / "diff.parquet").to_pylist()
    assert len(t) == len(r.pairs)
    for row, p in zip(t, r.pairs):
        assert row["key"] == p["key"] and row["verdict"] == p["verdict"] and row["divergent"] == p["divergent"]
        for k in ("max_abs", "max_rel", "cosine", "mean_a", "std_b"):
            assert row[k] == p[k] or (row[k] is None and p[k] is None) or (math.isnan(row[k]) and math.isnan(p[k]))
    first = duckdb.sql(f"select key, index from '{tmp / 'diff.parquet'}' where first_divergence").fetchall()
    assert first == [(r.first_divergence["key"], r.first_divergence_index)]
    # blame and diagnosis: the same as Python's, one query away
    for row, p in zip(t, r.pairs):
        assert row["inputs"] == list(p["inputs"]) and row["amplification"] == p["amplification"]
    blamed = duckdb.sql(
        f"select index, likely_cause, likely_cause_evidence from '{tmp / 'diff.parquet'}' where blamed"
    ).fetchall()
    assert blamed == [
        (x["index"], x["diagnosis"][0]["kind"], x["diagnosis"][0]["evidence"]) for x in r.blamed
    ]
    # the demo records its norms' eps: the planted one differs
    assert blamed and blamed[0][1] == "params" and "eps = 0.1 in A" in blamed[0][2]
