"""The exception hierarchy fits Python's own: what `open()` users catch
(`FileNotFoundError`, `PermissionError`, `OSError`) and what mapping users
catch (`KeyError`) catch ours."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

import tracedump


def test_a_missing_file_is_a_file_not_found_error(tmp_path):
    missing = tmp_path / "missing.tdump"
    with pytest.raises(FileNotFoundError) as info:
        tracedump.open(missing)
    e = info.value
    assert isinstance(e, tracedump.TraceFileNotFoundError)
    assert isinstance(e, tracedump.TraceIOError)
    assert isinstance(e, tracedump.TraceError)
    assert e.errno == errno.ENOENT
    assert e.strerror == os.strerror(errno.ENOENT)
    assert e.filename == str(missing)
    # the message is the reader's own, not OSError's "[Errno 2] …"
    assert str(e).startswith(str(missing)) and "[Errno" not in str(e)
    with pytest.raises(FileNotFoundError):
        tracedump.compare(missing, missing)


def test_io_errors_are_os_errors(tmp_path):
    assert issubclass(tracedump.TraceIOError, OSError)
    assert issubclass(tracedump.TraceIOError, tracedump.TraceError)
    assert issubclass(tracedump.TraceFileNotFoundError, FileNotFoundError)
    assert issubclass(tracedump.TracePermissionError, PermissionError)
    assert issubclass(tracedump.TracePermissionError, tracedump.TraceIOError)
    with pytest.raises(OSError) as info:
        tracedump.Writer(tmp_path / "no" / "such" / "dir.tdump")
    assert isinstance(info.value, tracedump.TraceIOError)
    assert info.value.errno == errno.ENOENT


def test_a_forbidden_file_is_a_permission_error(tmp_path):
    if os.geteuid() == 0:
        # root reads a mode-000 file; sysfs refuses it a new file all the same
        target = "/sys/tracedump-test.tdump"
        make = lambda: tracedump.Writer(target)  # noqa: E731
    else:
        target = tmp_path / "locked.tdump"
        w = tracedump.Writer(target)
        w.add("a", np.ones(2, np.float32))
        w.close()
        os.chmod(target, 0)
        make = lambda: tracedump.open(target)  # noqa: E731
    with pytest.raises(PermissionError) as info:
        make()
    assert isinstance(info.value, tracedump.TracePermissionError)
    assert info.value.errno in (errno.EACCES, errno.EPERM)
    assert info.value.filename == str(target)


def test_a_missing_tensor_is_a_key_error(tmp_path):
    p = tmp_path / "t.tdump"
    with tracedump.Writer(p) as w:
        w.add("a", np.ones(2, np.float32))
    with tracedump.open(p) as t:
        with pytest.raises(KeyError) as info:
            t["nope"]
    assert isinstance(info.value, tracedump.TraceNotFoundError)
    assert "nope" in str(info.value) and not str(info.value).startswith("'")
