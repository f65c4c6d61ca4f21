"""A tiny random-weight Llama as GGUF, for the llama.cpp end-to-end test.

2 layers, n_embd 128, 4 heads and 2 KV heads (GQA) of head_dim 32, FFN 256,
an SPM vocab with the 256 byte tokens; weights in f32 (norms), f16, Q8_0 and
Q4_0. `--head-dim 64` makes 2 heads and 1 KV head of 64 instead (llama.cpp
rotates K and V before a quantized cache only when the head dim is a
multiple of 64). Usage: make_model.py OUT.gguf [--seed N] [--head-dim D]
"""

import argparse

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter, TokenType
from gguf.quants import quantize

N_EMBD, N_LAYER, N_HEAD, N_HEAD_KV, HEAD_DIM, N_FF = 128, 2, 4, 2, 32, 256


def vocab():
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(TokenType.BYTE)
    for i, w in enumerate(["▁the", "▁a", "▁tensor", "▁trace", "▁dump", "▁layer", "▁head", "▁cache"]):
        tokens.append(w)
        scores.append(-float(i))
        types.append(TokenType.NORMAL)
    return tokens, scores, types


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--head-dim", type=int, default=HEAD_DIM, choices=[32, 64])
    args = ap.parse_args()
    head_dim = args.head_dim
    n_head = N_EMBD // head_dim
    n_head_kv = n_head // 2
    rng = np.random.default_rng(args.seed)
    tokens, scores, types = vocab()
    n_vocab = len(tokens)

    w = GGUFWriter(args.out, "llama")
    w.add_name("tracedump-tiny-llama")
    w.add_context_length(256)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(1)  # mostly f16
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def mat(rows, cols, scale=None):
        s = scale if scale is not None else 1.0 / np.sqrt(cols)
        return (rng.standard_normal((rows, cols)) * s).astype(np.float32)

    def add(name, x, kind):
        if kind == "f32":
            w.add_tensor(name, x.astype(np.float32))
        elif kind == "f16":
            w.add_tensor(name, x.astype(np.float16))
        else:
            qt = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[kind]
            q = quantize(x, qt)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qt)

    add("token_embd.weight", mat(n_vocab, N_EMBD, 1.0), "f16")
    for il in range(N_LAYER):
        p = f"blk.{il}."
        add(p + "attn_norm.weight", 1 + 0.1 * rng.standard_normal(N_EMBD).astype(np.float32), "f32")
        # larger Q/K weights: attention that is far from uniform
        add(p + "attn_q.weight", mat(n_head * head_dim, N_EMBD, 3 / np.sqrt(N_EMBD)), "q8_0" if il == 0 else "f16")
        add(p + "attn_k.weight", mat(n_head_kv * head_dim, N_EMBD, 3 / np.sqrt(N_EMBD)), "f16")
        add(p + "attn_v.weight", mat(n_head_kv * head_dim, N_EMBD), "q4_0" if il == 1 else "f16")
        add(p + "attn_output.weight", mat(N_EMBD, n_head * head_dim), "q8_0")
        add(p + "ffn_norm.weight", 1 + 0.1 * rng.standard_normal(N_EMBD).astype(np.float32), "f32")
        add(p + "ffn_gate.weight", mat(N_FF, N_EMBD), "q4_0")
        add(p + "ffn_up.weight", mat(N_FF, N_EMBD), "f16")
        add(p + "ffn_down.weight", mat(N_EMBD, N_FF), "q8_0")
    add("output_norm.weight", np.ones(N_EMBD, np.float32), "f32")
    add("output.weight", mat(n_vocab, N_EMBD), "f16")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
