"""Hostile files (random bytes, truncations, flipped bits, bad GGUF) are
opened and read **in a subprocess**: every failure must be a TraceError
subclass; no panic (pyo3's PanicException), no other exception, no crash."""

import json
import random
import struct
import subprocess
import sys
import textwrap

import pytest

# Opens every file, reads every tensor every way, prints one JSON line.
PROBE = textwrap.dedent(
    r"""
    import json, sys
    import tracedump
    try:
        import torch
    except ImportError:
        torch = None

    out = {"files": 0, "trace_errors": 0, "other": []}

    def attempt(label, f):
        try:
            f()
        except tracedump.TraceError:
            out["trace_errors"] += 1
        except BaseException as e:  # PanicException is a BaseException
            out["other"].append(f"{label}: {type(e).__name__}: {e}")

    def read_all(path):
        t = tracedump.open(path)
        len(t); t.metadata; t.names(); t.verify(); repr(t); t._repr_html_()
        for i in range(len(t)):
            def one(i=i):
                x = t[i]
                for attr in ("name", "dtype", "shape", "byte_strides", "strides", "lineage",
                             "parents", "ggml", "metadata", "stats", "storage_offset"):
                    getattr(x, attr)
                repr(x); x._repr_html_()
                for m in ("numpy", "raw", "materialize", "to_f32") + (("torch",) if torch else ()):
                    attempt(f"{path}[{i}].{m}", lambda m=m: getattr(x, m)())
            attempt(f"{path}[{i}]", one)
        attempt(f"{path} compare", lambda: tracedump.compare(t, t))

    for path in sys.argv[1:]:
        out["files"] += 1
        attempt(path, lambda: read_all(path))
    print(json.dumps(out))
    """
)


def probe(paths):
    r = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, paths)], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, f"probe crashed (rc {r.returncode}):\n{r.stderr[-3000:]}"
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["other"] == [], "\n".join(res["other"][:20])
    assert res["files"] == len(paths)
    return res


def test_random_bytes_and_empty_files(tmp_path):
    rng = random.Random(7)
    paths = []
    for i, n in enumerate([0, 1, 7, 64, 100, 1000, 5000]):
        p = tmp_path / f"rand{i}.tdump"
        p.write_bytes(bytes(rng.randrange(256) for _ in range(n)))
        paths.append(p)
    (tmp_path / "magic.tdump").write_bytes(b"TDUMP\x00\x00\x00" + b"\xff" * 200)
    paths.append(tmp_path / "magic.tdump")
    res = probe(paths)
    assert res["trace_errors"] >= len(paths) - 1


def test_truncated_and_bit_flipped_traces(demo, tmp_path):
    data = demo[0].read_bytes()
    rng = random.Random(11)
    paths = []
    for i, cut in enumerate(sorted(rng.sample(range(1, len(data)), 40))):
        p = tmp_path / f"cut{i}.tdump"
        p.write_bytes(data[:cut])
        paths.append(p)
    for i in range(40):
        b = bytearray(data)
        for _ in range(rng.randrange(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        p = tmp_path / f"flip{i}.tdump"
        p.write_bytes(bytes(b))
        paths.append(p)
    probe(paths)


def test_bad_gguf(gguf_trace, tmp_path):
    data = gguf_trace[0].read_bytes()
    rng = random.Random(5)
    paths = []

    def add(name, b):
        p = tmp_path / name
        p.write_bytes(b)
        paths.append(p)

    add("magic_only.gguf", b"GGUF")
    add("bad_version.gguf", b"GGUF" + struct.pack("<I", 99) + b"\x00" * 64)
    add("huge_counts.gguf", b"GGUF" + struct.pack("<IQQ", 3, 2**62, 2**62))
    for i, cut in enumerate(sorted(rng.sample(range(5, len(data)), 25))):
        add(f"cut{i}.gguf", data[:cut])
    for i in range(25):
        b = bytearray(data)
        # flip bits in the header and tensor table, where offsets and shapes live
        for _ in range(rng.randrange(1, 6)):
            b[rng.randrange(min(len(b), 2048))] ^= 1 << rng.randrange(8)
        add(f"flip{i}.gguf", bytes(b))
    res = probe(paths)
    assert res["trace_errors"] > 0


def test_errors_name_file_and_tensor(tmp_path):
    import tracedump

    with pytest.raises(tracedump.TraceIOError, match="missing.tdump"):
        tracedump.open(tmp_path / "missing.tdump")
    p = tmp_path / "junk.tdump"
    p.write_bytes(b"not a trace at all" * 10)
    with pytest.raises(tracedump.TraceFormatError, match="junk.tdump"):
        tracedump.open(p)


def test_the_rust_hostile_files():
    # the files tests/tests/allocation_bound.rs makes (counts, lengths and
    # shapes claiming gigabytes, with valid checksums), opened from Python
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    paths = sorted((root / "tests/hostile").iterdir())
    assert len(paths) >= 15, "tests/hostile/ is missing: see tests/tests/allocation_bound.rs"
    res = probe(paths)
    assert res["trace_errors"] >= len(paths) - 1  # every hostile file fails somewhere, cleanly
