/* Run a GGUF model with llama.cpp and record every evaluated tensor with the
 * tracedump ggml adapter: a prompt, then decode steps (greedy).
 * Usage: run_llama MODEL.gguf OUT.tdump FLASH_ATTN(0|1) CACHE_TYPE(f16|q8_0) [DECODE_STEPS]
 * Prints the generated token ids. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"
#include "tracedump_ggml.h"

static void quiet(enum ggml_log_level level, const char * text, void * ud) {
    (void) ud;
    if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

int main(int argc, char ** argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s MODEL OUT FLASH_ATTN CACHE_TYPE [STEPS]\n", argv[0]);
        return 2;
    }
    int fa = atoi(argv[3]);
    enum ggml_type cache = strcmp(argv[4], "q8_0") == 0 ? GGML_TYPE_Q8_0 : GGML_TYPE_F16;
    int steps = argc > 5 ? atoi(argv[5]) : 3;

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
    cp.cb_eval = tracedump_ggml_cb;
    cp.cb_eval_user_data = td;
    struct llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "cannot create the context\n"); return 1; }

    llama_token prompt[6] = {1, 260, 262, 263, 100, 120};
    tracedump_ggml_step(td, 0);
    if (llama_decode(ctx, llama_batch_get_one(prompt, 6)) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
    int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    for (int s = 1; s <= steps; s++) {
        const float * logits = llama_get_logits_ith(ctx, -1);
        llama_token best = 0;
        for (int i = 1; i < n_vocab; i++) if (logits[i] > logits[best]) best = i;
        printf("%d\n", best);
        tracedump_ggml_step(td, s);
        if (llama_decode(ctx, llama_batch_get_one(&best, 1)) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
    }
    llama_free(ctx);
    unsigned long long records = tracedump_ggml_records(td), errors = tracedump_ggml_errors(td);
    if (errors) fprintf(stderr, "tracedump: %llu errors, first: %s\n", errors, tracedump_ggml_last_error(td));
    if (tracedump_ggml_close(td) != 0) return 1;
    llama_model_free(model);
    fprintf(stderr, "tracedump: %llu records\n", records);
    return errors ? 1 : 0;
}
