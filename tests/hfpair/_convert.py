"""Run llama.cpp's own ``convert_hf_to_gguf.py``, unmodified, with one patch.

Usage (what :func:`tests.hfpair.convert` runs, in a subprocess of its own)::

    python _convert.py LLAMA_SRC [converter arguments ...]

``LLAMA_SRC`` is the folder :func:`tests.hfpair.llama_sources` extracted
(``convert_hf_to_gguf.py``, ``conversion/``, ``gguf-py/``). The rest of the
command line goes to the converter as its own ``sys.argv``.

The one patch, and why: for a BPE (``tokenizer.json``) tokenizer the converter
identifies the *pre-tokenizer* by encoding a fixed test string and comparing the
sha256 of the resulting token ids against a table of known models
(``TextModel.get_vocab_base_pre`` in ``conversion/base.py``). A tokenizer
trained at test time on a few lines of text has ids no table knows, so the
converter raises ``NotImplementedError("BPE pre-tokenizer was not
recognized ...")`` even though the vocabulary, merges and weights convert fine.
The least invasive fix is to wrap that one method: when the original raises, use
``"qwen2"`` (the pre-tokenizer llama.cpp uses for the Qwen family; it only
decides how llama.cpp splits *text*, and the pair feeds token ids directly, so
the choice does not affect any tensor). Everything else — tensor naming, the
Gemma norm ``+ 1``, Q/K permutation for Llama, hyper-parameters — is the
converter's own code. Sentencepiece tokenizers (``tokenizer.model``) never reach
that method.

It runs in a subprocess so that the converter's bundled ``gguf-py`` (put first
on ``sys.path``, as the converter itself does) never mixes with the ``gguf``
package installed in the virtual environment.
"""

import logging
import os
import runpy
import sys
from pathlib import Path

FALLBACK_PRE = "qwen2"


def main() -> None:
    src = Path(sys.argv[1]).resolve()
    script = src / "convert_hf_to_gguf.py"
    # what running `python convert_hf_to_gguf.py` would give: its folder first
    # (for `conversion/`), its gguf-py next (the converter inserts it too)
    sys.path.insert(0, str(src))
    if "NO_LOCAL_GGUF" not in os.environ:
        sys.path.insert(1, str(src / "gguf-py"))

    from conversion import base  # the converter's own package

    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            logging.getLogger("hfpair").warning(
                "pre-tokenizer hash unknown (a tokenizer trained at test time): using %r", FALLBACK_PRE
            )
            return FALLBACK_PRE

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = [str(script), *sys.argv[2:]]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
