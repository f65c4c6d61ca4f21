"""A real llama.cpp / HF transformers trace pair of one tiny random model.

For an architecture (:data:`ARCHS`: ``llama``, ``qwen2``, ``qwen3``,
``gemma2``, and ``mistral`` as a spare) this builds a tiny random-weight HF
model, converts it to GGUF with llama.cpp's **own** converter, runs the same
token ids through both engines and records each run with tracedump::

    from tests.hfpair import make_model, default_tokens, run_llama, run_hf, compare

    model, gguf_path, config = make_model("qwen3", "/tmp/q3")
    tokens = default_tokens(config)               # 8 prompt + 3 decode token ids
    a = run_llama(gguf_path, tokens, 3, "/tmp/q3/llama.tdump", kv="f32")
    b = run_hf(model, tokens, 3, "/tmp/q3/hf.tdump")
    compare(a, b, len(tokens) - 3)                # max relative diff per step

    # or all at once: pair("qwen3", "/tmp/q3") -> dict (paths, logits, rel)

or from the shell, in the repo root with the venv's python::

    python -m tests.hfpair qwen3 /tmp/q3 [--kv f16] [--decode 3] [--names [FILE]]
    python -m tests.hfpair.names qwen3 /tmp/q3      # target/hfpair-names/NAMES_qwen3.txt

Steps are the same on both sides: step 0 is the prompt (all its tokens in one
batch / one ``model(...)`` call), then one step per decode token (one
``llama_decode`` / one ``model(..., cache=...)`` call each). The token
sequence is a fixed list (:func:`default_tokens`), not sampled, so the two runs
always see identical ids. llama.cpp runs with ``logits_all=True``: its step 0
computes (and records) the logits of every prompt row, like HF.

Agreement (``max |llama - hf| / max |hf|`` per step, default seed): about
5e-7 for llama, qwen2, qwen3 and mistral with f32 weights and an f32 KV cache;
about 3e-4 with llama.cpp's default f16 KV cache; 4-7e-4 with flash attention,
the same with an f32 or f16 cache (with an f32 cache llama.cpp's graph copies
K and V to f16 — ``(copy)`` CPY nodes — before ``FLASH_ATTN_EXT``); up to
1.2e-3 with f16 weights.
Gemma 2 stays at about 3e-4 even in f32: llama.cpp's CPU GELU (the fused
``GEGLU``) reads a table indexed by the f16-rounded input and returns an f16
value (``ffn_geglu-0`` matches ``gelu(x.half()).half() * up`` to 2e-8);
everything before it in layer 0 agrees to ~4e-7.

What is built (``make_model``):

* weights: float32, drawn from ``torch.Generator().manual_seed(seed)`` in
  ``named_parameters()`` order — linear weights ``N(0, 1/fan_in)``, biases
  ``N(0, 0.1^2)``, embeddings ``N(0, 1)`` (Gemma: ``N(0, 1/hidden)``, as its
  embeddings are scaled by ``sqrt(hidden)``), every norm weight
  ``1 + 0.1 N(0, 1)`` (Gemma stores ``w`` and applies ``1 + w``: ``0.1 N(0,
  1)``). Untied embeddings, except Gemma 2 (see :data:`ARCHS`).
* tokenizers, trained at test time on :func:`corpus` (400 deterministic
  pseudo-English lines, ~0.1 s): Llama, Mistral and Gemma 2 get a
  sentencepiece BPE model (``tokenizer.model``, 512 pieces,
  ``byte_fallback=True`` — without it a 512 vocab does not train on so little
  text) loaded into the family's HF tokenizer class; Qwen 2/3 get a byte-level
  BPE trained with the ``tokenizers`` library (``tokenizer.json``, Qwen2's
  split regex) in ``Qwen2Tokenizer``, which the converter only accepts with the
  ``get_vocab_base_pre`` patch of ``_convert.py``. Either way the saved HF
  tokenizer encodes text as llama.cpp does with the GGUF (but for the
  sentencepiece tokenizers' handling of a leading space).
* GGUF: ``convert_hf_to_gguf.py --outtype f32`` (or ``f16``) from the
  llama-cpp-python 0.3.36 sdist (:func:`llama_sources`), the same llama.cpp
  as the installed wheel.

Timing: 7-10 s per arch on 2 busy cores, of which ~4 s is the converter
subprocess (importing torch and transformers) and ~2 s importing the HF model
class; the two runs take under a second.

Paths: sources are cached under ``$TRACEDUMP_HFPAIR_CACHE`` or
``<repo>/target/hfpair-cache`` (one 76 MB sdist download the first time,
about 2 MB kept).

Needs, beyond torch, numpy, tracedump and llama-cpp-python: transformers (5.x:
``cache=`` replaced ``past_key_values=``, both are handled), tokenizers,
sentencepiece and protobuf (transformers 5 needs it to convert a
sentencepiece model); see tests/llama/requirements.txt.
"""

