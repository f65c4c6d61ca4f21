"""bf16 and fp8 values come typed (ml_dtypes is a dependency), and never
as their raw bits where ml_dtypes is missing all the same."""

from __future__ import annotations

import sys

import ml_dtypes
import numpy as np
import pytest

import tracedump


@pytest.fixture
def path(tmp_path):
    p = tmp_path / "ml.tdump"
    with tracedump.Writer(p) as w:
        w.add("bf", np.array([1.5, -2.0, 0.25], dtype=ml_dtypes.bfloat16))
        w.add("e4m3", np.array([1.0, -0.5], dtype=ml_dtypes.float8_e4m3fn))
        w.add("e5m2", np.array([2.0, 0.5], dtype=ml_dtypes.float8_e5m2))
    return p


def test_bf16_and_fp8_come_typed(path):
    with tracedump.open(path) as t:
        assert t["bf"].numpy().dtype == ml_dtypes.bfloat16
        assert t["bf"].numpy().astype(np.float32).tolist() == [1.5, -2.0, 0.25]
        assert t["e4m3"].numpy().dtype == ml_dtypes.float8_e4m3fn
        assert t["e5m2"].numpy().dtype == ml_dtypes.float8_e5m2
        assert np.asarray(t["bf"]).dtype == ml_dtypes.bfloat16
        assert t["bf"].materialize().dtype == ml_dtypes.bfloat16


def test_without_ml_dtypes_an_error_not_bits(path, monkeypatch):
    # what `import ml_dtypes` does where it is not installed
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    with tracedump.open(path) as t:
        for name in ("bf", "e4m3", "e5m2"):
            with pytest.raises(ImportError, match="ml_dtypes"):
                t[name].numpy()
        with pytest.raises(ImportError, match="ml_dtypes"):
            t["bf"].materialize()
        with pytest.raises(ImportError, match="ml_dtypes"):
            t["e4m3"].materialize()
        assert t["bf"].raw().dtype == np.uint8  # the bits, asked for by name
        assert t["bf"].to_f32().tolist() == [1.5, -2.0, 0.25]
