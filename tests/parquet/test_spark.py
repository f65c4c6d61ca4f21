"""The README's cluster example, run as written: a 4-rank sharded run with a
bug planted on two ranks is exported to Parquet by the README's shell lines,
then the README's DuckDB query and its Spark query (PySpark in local mode,
installed by `make spark`) read the tables, and each rank's first divergence
must be the one `tracedump diff --json` names for that rank's pair of files.
Spark also has to read every column of every table with the values pyarrow
reads and with no type it cannot compute on (unsigned INT64 comes back as
decimal(20,0))."""

import json
import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

import tracedump

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
EXE = TARGET / "debug" / "tracedump"
RANKS = 4
# the planted bugs: rank -> (layer, tensor); ranks 0 and 2 agree
BUGS = {1: (2, "attn_out"), 3: (0, "attn_norm")}


def readme_block(lang, first_line):
    """The README's fenced `lang` block that begins with `first_line`."""
    text = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(rf"```{lang}\n(.*?)```", text, re.S) if b.startswith(first_line)]
    assert len(blocks) == 1, f"README.md: one ```{lang} block starting {first_line!r}"
    return blocks[0]


def write_run(d, bugs):
    """Four ranks of three layers: f32, f16 with ggml ne/nb, a permuted view,
    q8_0 blocks and stats-only records; a bug adds 1.0 to one element."""
    d.mkdir(parents=True)
    for rank in range(RANKS):
        rng = np.random.default_rng(rank)
        with tracedump.Writer(d / f"rank{rank}.tdump", rank=rank, world_size=RANKS, engine="test") as w:
            for layer in range(3):
                x = {n: rng.standard_normal((2, 4, 8)).astype(np.float32) for n in ("attn_norm", "attn_out", "ffn")}
                if bugs.get(rank, (None,))[0] == layer:
                    x[bugs[rank][1]][1, 2, 3] += 1.0
                w.add(f"attn_norm-{layer}", x["attn_norm"], layer=layer, role="norm")
                h = x["attn_out"].astype(np.float16)
                w.add(f"attn_out-{layer}", h, layer=layer, ggml=([8, 4, 2, 1], [2, 16, 64, 128]))
                w.add(f"k-{layer}", x["attn_out"].transpose(1, 0, 2), layer=layer)
                w.add_quantized(f"ffn_down-{layer}", x["ffn"].reshape(2, 32), "q8_0", layer=layer)
                w.add_stats(f"ffn_out-{layer}", x["ffn"], layer=layer)
            w.add("result_output", rng.standard_normal(16).astype(np.float32))


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    """One local SparkSession for the module (2 cores, no UI, 2 shuffle
    partitions), its scratch (local dir, warehouse, ivy, java.io.tmpdir)
    under the test's tmp dir, started in `home` so that the README's
    relative paths resolve there."""
    from pyspark.sql import SparkSession

    home = tmp_path_factory.mktemp("spark")
    scratch = home / "scratch"
    scratch.mkdir()
    cwd = os.getcwd()
    os.chdir(home)  # the JVM resolves relative paths against the directory it starts in
    try:
        s = (
            SparkSession.builder.master("local[2]")
            .appName("tracedump-readme")
            .config("spark.ui.enabled", "false")
            .config("spark.driver.bindAddress", "127.0.0.1")  # no network needed, none looked up
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", "2")
            .config("spark.local.dir", str(scratch))
            .config("spark.sql.warehouse.dir", str(home / "warehouse"))
            .config("spark.jars.ivy", str(home / "ivy"))
            # a JVM that lives a minute: the C1 compiler only and the serial
            # collector start it in half the time; no perf data file in /tmp
            .config(
                "spark.driver.extraJavaOptions",
                f"-Djava.io.tmpdir={scratch} -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -XX:-UsePerfData",
            )
            .getOrCreate()
        )
    finally:
        os.chdir(cwd)
    s.sparkContext.setLogLevel("ERROR")
    yield s, home
    s.stop()