from __future__ import annotations

import inspect
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = [
    "ARCHS",
    "LLAMA_CPP_PYTHON_VERSION",
    "cache_dir",
    "llama_sources",
    "corpus",
    "make_model",
    "convert",
    "default_tokens",
    "run_llama",
    "run_hf",
    "compare",
    "pair",
]

ROOT = Path(__file__).resolve().parents[2]
LLAMA_CPP_PYTHON_VERSION = "0.3.36"

#: Per architecture: the HF config / model classes and the config arguments
#: (``head_dim`` always explicit, ``max_position_embeddings`` 256 as llama.cpp
#: pads a small n_ctx up to 256), the tokenizer kind (``spm`` / ``bpe``), how
#: norms are stored (``one``: weight ~ 1, applied as w; ``zero``: weight ~ 0,
#: applied as 1 + w, Gemma) and, where it is not 2e-5,
#: the relative logits tolerance with f32 weights and KV cache (``tol``).
#: Dimensions vary on purpose (q width != hidden for qwen3 and gemma2; GQA
#: 2:1, 4:1, 3:1; 2 or 3 layers; head_dim 16 or 32).
ARCHS: Dict[str, Dict[str, Any]] = {
    # GQA 4 heads / 2 KV heads, head_dim 16, q width == hidden
    "llama": dict(
        config="LlamaConfig",
        model="LlamaForCausalLM",
        tokenizer="spm",
        norm="one",
        kwargs=dict(
            vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2,
        ),
    ),
    # q/k/v biases (randomised), 4 heads / 2 KV heads of 32
    "qwen2": dict(
        config="Qwen2Config",
        model="Qwen2ForCausalLM",
        tokenizer="bpe",
        norm="one",
        kwargs=dict(
            vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32,
            max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False,
            use_sliding_window=False, bos_token_id=0, eos_token_id=0,
        ),
    ),
    # q/k RMS norms per head (randomised), 3 layers, q width 128 != hidden 96
    "qwen3": dict(
        config="Qwen3Config",
        model="Qwen3ForCausalLM",
        tokenizer="bpe",
        norm="one",
        kwargs=dict(
            vocab_size=512, hidden_size=96, intermediate_size=192, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32,
            max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False,
            use_sliding_window=False, bos_token_id=0, eos_token_id=0,
        ),
    ),
    # Gemma 2: embeddings scaled by sqrt(hidden), (1 + w) norms incl. post-attn /
    # post-ffn norms, GELU(tanh) gate, attention and final logit soft-capping,
    # a 4-token sliding window on even layers (layer 0: the 8-token prompt
    # exercises it; layer 1 is global). 4 heads / 1 KV head of 32 (MQA), q
    # width 128 != hidden 80. TIED embeddings: llama.cpp's GEMMA2 graph always
    # uses token_embd as the output matrix and the converter drops
    # lm_head.weight, so an untied HF Gemma 2 could not match.
    # query_pre_attn_scalar == head_dim: llama.cpp scales q by 1/sqrt(head_dim)
    # for every size but 27B. tol: llama.cpp's f16-table GELU (module doc).
    "gemma2": dict(
        config="Gemma2Config",
        model="Gemma2ForCausalLM",
        tokenizer="spm",
        norm="zero",
        kwargs=dict(
            vocab_size=512, hidden_size=80, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
            max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=True,
            sliding_window=4, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
            hidden_activation="gelu_pytorch_tanh", bos_token_id=2, eos_token_id=1, pad_token_id=0,
        ),
        tol=1e-3,
    ),
    # Mistral: llama.cpp converts it as a Llama (same graph); 6 heads / 2 KV
    # heads of 16 (3:1 GQA), 3 layers. No sliding window (llama.cpp's LLAMA
    # graph has none).
    "mistral": dict(
        config="MistralConfig",
        model="MistralForCausalLM",
        tokenizer="spm",
        norm="one",
        kwargs=dict(
            vocab_size=512, hidden_size=96, intermediate_size=224, num_hidden_layers=3,
            num_attention_heads=6, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
            sliding_window=None, bos_token_id=1, eos_token_id=2,
        ),
    ),
}


