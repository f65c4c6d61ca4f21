"""What a user writes, fully annotated: `mypy --strict` passes on it
(python/tests/test_typing.py), so the package's types are real."""

from __future__ import annotations

import sys

import numpy as np
import numpy.typing as npt

import tracedump


def main(path: str, reference: str) -> int:
    with tracedump.Writer(path, engine="example") as w:
        rid: int | None = w.add("k-0", np.ones((2, 3), np.float32), layer=0)
    assert rid is not None
    try:
        trace = tracedump.open(path)
    except FileNotFoundError as e:
        print("no trace at", e.filename)
        return 1
    with trace:
        k: tracedump.Tensor = trace["k-0"]
        shape: tuple[int, ...] = k.shape
        strides: tuple[int, ...] | None = k.strides
        a: npt.NDArray[np.generic] = k.numpy()
        keys: list[str] = list(trace)
        names: list[str] = [t.name for t in trace.values()]
        print(shape, strides, a.dtype, keys, names)
    r = tracedump.compare(path, reference)
    if isinstance(r, tracedump.DiffResult):
        first: int | None = r.first_divergence_index
        print(r.agrees, first, len(r))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
