"""The ggml adapter's sources in the extension are the repository's, and
``adapter_library`` writes them out as they are."""

from pathlib import Path

import tracedump.ggml

ROOT = Path(__file__).resolve().parents[2]


def test_embedded_adapter_is_the_repositorys():
    sources = tracedump.ggml._adapter_sources()
    assert sorted(sources) == ["tracedump.h", "tracedump_ggml.c", "tracedump_ggml.h"]
    for name, source in [
        ("tracedump_ggml.c", ROOT / "trace-writer/ggml/tracedump_ggml.c"),
        ("tracedump_ggml.h", ROOT / "trace-writer/ggml/tracedump_ggml.h"),
        ("tracedump.h", ROOT / "trace-writer/include/tracedump.h"),
    ]:
        assert sources[name] == source.read_text(), (
            f"the extension's {name} differs from {source.relative_to(ROOT)}: rebuild the package"
        )
    assert "tracedump_ggml_cb" in sources["tracedump_ggml.c"]
    assert not (Path(tracedump.ggml.__file__).resolve().parent / "_ggml_adapter").exists()
