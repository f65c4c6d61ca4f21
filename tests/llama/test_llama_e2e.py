"""End to end on a real llama.cpp: the C adapter records a run of a tiny random
Llama (GQA, f32/f16/Q8_0/Q4_0 weights) through `cb_eval`; from the trace alone
tracedump.reference.attention rebuilds layer 0's (and 1's) Q, K, V and mask
from the KV-cache views as llama.cpp permuted them, and torch SDPA matches
llama.cpp's own attention output — with an f16 cache (flash attention off:
the V cache transposed) and a q8_0 cache (flash attention on).

Needs: llama-cpp-python (pinned in tests/llama/requirements.txt; `make test`
installs it: pip compiles llama.cpp once and caches the wheel), a C compiler,
and target/debug/libtrace_writer.a (`cargo build -p trace-writer`).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tracedump

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def llama_paths():
    try:
        import llama_cpp
    except ImportError as e:  # the requirement is missing: fail loudly
        raise AssertionError("llama-cpp-python is not installed: `make test` installs it") from e
    site = Path(llama_cpp.__file__).resolve().parents[1]
    include, lib = site / "include", Path(llama_cpp.__file__).resolve().parent / "lib"
    assert (include / "ggml.h").exists() and (include / "llama.h").exists(), include
    assert (lib / "libllama.so").exists(), lib
    return include, lib


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    include, lib = llama_paths()
    static = TARGET / "debug" / "libtrace_writer.a"
    assert static.exists(), f"{static} is missing: `cargo build -p trace-writer` makes it"
    tmp = tmp_path_factory.mktemp("llama")
    exe = tmp / "run_llama"
    subprocess.run(
        [
            os.environ.get("CC", "cc"), "-O1", "-Wall", "-Werror", "-o", str(exe),
            str(ROOT / "tests/llama/run_llama.c"), str(ROOT / "trace-writer/ggml/tracedump_ggml.c"),
            f"-I{include}", f"-I{ROOT / 'trace-writer/include'}", f"-I{ROOT / 'trace-writer/ggml'}",
            f"-L{lib}", "-lllama", "-lggml", "-lggml-base", f"-Wl,-rpath,{lib}",
            str(static), "-lpthread", "-ldl", "-lm",
        ],
        check=True,
    )
    model = tmp / "tiny-llama.gguf"
    subprocess.run([sys.executable, str(ROOT / "tests/llama/make_model.py"), str(model)], check=True)
    out = {}
    for label, fa, cache, seqs in (("f16", "0", "f16", "1"), ("q8_0", "1", "q8_0", "1"), ("2seq", "0", "f16", "2")):
        path = tmp / f"{label}.tdump"
        steps = "3" if seqs == "1" else "2"
        p = subprocess.run([str(exe), str(model), str(path), fa, cache, steps, seqs], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        out[label] = (path, [int(x) for x in p.stdout.split()])
    return out


def test_traces_verify_and_runs_agree(runs):
    for label, (path, tokens) in runs.items():
        t = tracedump.open(path)
        rep = t.verify()
        assert rep.ok, (label, rep.faults)
        assert rep.lineages_replayed > 50
        steps = {x.step for x in t.values()}
        assert steps == {0, 1, 2, 3}, steps
        if label == "2seq":
            continue
        assert len(tokens) == 3
        # the graph is all there, embeddings to logits, every layer
        names = set(t.names())
        assert {"inp_tokens", "embd", "kqv_out-0", "kqv_out-1", "ffn_out-1", "result_output"} <= names
        # the recorded logits are the ones llama.cpp sampled from
        for s, token in enumerate(tokens):
            logits = [x for x in t.find("result_output") if x.step == s]
            assert len(logits) == 1
            assert int(logits[0].numpy().reshape(-1, logits[0].shape[-1])[-1].argmax()) == token


@pytest.mark.parametrize("label", ["f16", "q8_0"])
@pytest.mark.parametrize("step", [0, 2])
@pytest.mark.parametrize("layer", [0, 1])
def test_reference_attention_matches_llama_cpp(runs, label, layer, step):
    path, _ = runs[label]
    t = tracedump.open(path)
    r = tracedump.reference.attention(t, layer, step, round_q="ggml")
    n_tok = 6 if step == 0 else 1
    assert r.dims["n_heads"] == 4 and r.dims["n_kv_heads"] == 2 and r.dims["head_dim"] == 32
    assert r.dims["n_tokens"] == n_tok
    assert r.mask is not None  # llama.cpp's KQ mask, recorded as a graph input
    assert r.sources["k"]["name"] == f"cache_k_l{layer} (view) (permuted)"
    assert r.sources["v"]["name"] == f"cache_v_l{layer} (view) (permuted)"
    if label == "q8_0":
        # the quantized cache is read as llama.cpp stored it, and dequantized
        k = [x for x in t.find(f"cache_k_l{layer} (view) (permuted)") if x.step == step][0]
        assert k.dtype == "q8_0"
        assert r.sources["out"]["name"].startswith("node_")  # FLASH_ATTN_EXT is unnamed
    m = r.metrics["sdpa"]
    assert m["max_rel"] <= 1e-3, m
    assert r.metrics["naive"]["max_rel"] <= 1e-3
    assert m["cosine"] > 0.99999


def test_two_sequences_kv_views_at_an_offset(runs):
    # kv_unified off: sequence 1's prompt (step 1) reads its own KV stream,
    # a view at a non-zero view_offs; decode steps batch both sequences
    path, _ = runs["2seq"]
    t = tracedump.open(path)
    k1 = [x for x in t.find("cache_k_l0 (view) (permuted)") if x.step == 1][0]
    assert k1.metadata["ggml.view_offs"] > 0 and k1.storage_offset == k1.metadata["ggml.view_offs"]
    for step, batch, n_tok in ((0, 1, 6), (1, 1, 6), (2, 2, 1), (3, 2, 1)):
        r = tracedump.reference.attention(t, 0, step, round_q="ggml")
        assert (r.dims["batch"], r.dims["n_tokens"]) == (batch, n_tok)
        assert r.metrics["sdpa"]["max_rel"] <= 1e-3, (step, r.metrics["sdpa"])


def test_without_engine_rounding_the_q8_cache_differs_by_llama_cpps_q_quantization(runs):
    # exact math against llama.cpp's q8_0 flash attention: a few percent apart,
    # all of it llama.cpp quantizing Q to q8_0 (round_q="ggml" above closes it)
    path, _ = runs["q8_0"]
    r = tracedump.reference.attention(tracedump.open(path), 0, 0)
    assert 1e-3 < r.metrics["sdpa"]["max_rel"] < 0.2
    assert r.metrics["sdpa"]["cosine"] > 0.999


def test_inspect_shows_the_view_chains(runs):
    path, _ = runs["f16"]
    exe = TARGET / "debug" / "tracedump"
    assert exe.exists(), f"{exe}: `cargo build` makes it"
    out = subprocess.run([str(exe), "inspect", str(path)], capture_output=True, text=True, check=True).stdout
    assert "cache_k_l0 (view) (permuted)" in out
    assert "→ permute(0,2,1,3) → [ggml PERMUTE]" in out
    assert "[ggml SET_ROWS]" in out and "[ggml SOFT_MAX]" in out
    assert "L0 S2" in out


def test_llama_cpp_python_capture(runs, tmp_path):
    # the same adapter installed into a llama_cpp.Llama through the low-level API
    import llama_cpp

    model = next(iter(runs.values()))[0].parent / "tiny-llama.gguf"
    llm = llama_cpp.Llama(
        model_path=str(model), n_ctx=64, n_batch=64, n_threads=2, flash_attn=True,
        type_k=llama_cpp.GGML_TYPE_Q8_0, type_v=llama_cpp.GGML_TYPE_Q8_0, verbose=False,
    )
    path = tmp_path / "llcp.tdump"
    with tracedump.ggml.capture(llm, path) as cap:
        llm.eval([1, 260, 262, 263, 100, 120])
        llm.eval([runs["q8_0"][1][0]])
    assert cap.records > 100
    t = tracedump.open(path)
    assert t.verify().ok and sorted({x.step for x in t.values()}) == [0, 1]
    # the build that ran, for the reference's emulation of its kernels
    assert t.metadata["engine"] == "ggml"
    assert t.metadata["ggml.system_info"] == llama_cpp.llama_print_system_info().decode()
    for step, n_tok in ((0, 6), (1, 1)):
        r = tracedump.reference.attention(t, 0, step, round_q="ggml")
        assert r.dims["n_tokens"] == n_tok and r.metrics["sdpa"]["max_rel"] <= 1e-3
    # the run is the C driver's: the same logits at step 0
    c_run = tracedump.open(runs["q8_0"][0])
    a = [x for x in t.find("result_output") if x.step == 0][0].numpy()
    b = [x for x in c_run.find("result_output") if x.step == 0][0].numpy()
    assert a.shape == b.shape and abs(a - b).max() == 0
    # the Llama goes on with its own context afterwards
    llm.eval([1, 260])
    assert llm.n_tokens == 2


def test_a_quantized_cache_against_an_f16_one_names_the_rotation(tmp_path):
    # with a head dim of 64, llama.cpp rotates K (a MUL_MAT with
    # attn_inp_k_rot) before writing a quantized cache: against an f16-cache
    # run of the same model and tokens, the cache's blame names that op,
    # once, with the later decode steps as repeats of it
    import llama_cpp

    model = tmp_path / "tiny-64.gguf"
    subprocess.run([sys.executable, str(ROOT / "tests/llama/make_model.py"), str(model), "--head-dim", "64"], check=True)
    paths = {}
    for label, kw in (("q8_0", dict(flash_attn=True, type_k=llama_cpp.GGML_TYPE_Q8_0, type_v=llama_cpp.GGML_TYPE_Q8_0)),
                      ("f16", dict(flash_attn=False))):
        llm = llama_cpp.Llama(model_path=str(model), n_ctx=64, n_batch=64, n_threads=2, verbose=False, **kw)
        paths[label] = tmp_path / f"{label}.tdump"
        with tracedump.ggml.capture(llm, paths[label]):
            llm.eval([1, 260, 262, 263, 100, 120])
            for token in (264, 265, 266):
                llm.eval([token])
    r = tracedump.compare(str(paths["q8_0"]), str(paths["f16"]))
    assert not r.agrees
    cache = [x for x in r.blamed if x["key"].startswith("cache_k_l0")]
    assert cache, [x["key"] for x in r.blamed]
    first, later = cache[0], cache[1:]
    path = [f for f in first["diagnosis"] if f["kind"] == "path"]
    assert first["diagnosed"] and path, first
    # two runs of one engine: the op only one of them has is the likely cause
    assert first["diagnosis"][0]["kind"] == "path", [f["evidence"] for f in first["diagnosis"]]
    assert any("attn_inp_k_rot" in op and "mul_mat" in op for op in path[0]["only_a"]), path
    assert path[0]["only_b"] == [], path
    assert later and all(x["same_op_as"] == first["index"] and not x["diagnosed"] for x in later), later
    steps = {r.pairs[x["index"]]["step"] for x in cache}
    assert steps == {0, 1, 2, 3}, steps