# --------------------------------------------------------------------------
# llama.cpp's converter


def cache_dir(path: Optional[os.PathLike] = None) -> Path:
    """``path``, else ``$TRACEDUMP_HFPAIR_CACHE``, else ``<repo>/target/hfpair-cache``."""
    if path is not None:
        return Path(path)
    env = os.environ.get("TRACEDUMP_HFPAIR_CACHE")
    return Path(env) if env else ROOT / "target" / "hfpair-cache"


def llama_sources(cache: Optional[os.PathLike] = None) -> Path:
    """The folder holding llama.cpp's ``convert_hf_to_gguf.py``, its
    ``conversion/`` package and its ``gguf-py/``, from the llama-cpp-python
    sdist of the installed wheel's version (:data:`LLAMA_CPP_PYTHON_VERSION`).

    The first call runs ``pip download --no-deps --no-binary llama-cpp-python
    llama-cpp-python==0.3.36`` (PyPI only, about 76 MB, ~15 s), extracts just
    ``vendor/llama.cpp/{convert_hf_to_gguf.py, conversion/, gguf-py/}`` (the
    converter's only imports besides torch, numpy, transformers and
    sentencepiece; about 2 MB) into ``<cache>/llama.cpp-0.3.36`` and deletes
    the archive. Later calls return that folder at once (a ``.complete``
    marker file says the extraction finished).
    """
    base = cache_dir(cache)
    out = base / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"
    if (out / ".complete").exists():
        return out
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sdist-", dir=base) as tmp:
        tmp = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--no-binary", "llama-cpp-python",
             f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(tmp)],
            check=True,
        )
        (archive,) = tmp.glob("llama_cpp_python-*.tar.gz")
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
        wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
        staging = tmp / "llama.cpp"
        with tarfile.open(archive) as tar:
            members = []
            for m in tar.getmembers():
                if not m.name.startswith(prefix) or not (m.isfile() or m.isdir()):
                    continue
                rel = m.name[len(prefix):]
                if rel and any(rel == w or rel.startswith(w) for w in wanted):
                    m.name = rel
                    members.append(m)
            try:
                tar.extractall(staging, members=members, filter="data")
            except TypeError:  # Python < 3.11.4: no extraction filters
                tar.extractall(staging, members=members)
        if not (staging / "convert_hf_to_gguf.py").exists():
            raise FileNotFoundError(f"{archive.name}: no {prefix}convert_hf_to_gguf.py")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    (out / ".complete").write_text(f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}\n")
    return out