@pytest.fixture(scope="module")
def runs(spark):
    """runs/7 (the bugs) and ref/ written, and the README's shell lines run on them."""
    _, home = spark
    assert EXE.exists(), f"{EXE}: `make debug-build` makes it"
    write_run(home / "runs" / "7", BUGS)
    write_run(home / "ref", {})
    env = {**os.environ, "PATH": f"{EXE.parent}{os.pathsep}{os.environ['PATH']}"}
    sh = readme_block("sh", "tracedump export runs/7/")
    r = subprocess.run(["bash", "-c", sh], cwd=home, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr  # the loop ends on rank 3's diff, which diverges
    for rank in range(RANKS):
        assert (home / "runs" / "7" / f"diff-rank{rank}.parquet").exists()
    # what `tracedump diff` says of each rank's pair of files
    want = {}
    for rank in range(RANKS):
        a, b = home / "runs" / "7" / f"rank{rank}.tdump", home / "ref" / f"rank{rank}.tdump"
        d = subprocess.run([str(EXE), "diff", str(a), str(b), "--json"], capture_output=True, text=True)
        assert d.returncode == (1 if rank in BUGS else 0), d.stderr
        want[rank] = json.loads(d.stdout)
    return home, want


def test_the_readme_spark_query_finds_each_ranks_first_divergence(spark, runs):
    s, _ = spark
    home, want = runs
    ns = {"spark": s}
    exec(readme_block("python", "# Spark"), ns)
    got = {
        r["rank"]: (r["file_a"], r["index"], r["key"], r["layer"]) for r in ns["first"].collect()
    }
    expect = {}
    for rank, d in want.items():
        i = d["first_divergence"]
        if i is None:
            continue
        expect[rank] = (f"runs/7/rank{rank}.tdump", i, d["pairs"][i]["key"], BUGS[rank][0])
    assert sorted(expect) == sorted(BUGS)
    assert got == expect
    assert got[1][2] == "attn_out-2" and got[3][2] == "attn_norm-0"
    assert [r["rank"] for r in ns["first"].collect()] == [1, 3]  # ordered by file
    # every rank's std by layer: the mean of the statistics the package reads
    trace = tracedump.open(home / "runs" / "7")
    per = {}
    for rank in trace.ranks:
        for x in trace.shard(rank).values():
            st = x.stats["std"] if x.stats is not None else float(x.materialize("f64").std())
            per.setdefault((rank, x.layer), []).append(st)
    rows = ns["std"].collect()
    assert len(rows) == len(per) == RANKS * 4  # three layers and the layerless output
    for r in rows:
        assert math.isclose(r["avg(std)"], float(np.mean(per[(r["rank"], r["layer"])])), rel_tol=1e-12)


def test_the_readme_duckdb_query_agrees(runs):
    import duckdb

    home, _ = runs
    sql = readme_block("sql", "-- DuckDB").split("\n", 1)[1]
    cwd = os.getcwd()
    os.chdir(home)
    try:
        rows = duckdb.sql(sql).fetchall()
    finally:
        os.chdir(cwd)
    assert sorted(rows) == [(f"runs/7/rank{r}.tdump", BUGS[r][0]) for r in sorted(BUGS)]


def test_spark_reads_every_column_as_pyarrow_does(spark, runs):
    import pyarrow.parquet as pq

    s, _ = spark
    home, _ = runs
    tables = {
        "runs/7/tensors.parquet": ("file", "id"),
        "runs/7/diff-rank1.parquet": ("index",),
    }
    cli = [str(EXE), "export", "runs/7", "--to", "parquet", "-o", "runs/7/all.parquet", "--values-max", "64"]
    subprocess.run(cli, cwd=home, check=True, capture_output=True)
    tables["runs/7/all.values.parquet"] = ("file", "id", "flat_index")
    for path, order in tables.items():
        df = s.read.parquet(path)
        types = dict(df.dtypes)
        # integers are bigint (or arrays of it), never decimal(20,0)
        assert not [c for c, t in types.items() if "decimal" in t], (path, types)
        want = pq.read_table(home / path)
        assert df.columns == want.column_names
        for f in want.schema:
            if str(f.type) == "int64":
                assert types[f.name] == "bigint", (path, f.name)
            elif str(f.type).startswith("list<"):
                assert types[f.name] == "array<bigint>", (path, f.name)
        got = [r.asDict() for r in df.orderBy(*order).collect()]
        ref = want.sort_by([(c, "ascending") for c in order]).to_pylist()
        assert len(got) == len(ref) > 0
        for g, w in zip(got, ref):
            for k, v in w.items():
                same = g[k] == v or (isinstance(v, float) and math.isnan(v) and math.isnan(g[k]))
                assert same, (path, k, g[k], v)
