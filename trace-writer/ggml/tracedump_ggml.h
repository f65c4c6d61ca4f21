/* tracedump ggml eval-callback adapter.
 *
 * Compile tracedump_ggml.c into your engine against your own ggml.h and
 * link libtrace_writer (.a or .so; header: trace-writer/include/tracedump.h):
 *
 *     struct tracedump_ggml * td = tracedump_ggml_open("run.tdump", NULL);
 *     cparams.cb_eval = tracedump_ggml_cb;
 *     cparams.cb_eval_user_data = td;
 *     ... for each llama_decode: tracedump_ggml_step(td, step); llama_decode(...);
 *     tracedump_ggml_close(td);   (after the context is freed or idle)
 *
 * Every evaluated tensor the filter keeps is recorded with its name, op,
 * type (quantized types raw), ne/nb, view_src/view_offs, op_params and src[]
 * as parents by record id (SPEC.md §7). The graph inputs a recorded tensor
 * reads -- leaves flagged GGML_TENSOR_FLAG_INPUT (attn_inp_kq_mask,
 * inp_pos, inp_tokens), and the views and conversions of them it reads
 * through (VIEW, RESHAPE, PERMUTE, TRANSPOSE, CPY, CONT: the f16 copy of the
 * mask flash attention reads) -- are recorded before it, once per graph,
 * whatever the filter. Host and device buffers both work (device data is
 * copied out with ggml_backend_tensor_get).
 *
 * Options (tracedump_ggml_open_with, a td_ggml_options from tracedump.h,
 * all zero by default):
 *
 *     td_ggml_options o = {0};
 *     int64_t layers[] = {3};
 *     o.layers = layers; o.n_layers = 1;   only layer 3 (and its inputs)
 *     o.stats_only = 1;                    statistics, not bytes
 *     o.background = 1;                    a writer thread does the I/O
 *     struct tracedump_ggml * td = tracedump_ggml_open_with("run.tdump", &o);
 *
 * The filter is answered when ggml asks about a node, so a tensor left out
 * costs ggml's scheduler nothing.
 */
#ifndef TRACEDUMP_GGML_H
#define TRACEDUMP_GGML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tracedump.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ggml_tensor;
struct tracedump_ggml;

/* Open `path`; `name_regex` (NULL: everything) selects tensor names.
 * NULL on error: tracedump_ggml_last_error() says why. */
struct tracedump_ggml * tracedump_ggml_open(const char * path, const char * name_regex);

/* Open `path` with options (NULL: everything, full bytes, sync mode; see
 * td_ggml_options in tracedump.h). NULL on error (it is printed to stderr). */
struct tracedump_ggml * tracedump_ggml_open_with(const char * path, const td_ggml_options * opts);

/* tracedump_ggml_open_with, and `n` run metadata pairs beside the adapter's
 * own (engine, ggml.adapter): what a reader needs to know about the build
 * that ran, e.g. "ggml.system_info" = llama_print_system_info(), which
 * tracedump.reference.attention reads to sum K·Q in the order of ggml's
 * SIMD vec_dot. The strings are copied. */
struct tracedump_ggml * tracedump_ggml_open_meta(const char * path, const td_ggml_options * opts,
                                                 const char * const * keys, const char * const * values,
                                                 size_t n);

/* Tag the records of the next graph(s) with `step` (a decode call). */
void tracedump_ggml_step(struct tracedump_ggml * td, int64_t step);

/* The eval callback (llama_context_params.cb_eval / ggml_backend_sched_set_eval_callback),
 * with the tracedump_ggml as user_data. Always lets evaluation go on. */
bool tracedump_ggml_cb(struct ggml_tensor * t, bool ask, void * user_data);

/* Records written and errors met so far (an error does not stop evaluation). */
uint64_t tracedump_ggml_records(const struct tracedump_ggml * td);
uint64_t tracedump_ggml_errors(const struct tracedump_ggml * td);

/* The first error met, or "" */
const char * tracedump_ggml_last_error(const struct tracedump_ggml * td);

/* Write the footer and free; returns 0 on success. */
int tracedump_ggml_close(struct tracedump_ggml * td);

#ifdef __cplusplus
}
#endif

#endif