def convert(model_dir: os.PathLike, gguf_path: os.PathLike, outtype: str = "f32",
            cache: Optional[os.PathLike] = None) -> Path:
    """``convert_hf_to_gguf.py MODEL_DIR --outfile GGUF --outtype OUTTYPE``,
    through ``_convert.py`` (the converter unmodified but for the BPE
    pre-tokenizer fallback, see there), in a subprocess. Raises
    ``RuntimeError`` with the converter's output when it fails."""
    src = llama_sources(cache)
    cmd = [sys.executable, str(Path(__file__).with_name("_convert.py")), str(src),
           str(model_dir), "--outfile", str(gguf_path), "--outtype", outtype]
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0 or not Path(gguf_path).exists():
        raise RuntimeError(f"convert_hf_to_gguf.py failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return Path(gguf_path)


# --------------------------------------------------------------------------
# tokenizers


def corpus(n_lines: int = 400, seed: int = 1234) -> List[str]:
    """``n_lines`` deterministic lines of pseudo-English (common words,
    made-up words from syllables, numbers, punctuation) to train the test
    tokenizers on: enough distinct text for a 512-token vocabulary."""
    rng = random.Random(seed)
    words = ("the a of and to in is it that for on with as was by tensor trace layer head cache "
             "model token value key query weight bias norm step graph engine run dump file read "
             "write diff shape float half block").split()
    syll = "ka lo mi nu re sa te vi zo pa qu ex an or in el us at om ir".split()
    punct = [".", ",", "!", "?", ";", ":", "...", " -", " (x)", " 'q'"]
    lines = []
    for _ in range(n_lines):
        out = []
        for _ in range(rng.randint(4, 14)):
            r = rng.random()
            if r < 0.6:
                w = rng.choice(words)
            elif r < 0.85:
                w = "".join(rng.choice(syll) for _ in range(rng.randint(1, 3)))
            else:
                w = str(rng.randint(0, 10 ** rng.randint(1, 5)))
            if rng.random() < 0.15:
                w = w.capitalize()
            out.append(w)
        lines.append(" ".join(out) + rng.choice(punct))
    return lines


def _spm_model(vocab_size: int, gemma: bool = False) -> bytes:
    """A sentencepiece BPE model (the bytes of a ``tokenizer.model``) trained
    on :func:`corpus` with ``byte_fallback=True``: the special pieces, the 256
    ``<0xXX>`` byte pieces, then learned pieces. Llama convention: ``<unk>``
    ``<s>`` ``</s>`` = 0 1 2; Gemma's (``gemma=True``): ``<pad>`` ``<eos>``
    ``<bos>`` ``<unk>`` = 0 1 2 3 and no dummy prefix space."""
    import io

    import sentencepiece as spm

    if gemma:
        ids = dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
                   bos_piece="<bos>", unk_piece="<unk>", add_dummy_prefix=False)
    else:
        ids = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=buf, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, num_threads=1, minloglevel=2, **ids,
    )
    return buf.getvalue()


