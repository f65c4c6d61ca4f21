"""Arrays from a trace whose file is truncated or deleted after opening.

Files up to 64 MiB are read into memory when opened (copy-on-open): their
arrays and tensors survive anything done to the file. A mapped file (larger,
or copy=False) follows the rule of every memory map: touching pages another
program cut off raises SIGBUS — shown here in a subprocess.
"""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import tracedump


def write(path, n=1 << 16):
    x = np.arange(n, dtype=np.float32)
    with tracedump.Writer(path) as w:
        w.add("x", x)
        w.add("xt", x.reshape(256, -1).T)
    return x


@pytest.mark.parametrize("how", ["truncate", "delete", "close"])
def test_copied_file_survives(tmp_path, how):
    p = tmp_path / "t.tdump"
    x = write(p)
    t = tracedump.open(p)
    assert t.copied
    a, at, tt = t["x"].numpy(), t["xt"].numpy(), t["xt"].torch()
    if how == "truncate":
        os.truncate(p, 0)
    elif how == "delete":
        os.remove(p)
    else:
        t.close()
    np.testing.assert_array_equal(a, x)
    np.testing.assert_array_equal(at, x.reshape(256, -1).T)
    assert torch.equal(tt, torch.from_numpy(x.reshape(256, -1).T.copy()))
    if how != "close":
        assert t["x"].materialize().sum() == x.sum()


def test_copy_is_a_choice(tmp_path):
    p = tmp_path / "t.tdump"
    write(p)
    assert not tracedump.open(p, copy=False).copied
    assert tracedump.open(p, copy=True).copied
    assert not tracedump.Trace(p, copy=False).copied


def test_truncated_mapped_file_faults_as_documented(tmp_path):
    p = tmp_path / "t.tdump"
    write(p, n=1 << 20)
    code = textwrap.dedent(
        f"""
        import os, tracedump
        t = tracedump.open({str(p)!r}, copy=False)
        a = t["x"].numpy()
        os.truncate({str(p)!r}, 0)
        print(float(a[-1]))
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode == -signal.SIGBUS, (r.returncode, r.stderr[-500:])
