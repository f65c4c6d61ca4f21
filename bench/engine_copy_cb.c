/* The floor of any capture, for bench/engine_cost.py: a ggml eval callback
 * that asks for every tensor and copies each one's ggml_nbytes() bytes out
 * into one reused buffer, and nothing else. Compiled at bench time against
 * llama-cpp-python's own ggml headers and libraries. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-backend.h"
#include "ggml.h"

static void * buf;
static size_t buf_len;
static uint64_t copied_bytes;
static uint64_t copied_tensors;
static uint64_t failures;

bool copy_cb(struct ggml_tensor * t, bool ask, void * user_data) {
    (void) user_data;
    if (ask) {
        return true;
    }
    size_t n = ggml_nbytes(t);
    if (t->data == NULL || n == 0) {
        return true;
    }
    if (buf_len < n) {
        void * p = realloc(buf, n);
        if (p == NULL) {
            failures++;
            return true;
        }
        buf = p;
        buf_len = n;
    }
    if (t->buffer == NULL || ggml_backend_buffer_is_host(t->buffer)) {
        memcpy(buf, t->data, n);
    } else {
        ggml_backend_tensor_get(t, buf, 0, n);
    }
    copied_bytes += n;
    copied_tensors++;
    return true;
}

uint64_t copy_cb_bytes(void) { return copied_bytes; }
uint64_t copy_cb_tensors(void) { return copied_tensors; }
uint64_t copy_cb_failures(void) { return failures; }