_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _save_tokenizer(arch: str, out_dir: Path, vocab_size: int):
    """Train the arch's tokenizer and save it into ``out_dir`` with
    ``save_pretrained``; returns the HF tokenizer (it encodes text exactly as
    llama.cpp does with the converted GGUF).

    Sentencepiece: ``tokenizer.model`` is written first, then loaded with the
    family's tokenizer class (transformers 5 converts it to a ``tokenizers``
    tokenizer, which needs ``protobuf``) and saved back (``tokenizer.json``,
    ``tokenizer_config.json``; ``tokenizer.model`` stays for the converter).
    """
    import transformers

    if ARCHS[arch]["tokenizer"] == "spm":
        gemma = arch.startswith("gemma")
        model_bytes = _spm_model(vocab_size, gemma=gemma)
        with tempfile.TemporaryDirectory() as tmp:  # only tokenizer.model in it
            (Path(tmp) / "tokenizer.model").write_bytes(model_bytes)
            if gemma:  # no <mask> (it would be id 512, outside the vocabulary)
                tok = transformers.GemmaTokenizer.from_pretrained(tmp, mask_token=None)
            else:
                tok = transformers.LlamaTokenizer.from_pretrained(tmp)
        if len(tok) != vocab_size:
            raise RuntimeError(f"{type(tok).__name__}: {len(tok)} tokens from a {vocab_size}-piece "
                               "sentencepiece model (transformers needs protobuf to convert it)")
        tok.save_pretrained(out_dir)
        (out_dir / "tokenizer.model").write_bytes(model_bytes)
        return tok
    # byte-level BPE with the Qwen2 pre-tokenizer (the split regex of Qwen2's
    # own tokenizer.json: digits one by one), so that llama.cpp's "qwen2"
    # pre-tokenizer splits text the same way; <|endoftext|> = id 0
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    bpe.train_from_iterator(corpus(), trainer=trainer)
    cls = getattr(transformers, "Qwen2TokenizerFast", None) or getattr(transformers, "Qwen2Tokenizer")
    tok = cls(tokenizer_object=bpe, unk_token=None, bos_token=None, eos_token="<|endoftext|>",
              pad_token="<|endoftext|>")
    tok.save_pretrained(out_dir)
    return tok


# --------------------------------------------------------------------------
# the model


def _randomize_(model, seed: int, norm: str, embed_std: float) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    offset = 1.0 if norm == "one" else 0.0
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied parameters come once
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "norm" in name.rsplit(".", 2)[-2] and p.ndim == 1:
                p.copy_(offset + 0.1 * r)
            elif name.endswith(".bias"):
                p.copy_(0.1 * r)
            elif p.ndim == 2 and "embed_tokens" in name:
                p.copy_(embed_std * r)
            elif p.ndim == 2:
                p.copy_(r / p.shape[1] ** 0.5)
            else:
                raise ValueError(f"{name}: no rule to randomise a {tuple(p.shape)} parameter")


def make_model(arch: str, out_dir: os.PathLike, seed: int = 0, outtype: str = "f32",
               cache: Optional[os.PathLike] = None, **overrides: Any) -> Tuple[Any, Path, Any]:
    """Build, save and convert the tiny random ``arch`` model.

    Writes ``out_dir/hf/`` (``config.json``, ``model.safetensors`` in float32,
    the tokenizer, all with ``save_pretrained``) and ``out_dir/model-<outtype>.gguf``
    (``convert_hf_to_gguf.py --outtype f32|f16``). ``overrides`` replace
    config arguments of :data:`ARCHS` (``hidden_size=128``,
    ``num_hidden_layers=3`` ...). Returns ``(model, gguf_path, config)``: the
    model reloaded from ``out_dir/hf`` in float32, eval mode,
    ``attn_implementation="eager"`` (attention as plain matmul / softmax ops).
    """
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if arch not in ARCHS:
        raise KeyError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    if outtype not in ("f32", "f16"):
        raise ValueError(f"outtype must be 'f32' or 'f16', not {outtype!r}")
    spec = ARCHS[arch]
    out_dir = Path(out_dir)
    hf_dir = out_dir / "hf"
    if hf_dir.exists():  # nothing stale (an old tokenizer.json would win over a new tokenizer.model)
        shutil.rmtree(hf_dir)
    hf_dir.mkdir(parents=True)
    kwargs = {**spec["kwargs"], **overrides}
    config = getattr(transformers, spec["config"])(**kwargs)
    config.architectures = [spec["model"]]
    cls = getattr(transformers, spec["model"])
    torch.manual_seed(seed)
    model = cls(config).to(torch.float32)
    embed_std = 1.0 / config.hidden_size ** 0.5 if spec["norm"] == "zero" else 1.0
    _randomize_(model, seed, spec["norm"], embed_std)
    model.save_pretrained(hf_dir)
    _save_tokenizer(arch, hf_dir, config.vocab_size)
    gguf_path = convert(hf_dir, out_dir / f"model-{outtype}.gguf", outtype, cache)
    loaded = cls.from_pretrained(hf_dir, attn_implementation="eager", dtype=torch.float32)
    loaded.eval()
    return loaded, gguf_path, loaded.config


