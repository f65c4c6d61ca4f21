"""Shared fixtures: the Rust CLI's demo traces and a GGUF made by gguf-py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def pytest_configure(config: pytest.Config) -> None:
    # here rather than in pyproject.toml: `make test` runs pytest from the
    # repository root, where python/pyproject.toml is not its config
    config.addinivalue_line(
        "markers", "wheel: installs the release wheel (make wheel) into a fresh venv without cargo"
    )

ROOT = Path(__file__).resolve().parents[2]


def _cli() -> Path | None:
    """The `tracedump` CLI: $TRACEDUMP_BIN, else the newest of target/{release,debug}."""
    env = os.environ.get("TRACEDUMP_BIN")
    if env:
        return Path(env)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    found = [p for p in (target / "release" / "tracedump", target / "debug" / "tracedump") if p.exists()]
    if found:
        return max(found, key=lambda p: p.stat().st_mtime)
    if shutil.which("cargo"):
        subprocess.run(
            ["cargo", "build", "-q", "-p", "tracedump-cli", "--bin", "tracedump"], cwd=ROOT, check=True
        )
        return target / "debug" / "tracedump"
    return None


@pytest.fixture(scope="session")
def cli() -> Path:
    """The Rust CLI."""
    found = _cli()
    if found is None:
        pytest.skip("no tracedump CLI (set TRACEDUMP_BIN or build tracedump-cli)")
    return found


@pytest.fixture(scope="session")
def demo(tmp_path_factory, cli) -> tuple[Path, Path]:
    """(demo.tdump, demo.reference.tdump) written by `tracedump demo`."""
    out = tmp_path_factory.mktemp("demo") / "demo.tdump"
    subprocess.run([str(cli), "demo", str(out)], check=True, capture_output=True)
    return out, out.with_name("demo.reference.tdump")


@pytest.fixture(scope="session")
def gguf_trace(tmp_path_factory) -> tuple[Path, Path]:
    """(t.gguf, refdir) from tests/python/make_trace_gguf.py (gguf-py's quantizers)."""
    pytest.importorskip("gguf")
    d = tmp_path_factory.mktemp("gguf")
    subprocess.run(
        [sys.executable, str(ROOT / "tests" / "python" / "make_trace_gguf.py"), str(d / "t.gguf"), str(d / "ref")],
        check=True,
        capture_output=True,
    )
    return d / "t.gguf", d / "ref"


def bits(a: np.ndarray) -> np.ndarray:
    """The array's elements as unsigned integers of the same size (bit-exact compare, NaNs included)."""
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))
