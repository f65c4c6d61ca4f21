"""The first example of python/README.md runs as written, in a directory
where `tracedump demo` wrote target/demo/, and prints what its comments say."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]


def test_the_first_readme_example_runs(tmp_path, demo):
    text = (ROOT / "python" / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    (tmp_path / "target" / "demo").mkdir(parents=True)
    for f in demo:
        shutil.copy(f, tmp_path / "target" / "demo" / Path(f).name)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "f32 (1, 4, 8, 16) (2048, 64, 256, 4) (512, 16, 64, 1)"
    assert lines[-2] == "ffn_norm-2"
    assert "eps = 0.1 in A, 0.00001 in B" in lines[-1]
    assert (tmp_path / "mine.tdump").exists()