def default_tokens(config, n_prompt: int = 8, n_decode: int = 3, seed: int = 0) -> List[int]:
    """``n_prompt + n_decode`` fixed token ids in ``[4, vocab_size)`` (no
    special tokens in either convention), drawn from ``random.Random(seed)``;
    the last ``n_decode`` are the decode tokens."""
    rng = random.Random(seed)
    return [rng.randrange(4, config.vocab_size) for _ in range(n_prompt + n_decode)]


# --------------------------------------------------------------------------
# the runs


def run_llama(gguf_path: os.PathLike, tokens: Sequence[int], n_decode: int, trace_path: os.PathLike,
              kv: str = "f32", flash_attn: bool = False, n_ctx: int = 256, seed: int = 0,
              include: Optional[str] = None, verbose: bool = False):
    """Run ``tokens`` through llama.cpp (llama-cpp-python, CPU, 2 threads),
    recorded with ``tracedump.ggml.capture`` into ``trace_path``.

    Step 0 = ``llm.eval(tokens[:-n_decode])`` (one ``llama_decode`` with the
    whole prompt), then one ``llm.eval([t])`` per decode token. ``kv`` is the
    KV-cache type (``"f32"``: ``type_k = type_v = 0``; ``"f16"``: 1, llama.cpp's
    default). ``logits_all=True`` keeps every prompt row. ``include``: the
    capture's regex on tensor names; ``verbose``: llama.cpp's log on stderr
    (says why a GGUF does not load). Returns the logits, numpy float32
    ``[len(tokens), n_vocab]`` (row i predicts token i + 1).
    """
    import llama_cpp
    import numpy as np

    import tracedump.ggml

    kv_type = {"f32": 0, "f16": 1}[kv]
    n_prompt = len(tokens) - n_decode
    if n_prompt < 1 or n_decode < 0:
        raise ValueError(f"{len(tokens)} tokens, n_decode={n_decode}")
    try:
        llm = llama_cpp.Llama(
            model_path=str(gguf_path), n_ctx=n_ctx, logits_all=True, type_k=kv_type, type_v=kv_type,
            flash_attn=flash_attn, verbose=verbose, n_threads=2, n_threads_batch=2, seed=seed,
        )
    except ValueError as e:  # llama.cpp's reason is only in its log
        raise ValueError(f"{e} (run_llama(..., verbose=True) shows llama.cpp's reason; e.g. its QWEN2 "
                         "graph needs num_attention_heads * head_dim == hidden_size)") from e
    try:
        with tracedump.ggml.capture(llm, trace_path, include=include) as cap:
            llm.eval(list(tokens[:n_prompt]))
            for t in tokens[n_prompt:]:
                llm.eval([int(t)])
            n = llm.n_tokens
            logits = np.array(llm.scores[:n], dtype=np.float32, copy=True)
        if n != len(tokens) or cap.step != 1 + n_decode:
            raise RuntimeError(f"llama.cpp evaluated {n} tokens in {cap.step} decodes")
        # logits_all=True: every prompt row was computed (a row llama.cpp did
        # not output would be left all zeros in llm.scores)
        if not (np.isfinite(logits).all() and (logits != 0).any(axis=1).all()):
            raise RuntimeError("llama.cpp returned missing or non-finite logits rows")
    finally:
        llm.close()
    return logits


