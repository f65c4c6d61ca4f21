"""The release wheel (`make wheel`) works where a notebook user installs it:
a fresh venv holding numpy, ml_dtypes and the wheel and nothing else (no
torch), with no cargo on PATH. It reads, writes and compares a trace there.

`make test` builds the wheel first and passes its folder in
TRACEDUMP_WHEEL_DIR; run alone, the test takes target/wheels/ and skips
where no wheel was built.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.wheel


def the_wheel() -> Path:
    folder = Path(os.environ.get("TRACEDUMP_WHEEL_DIR") or ROOT / "target" / "wheels")
    wheels = sorted(folder.glob("tracedump-*manylinux*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        pytest.skip(f"no manylinux wheel in {folder}: `make wheel` builds it")
    return wheels[-1]


def site_packages(venv: Path) -> Path:
    (sp,) = (venv / "lib").glob("python3*/site-packages")
    return sp


def test_the_wheel_is_manylinux_abi3_and_small():
    w = the_wheel()
    # tracedump-0.1.0-cp310-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
    tags = w.name[: -len(".whl")].split("-")[2:]
    assert tags[:2] == ["cp310", "abi3"], w.name
    assert all(p.startswith(("manylinux2014_", "manylinux_2_17_")) for p in tags[2].split(".")), w.name
    # stripped: the extension with debug info is about five times larger
    assert w.stat().st_size < 5 << 20, f"{w.name}: {w.stat().st_size} bytes"
    # what manylinux2014 means: no glibc symbol newer than 2.17
    with zipfile.ZipFile(w) as z:
        (so,) = [n for n in z.namelist() if n.endswith(".so")]
        needed = {int(v) for v in re.findall(rb"GLIBC_2\.(\d+)", z.read(so))}
    assert needed and max(needed) <= 17, f"{so} needs GLIBC_2.{max(needed)}"


def test_the_wheel_works_without_cargo_or_torch(tmp_path):
    wheel = the_wheel()
    t0 = time.monotonic()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    # numpy and ml_dtypes, the wheel's dependencies, linked from this
    # interpreter's (no download); nothing else of it is visible
    import ml_dtypes
    import numpy

    deps = tmp_path / "deps"
    deps.mkdir()
    for mod in (numpy, ml_dtypes):
        pkg = Path(mod.__file__).parent
        for p in [pkg, pkg.with_name(pkg.name + ".libs")]:
            if p.exists():
                (deps / p.name).symlink_to(p)
    (site_packages(venv) / "deps.pth").write_text(f"{deps}\n")
    # no cargo, rustc or maturin anywhere on PATH: pip cannot build from source
    path = os.pathsep.join(
        d for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and not any(Path(d, tool).exists() for tool in ("cargo", "rustc", "maturin"))
    )
    env = {"PATH": path, "HOME": str(tmp_path), "PYTHONNOUSERSITE": "1"}
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet", "--no-deps",
         "--no-index", "--disable-pip-version-check", str(wheel)],
        check=True, env=env, cwd=tmp_path,
    )
    script = textwrap.dedent(
        """
        import importlib.util, shutil, sys
        import ml_dtypes, numpy as np
        import tracedump
        assert shutil.which("cargo") is None and importlib.util.find_spec("torch") is None
        assert tracedump.__file__.startswith(sys.prefix), tracedump.__file__
        for name, bump in (("a", 0.0), ("b", 1.0)):
            with tracedump.Writer(name + ".tdump", engine="wheel-test") as w:
                w.add("x", np.arange(12, dtype=np.float32).reshape(3, 4).T)
                w.add("h", np.ones(4, ml_dtypes.bfloat16) + bump)
        with tracedump.open("a.tdump") as t:
            assert list(t) == ["x", "h"] and t.verify().ok
            assert t["x"].byte_strides == (4, 16) and t["h"].numpy().dtype == ml_dtypes.bfloat16
            assert np.asarray(t["x"]).tolist() == np.arange(12).reshape(3, 4).T.tolist()
        r = tracedump.compare("a.tdump", "b.tdump")
        assert not r.agrees and r.first_divergence["key"] == "h", r
        print("ok", tracedump.__version__)
        """
    )
    r = subprocess.run([str(py), "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok ")
    print(f"{wheel.name}: {wheel.stat().st_size} bytes, installed and used in {time.monotonic() - t0:.1f}s")
