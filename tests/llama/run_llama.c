/* Run a GGUF model with llama.cpp and record every evaluated tensor with the
 * tracedump ggml adapter: a prompt, then decode steps (greedy).
 * Usage: run_llama MODEL.gguf OUT.tdump FLASH_ATTN(0|1) CACHE_TYPE(f16|q8_0) [DECODE_STEPS] [SEQS]
 * Prints the generated token ids. With SEQS = 2, a second sequence (its own
 * KV stream: kv_unified off) gets the same prompt at step 1 and then decodes
 * alongside the first: its KV views start at a non-zero view_offs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"
#include "tracedump_ggml.h"

static void quiet(enum ggml_log_level level, const char * text, void * ud) {
    (void) ud;
    if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static llama_token argmax(const float * logits, int n) {
    llama_token best = 0;
    for (int i = 1; i < n; i++) if (logits[i] > logits[best]) best = i;
    return best;
}

int main(int argc, char ** argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s MODEL OUT FLASH_ATTN CACHE_TYPE [STEPS]\n", argv[0]);
        return 2;
    }
    int fa = atoi(argv[3]);
    enum ggml_type cache = strcmp(argv[4], "q8_0") == 0 ? GGML_TYPE_Q8_0 : GGML_TYPE_F16;
    int steps = argc > 5 ? atoi(argv[5]) : 3;
    int seqs = argc > 6 ? atoi(argv[6]) : 1;

    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "cannot load %s\n", argv[1]); return 1; }

    struct tracedump_ggml * td = tracedump_ggml_open(argv[2], NULL);
    if (!td) return 1;

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 64;
    cp.n_batch = 64;
    cp.n_ubatch = 64;
    cp.n_threads = 2;
    cp.n_threads_batch = 2;
    cp.flash_attn_type = fa ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = cache;
    cp.type_v = cache;
    cp.n_seq_max = (uint32_t) seqs;
    cp.kv_unified = seqs == 1;
    cp.cb_eval = tracedump_ggml_cb;
    cp.cb_eval_user_data = td;
    struct llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "cannot create the context\n"); return 1; }

    llama_token prompt[6] = {1, 260, 262, 263, 100, 120};
    int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    struct llama_batch batch = llama_batch_init(8, 0, 2);
    llama_token next[2] = {0, 0};
    int64_t step = 0;
    /* the prompt of each sequence (sequence 1: other tokens), one step each */
    for (int seq = 0; seq < seqs; seq++) {
        batch.n_tokens = 6;
        for (int i = 0; i < 6; i++) {
            batch.token[i] = seq == 0 ? prompt[i] : prompt[5 - i] + 1;
            batch.pos[i] = i;
            batch.n_seq_id[i] = 1;
            batch.seq_id[i][0] = seq;
            batch.logits[i] = i == 5;
        }
        tracedump_ggml_step(td, step++);
        if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
        next[seq] = argmax(llama_get_logits_ith(ctx, -1), n_vocab);
    }
    /* decode steps: one token per sequence, all sequences in one batch */
    for (int s = 0; s < steps; s++) {
        printf("%d\n", next[0]);
        batch.n_tokens = seqs;
        for (int seq = 0; seq < seqs; seq++) {
            batch.token[seq] = next[seq];
            batch.pos[seq] = 6 + s;
            batch.n_seq_id[seq] = 1;
            batch.seq_id[seq][0] = seq;
            batch.logits[seq] = 1;
        }
        tracedump_ggml_step(td, step++);
        if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
        for (int seq = 0; seq < seqs; seq++) next[seq] = argmax(llama_get_logits_ith(ctx, seq), n_vocab);
    }
    llama_batch_free(batch);
    llama_free(ctx);
    unsigned long long records = tracedump_ggml_records(td), errors = tracedump_ggml_errors(td);
    if (errors) fprintf(stderr, "tracedump: %llu errors, first: %s\n", errors, tracedump_ggml_last_error(td));
    if (tracedump_ggml_close(td) != 0) return 1;
    llama_model_free(model);
    fprintf(stderr, "tracedump: %llu records\n", records);
    return errors ? 1 : 0;
}
