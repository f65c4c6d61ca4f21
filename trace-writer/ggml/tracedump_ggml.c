/* tracedump ggml eval-callback adapter: see tracedump_ggml.h. */
#include "tracedump_ggml.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml.h"
#include "ggml-backend.h"
#include "tracedump.h"

struct tracedump_ggml {
    td_ggml * rec;
    uint64_t records;
    uint64_t newest_id;  /* record ids grow: an older one is a graph input recorded before */
    uint64_t errors;
    char error[512];
    void * scratch;      /* device data copied out */
    size_t scratch_len;
};

struct tracedump_ggml * tracedump_ggml_open_meta(const char * path, const td_ggml_options * opts,
                                                 const char * const * keys, const char * const * values,
                                                 size_t n) {
    if (n > 0 && (keys == NULL || values == NULL)) {
        fprintf(stderr, "tracedump_ggml_open: %zu metadata pairs without keys or values\n", n);
        return NULL;
    }
    struct tracedump_ggml * td = calloc(1, sizeof *td);
    const char ** all_keys = calloc(n + 2, sizeof *all_keys);
    const char ** all_values = calloc(n + 2, sizeof *all_values);
    if (!td || !all_keys || !all_values) {
        free(td);
        free(all_keys);
        free(all_values);
        return NULL;
    }
    all_keys[0] = "engine";
    all_values[0] = "ggml";
    all_keys[1] = "ggml.adapter";
    all_values[1] = "tracedump_ggml.c";
    for (size_t i = 0; i < n; i++) {
        all_keys[i + 2] = keys[i];
        all_values[i + 2] = values[i];
    }
    td->rec = td_ggml_open_with(path, all_keys, all_values, n + 2, opts);
    free(all_keys);
    free(all_values);
    if (!td->rec) {
        fprintf(stderr, "tracedump_ggml_open: %s\n", td_last_error());
        free(td);
        return NULL;
    }
    return td;
}

struct tracedump_ggml * tracedump_ggml_open_with(const char * path, const td_ggml_options * opts) {
    return tracedump_ggml_open_meta(path, opts, NULL, NULL, 0);
}

struct tracedump_ggml * tracedump_ggml_open(const char * path, const char * name_regex) {
    td_ggml_options opts;
    memset(&opts, 0, sizeof opts);
    opts.name_regex = name_regex;
    return tracedump_ggml_open_with(path, &opts);
}

void tracedump_ggml_step(struct tracedump_ggml * td, int64_t step) {
    if (td) {
        td_ggml_set_step(td->rec, step);
    }
}

/* The bytes of `t` (all ggml_nbytes of them), from host memory or copied out. */
static const void * bytes_of(struct tracedump_ggml * td, const struct ggml_tensor * t, size_t n) {
    if (t->data == NULL) {
        return NULL;
    }
    if (t->buffer == NULL || ggml_backend_buffer_is_host(t->buffer)) {
        return t->data;
    }
    if (td->scratch_len < n) {
        void * p = realloc(td->scratch, n);
        if (!p) {
            return NULL;
        }
        td->scratch = p;
        td->scratch_len = n;
    }
    ggml_backend_tensor_get(t, td->scratch, 0, n);
    return td->scratch;
}

static void fail(struct tracedump_ggml * td, const char * name, const char * why) {
    if (td->errors++ == 0) {
        snprintf(td->error, sizeof td->error, "tensor `%s`: %s", name, why);
    }
}

static void record(struct tracedump_ggml * td, struct ggml_tensor * t, int once) {
    const void * srcs[GGML_MAX_SRC];
    const char * src_names[GGML_MAX_SRC];
    size_t n_srcs = 0;
    for (int i = 0; i < GGML_MAX_SRC; i++) {
        if (t->src[i]) {
            n_srcs = (size_t) i + 1;
        }
    }
    for (size_t i = 0; i < n_srcs; i++) {
        srcs[i] = t->src[i];
        src_names[i] = t->src[i] ? ggml_get_name(t->src[i]) : NULL;
    }
    const struct ggml_tensor * owner = t->view_src ? t->view_src : t;
    size_t n = ggml_nbytes(owner);
    const void * data = bytes_of(td, owner, n);
    if (data == NULL && n > 0) {
        fail(td, ggml_get_name(t), "no data to read");
        return;
    }
    td_ggml_node node;
    memset(&node, 0, sizeof node);
    node.name = ggml_get_name(t);
    node.op = ggml_op_name(t->op);
    node.ggml_type = (uint32_t) t->type;
    for (int i = 0; i < 4; i++) {
        node.ne[i] = t->ne[i];
        node.nb[i] = (uint64_t) t->nb[i];
    }
    node.op_params = t->op_params;
    node.op_params_len = sizeof t->op_params;
    node.key = t;
    node.srcs = srcs;
    node.src_names = src_names;
    node.n_srcs = n_srcs;
    node.data = data;
    node.data_len = n;
    node.view_src = t->view_src;
    node.view_src_name = t->view_src ? ggml_get_name(t->view_src) : NULL;
    node.view_offs = (uint64_t) t->view_offs;
    node.once = once;
    uint64_t id = 0;
    int rc = td_ggml_record(td->rec, &node, &id);
    if (rc == TD_ERROR) {
        fail(td, node.name, td_last_error());
    } else if (rc == TD_OK && (td->records == 0 || id > td->newest_id)) {
        /* a graph input already recorded in this graph comes back with its old id */
        td->records++;
        td->newest_id = id;
    }
}

