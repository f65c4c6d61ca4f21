"""A wrong annotation `mypy --strict` must reject (python/tests/test_typing.py):
were the package's types Any, this would pass and prove nothing."""

from __future__ import annotations

import tracedump


def shape_of(path: str) -> int:
    x = tracedump.open(path)["k-0"]
    y: int = x.shape  # wrong: a tuple[int, ...]
    return y
