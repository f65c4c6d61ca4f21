"""The Rust CLI reads what the Python writer wrote: inspect and verify are clean."""
import os
import subprocess
from pathlib import Path

import numpy as np
import torch

import tracedump

ROOT = Path(__file__).resolve().parents[2]


def tracedump_bin():
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    for profile in ("debug", "release"):
        exe = target / profile / "tracedump"
        if exe.exists():
            return exe
    raise AssertionError(f"no tracedump binary under {target}: `make test` builds it before the Python tests")


def test_python_written_trace_inspects_and_verifies(tmp_path):
    path = tmp_path / "py.tdump"
    cache = torch.arange(2 * 8 * 16, dtype=torch.float16).reshape(8, 2, 16)
    with tracedump.Writer(path, engine="pytest") as w:
        w.add("cache_k_l0", cache, layer=0)
        w.add("k-0", cache.permute(1, 0, 2), layer=0, role="k", lineage="auto")
        w.add("x", np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)[:, ::2], layer=0)
        w.add_stats("softmax-0", torch.rand(4, 4), layer=0)
    exe = tracedump_bin()
    for verb in (["inspect", str(path), "--ggml", "--stats"], ["verify", str(path)]):
        out = subprocess.run([exe, *verb], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "error" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    out = subprocess.run([exe, "inspect", str(path)], capture_output=True, text=True).stdout
    assert "k-0  f16 [2,8,16]" in out and "strided" in out, out
    assert 'engine = "pytest"' in out, out
    golden = ROOT / "tests" / "golden" / "py"
    for f in sorted(golden.glob("*.tdump")):
        out = subprocess.run([exe, "verify", str(f)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


def test_package_exports():
    assert callable(tracedump.capture)
    assert callable(tracedump.reference.attention)
    assert issubclass(tracedump.TraceNotFoundError, (tracedump.TraceError, KeyError))