/* Whether `s` is a graph input (a leaf with GGML_TENSOR_FLAG_INPUT:
 * attn_inp_kq_mask, inp_pos, inp_tokens...) or a view or conversion of one
 * (VIEW, RESHAPE, PERMUTE, TRANSPOSE, CPY, CONT of src[0]: the f16 copy of
 * the mask that flash attention reads). */
static int is_input(const struct ggml_tensor * s, int depth) {
    if (s == NULL || depth > 8) {
        return 0;
    }
    if (s->op == GGML_OP_NONE) {
        return (s->flags & GGML_TENSOR_FLAG_INPUT) != 0;
    }
    switch (s->op) {
        case GGML_OP_VIEW:
        case GGML_OP_RESHAPE:
        case GGML_OP_PERMUTE:
        case GGML_OP_TRANSPOSE:
        case GGML_OP_CPY:
        case GGML_OP_CONT:
            return is_input(s->src[0], depth + 1);
        default:
            return 0;
    }
}

/* Record the graph input `s` reads from, then `s`, each once per graph.
 * Their bytes are intact: a source outlives its users' evaluation. */
static void record_input(struct tracedump_ggml * td, struct ggml_tensor * s) {
    if (s->op != GGML_OP_NONE) {
        record_input(td, s->src[0]);
    }
    record(td, s, 1);
}

bool tracedump_ggml_cb(struct ggml_tensor * t, bool ask, void * user_data) {
    struct tracedump_ggml * td = user_data;
    if (td == NULL || t == NULL) {
        return true;
    }
    if (ask) {
        /* no for a tensor the filter leaves out: ggml's scheduler then does
         * not stop the graph at it */
        const void * srcs[GGML_MAX_SRC];
        size_t n_srcs = 0;
        for (int i = 0; i < GGML_MAX_SRC; i++) {
            srcs[i] = t->src[i];
            if (t->src[i]) {
                n_srcs = (size_t) i + 1;
            }
        }
        /* a node that writes into memory it views (SET_ROWS, CPY into a
         * view of the KV cache): the owner's bytes change here */
        const void * writes = NULL;
        if (t->view_src != NULL && t->op != GGML_OP_VIEW && t->op != GGML_OP_RESHAPE &&
            t->op != GGML_OP_PERMUTE && t->op != GGML_OP_TRANSPOSE && t->op != GGML_OP_NONE) {
            writes = t->view_src;
        }
        return td_ggml_ask_node(td->rec, t, ggml_get_name(t), srcs, n_srcs, writes) == 1;
    }
    /* the graph inputs this node reads (attn_inp_kq_mask, inp_pos...) are
     * leaves the callback never sees: record them first, whatever the
     * filter, once per graph */
    for (int i = 0; i < GGML_MAX_SRC; i++) {
        if (is_input(t->src[i], 0)) {
            record_input(td, t->src[i]);
        }
    }
    record(td, t, 0);
    return true;
}

uint64_t tracedump_ggml_records(const struct tracedump_ggml * td) { return td ? td->records : 0; }
uint64_t tracedump_ggml_errors(const struct tracedump_ggml * td) { return td ? td->errors : 0; }
const char * tracedump_ggml_last_error(const struct tracedump_ggml * td) { return td ? td->error : ""; }

int tracedump_ggml_close(struct tracedump_ggml * td) {
    if (!td) {
        return 0;
    }
    int rc = td_ggml_close(td->rec);
    if (rc != TD_OK) {
        fprintf(stderr, "tracedump_ggml_close: %s\n", td_last_error());
    }
    free(td->scratch);
    free(td);
    return rc == TD_OK ? 0 : -1;
}
