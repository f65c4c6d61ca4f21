"""The package's copy of the ggml adapter is the repository's."""

from pathlib import Path

import tracedump.ggml

ROOT = Path(__file__).resolve().parents[2]


def test_packaged_adapter_is_current():
    packaged = Path(tracedump.ggml.__file__).resolve().parent / "_ggml_adapter"
    for name, source in [
        ("tracedump_ggml.c", ROOT / "trace-writer/ggml/tracedump_ggml.c"),
        ("tracedump_ggml.h", ROOT / "trace-writer/ggml/tracedump_ggml.h"),
        ("tracedump.h", ROOT / "trace-writer/include/tracedump.h"),
    ]:
        assert (packaged / name).read_bytes() == source.read_bytes(), (
            f"python/tracedump/_ggml_adapter/{name} differs from {source.relative_to(ROOT)}: copy it over"
        )
