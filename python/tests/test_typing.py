"""The package's types are real: `mypy --strict` accepts a typed example
and rejects a wrong annotation (`y: int = x.shape`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "typing"


def mypy(script: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("mypy", reason="mypy is in python/requirements-test.txt")
    # run from elsewhere, so that `tracedump` is the installed package
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache), "--no-error-summary", str(script)],
        capture_output=True,
        text=True,
        cwd=cache.parent,
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for both runs: numpy's stubs are read once."""
    return tmp_path_factory.mktemp("mypy") / "cache"


def test_a_typed_example_passes_mypy_strict(cache):
    r = mypy(HERE / "typed_use.py", cache)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_wrong_annotation_fails_mypy_strict(cache):
    r = mypy(HERE / "wrong_annotation.py", cache)
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'Incompatible types in assignment (expression has type "tuple[int, ...]", variable has type "int")' in r.stdout
    assert r.stdout.count("error:") == 1, r.stdout


def test_the_typed_example_runs(tmp_path):
    import tracedump

    a, b = tmp_path / "a.tdump", tmp_path / "b.tdump"
    r = subprocess.run([sys.executable, str(HERE / "typed_use.py"), str(a), str(a)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert tracedump.open(a)["k-0"].shape == (2, 3) and not b.exists()