def run_hf(model, tokens: Sequence[int], n_decode: int, trace_path: os.PathLike, **capture_options):
    """Run ``tokens`` through the HF model, recorded with
    ``tracedump.capture(model, trace_path, inputs=True, **capture_options)``.

    Step 0 = ``model(input_ids=prompt, use_cache=True)``, then one
    ``model(input_ids=[[t]], cache=..., use_cache=True)`` per decode token
    (``past_key_values=`` on transformers that predate ``cache``; positions
    follow the cache). Returns the logits, numpy float32
    ``[len(tokens), vocab_size]``.
    """
    import numpy as np
    import torch

    import tracedump

    n_prompt = len(tokens) - n_decode
    ids = torch.tensor([list(tokens)], dtype=torch.long)
    rows = []
    # transformers >= 5.2x calls the KV cache `cache` (argument and output);
    # `past_key_values` still works there but warns, and goes in 5.40
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    capture_options.setdefault("inputs", True)
    with torch.inference_mode(), tracedump.capture(model, trace_path, **capture_options):
        out = model(input_ids=ids[:, :n_prompt], use_cache=True)
        rows.append(out.logits[0])
        for i in range(n_prompt, len(tokens)):
            out = model(input_ids=ids[:, i:i + 1], use_cache=True, **{key: out[key]})
            rows.append(out.logits[0])
    return np.ascontiguousarray(torch.cat(rows).float().numpy())


def compare(llama_logits, hf_logits, n_prompt: int) -> List[float]:
    """Per step, ``max |llama - hf| / max |hf|`` over that step's logits rows
    (step 0 = the ``n_prompt`` prompt rows, step k = row ``n_prompt + k - 1``)."""
    import numpy as np

    a, b = np.asarray(llama_logits, np.float64), np.asarray(hf_logits, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"logits shapes differ: llama.cpp {a.shape}, HF {b.shape}")
    spans = [(0, n_prompt)] + [(i, i + 1) for i in range(n_prompt, len(a))]
    return [float(np.abs(a[s:e] - b[s:e]).max() / np.abs(b[s:e]).max()) for s, e in spans]


def pair(arch: str, out_dir: os.PathLike, kv: str = "f32", n_decode: int = 3, n_prompt: int = 8,
         seed: int = 0, outtype: str = "f32", flash_attn: bool = False,
         cache: Optional[os.PathLike] = None, ops: bool = True, bug: Optional[str] = None,
         bug_layer: int = 0, **overrides: Any) -> Dict[str, Any]:
    """Everything at once: :func:`make_model`, :func:`default_tokens`, both
    runs into ``out_dir/llama.tdump`` and ``out_dir/hf.tdump``. ``ops``: the
    HF run also records every torch op (``tracedump.capture(..., ops=True)``,
    what the presets pair RoPE, scores and softmax with); ``bug``: a bug of
    :mod:`tests.hfpair.bugs` planted in the HF model's layer ``bug_layer``.
    Returns a dict with ``model, gguf, config, tokens, n_prompt, llama, hf``
    (the paths), ``llama_logits, hf_logits`` and ``rel`` (:func:`compare`)."""
    from .bugs import plant

    out_dir = Path(out_dir)
    model, gguf_path, config = make_model(arch, out_dir, seed=seed, outtype=outtype, cache=cache, **overrides)
    tokens = default_tokens(config, n_prompt, n_decode, seed)
    la, hf = out_dir / "llama.tdump", out_dir / "hf.tdump"
    a = run_llama(gguf_path, tokens, n_decode, la, kv=kv, flash_attn=flash_attn, seed=seed)
    if bug is None:
        b = run_hf(model, tokens, n_decode, hf, ops=ops)
    else:
        with plant(model, bug, bug_layer) as buggy:
            b = run_hf(buggy, tokens, n_decode, hf, ops=ops)
    return dict(model=model, gguf=gguf_path, config=config, tokens=tokens, n_prompt=n_prompt,
                llama=la, hf=hf, llama_logits=a, hf_logits=b, rel=compare(a, b, n_prompt))
