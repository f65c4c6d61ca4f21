/* Exercises every function of tracedump.h; check_capi.py then reads the
 * trace back and checks every value. Usage: capi_test OUT.tdump */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#include "tracedump.h"

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n", __FILE__, __LINE__, \
                    #cond, td_last_error());                                           \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

static td_writer * W;

static void * worker(void * arg) {
    int k = (int) (size_t) arg;
    float v[16];
    for (int i = 0; i < 100; i++) {
        for (int j = 0; j < 16; j++) v[j] = (float) (k * 1000 + i * 16 + j);
        char name[32];
        snprintf(name, sizeof name, "thread%d.%d", k, i);
        int64_t shape[1] = {16};
        CHECK(td_add_tensor(W, name, 0, 1, shape, NULL, TD_ORDER_CANONICAL, 0, v, sizeof v, NULL, NULL) == TD_OK);
    }
    return NULL;
}

int main(int argc, char ** argv) {
    CHECK(argc == 2);
    int f32 = td_dtype_from_name("f32"), f16 = td_dtype_from_name("f16"), q8 = td_dtype_from_name("q8_0");
    CHECK(f32 == 0 && f16 == 1 && q8 == 8);
    CHECK(td_dtype_from_name("nope") == -1 && td_dtype_from_name(NULL) == -1);

    /* errors are values, never crashes */
    CHECK(td_writer_open(NULL, NULL, NULL, 0, 0, 0, 0, NULL) == NULL);
    CHECK(strstr(td_last_error(), "path is NULL") != NULL);
    CHECK(td_writer_open("/nonexistent-dir/x.tdump", NULL, NULL, 0, 0, 0, 0, NULL) == NULL);
    CHECK(strlen(td_last_error()) > 0);
    CHECK(td_writer_close(NULL) == TD_OK);
    CHECK(td_writer_flush(NULL) == TD_ERROR);
    CHECK(td_writer_preallocate(NULL) == TD_ERROR);

    const char * keys[] = {"engine", "model"};
    const char * values[] = {"capi_test", "tiny"};
    CHECK(td_writer_open(argv[1], keys, values, 2, 0, 0, 0, "(") == NULL);
    CHECK(strstr(td_last_error(), "name_regex") != NULL);
    W = td_writer_open(argv[1], keys, values, 2, 0, 0, 0, "^([^s]|s[^k])"); /* not "sk..." */
    CHECK(W != NULL);
    CHECK(td_writer_preallocate(W) == TD_OK); /* sync mode: nothing to do */

    /* 1. contiguous f32, canonical order, with every metadata kind */
    float a[2][3] = {{1, 2, 3}, {4, 5, 6}};
    int64_t shape_a[2] = {2, 3};
    td_meta * m = td_meta_new();
    CHECK(td_meta_layer(m, 3) == TD_OK && td_meta_step(m, 1) == TD_OK && td_meta_role(m, "q") == TD_OK);
    CHECK(td_meta_str(m, "note", "hello") == TD_OK && td_meta_int(m, "n", -7) == TD_OK &&
          td_meta_float(m, "x", 0.5) == TD_OK);
    uint64_t id_a = 99;
    CHECK(td_add_tensor(W, "a", f32, 2, shape_a, NULL, TD_ORDER_CANONICAL, 0, a, sizeof a, m, &id_a) == TD_OK);
    td_meta_free(m);

    /* 2. its transpose as a view of a's bytes, with lineage */
    int64_t shape_t[2] = {3, 2}, strides_t[2] = {4, 12};
    m = td_meta_new();
    CHECK(td_meta_parent(m, id_a) == TD_OK && td_meta_transpose(m, 0, 1) == TD_OK);
    uint64_t id_t = 0;
    CHECK(td_add_view(W, "a_t", f32, 2, shape_t, strides_t, TD_ORDER_CANONICAL, id_a, 0, m, &id_t) == TD_OK);
    td_meta_free(m);

    /* 3. a ggml-order KV view over a storage: ne=[4,3,2,1] f16, permuted nb */
    uint16_t cache[2 * 3 * 4];
    for (int i = 0; i < 24; i++) cache[i] = (uint16_t) (0x3C00 + i); /* 1.0 + i ulp */
    uint64_t sid = 0;
    CHECK(td_add_storage(W, "cache_k_l0", cache, sizeof cache, &sid) == TD_OK);
    int64_t ne[4] = {4, 3, 2, 1};
    int64_t nb[4] = {2, 16, 8, 48}; /* heads and positions swapped */
    m = td_meta_new();
    CHECK(td_meta_engine_op(m, "ggml", "VIEW", NULL, 0) == TD_OK);
    uint64_t id_k = 0;
    CHECK(td_add_view(W, "k-0", f16, 4, ne, nb, TD_ORDER_GGML, sid, 0, m, &id_k) == TD_OK);
    td_meta_free(m);

    /* 4. a permute step in ggml's terms, plus view/reshape/op/ggml_layout builders */
    m = td_meta_new();
    uint32_t perm[4] = {0, 2, 1, 3};
    CHECK(td_meta_parent(m, id_k) == TD_OK && td_meta_permute(m, 4, perm, TD_ORDER_GGML) == TD_OK);
    int64_t ne_p[4] = {4, 2, 3, 1};
    int64_t nb_p[4] = {2, 8, 16, 48};
    uint64_t id_p = 0;
    CHECK(td_add_view(W, "k-0.permuted", f16, 4, ne_p, nb_p, TD_ORDER_GGML, sid, 0, m, &id_p) == TD_OK);
    td_meta_free(m);

    m = td_meta_new();
    int64_t vshape[2] = {2, 2}, vstrides[2] = {12, 4};
    int64_t rshape[1] = {4};
    uint64_t gnb[2] = {4, 12};
    int64_t gne[2] = {3, 2};
    CHECK(td_meta_parent(m, id_a) == TD_OK);
    CHECK(td_meta_view(m, 4, 2, vshape, vstrides, TD_ORDER_CANONICAL) == TD_OK);
    CHECK(td_meta_op(m, 5, 0) == TD_OK);             /* cont */
    CHECK(td_meta_reshape(m, 1, rshape, TD_ORDER_CANONICAL) == TD_OK);
    CHECK(td_meta_op(m, 6, f16) == TD_OK);           /* convert to f16 */
    CHECK(td_meta_op(m, 4, 0) == TD_ERROR);          /* not a value step */
    CHECK(td_meta_op(m, 6, 12345) == TD_ERROR);      /* unknown dtype */
    CHECK(td_meta_ggml_layout(m, 2, gne, gnb) == TD_OK);
    uint16_t sub[4] = {0x4000, 0x4200, 0x4500, 0x4600}; /* 2 3 5 6 */
    int64_t shape_s[1] = {4};
    uint64_t id_s = 0;
    CHECK(td_add_tensor(W, "a.sub.f16", f16, 1, shape_s, NULL, TD_ORDER_CANONICAL, 0, sub, sizeof sub, m, &id_s) == TD_OK);
    td_meta_free(m);

    /* 4b. computed from an input by an op, with typed parameters (format 1.1) */
    m = td_meta_new();
    uint64_t inputs[1] = {id_a};
    CHECK(td_meta_computed_from(m, "scale", inputs, 1) == TD_OK);
    CHECK(td_meta_op_param_f64(m, "scale", 2.0) == TD_OK);
    CHECK(td_meta_op_param_i64(m, "mode", 0) == TD_OK);
    CHECK(td_meta_computed_from(m, NULL, inputs, 1) == TD_ERROR); /* names the argument */
    float twice[6] = {2, 4, 6, 8, 10, 12};
    CHECK(td_add_tensor(W, "a.scaled", f32, 2, shape_a, NULL, TD_ORDER_CANONICAL, 0, twice, sizeof twice, m, NULL) == TD_OK);
    td_meta_free(m);

    /* 5. statistics only */
    float big[1000];
    for (int i = 0; i < 1000; i++) big[i] = (float) i;
    int64_t shape_b[1] = {1000};
    CHECK(td_add_stats(W, "stats", f32, 1, shape_b, TD_ORDER_CANONICAL, big, sizeof big, NULL, NULL) == TD_OK);

    /* 6. filtered out, and errors naming the tensor */
    CHECK(td_add_tensor(W, "skipped", f32, 2, shape_a, NULL, TD_ORDER_CANONICAL, 0, a, sizeof a, NULL, NULL) == TD_SKIPPED);
    CHECK(td_add_tensor(W, "short", f32, 2, shape_a, NULL, TD_ORDER_CANONICAL, 0, a, 8, NULL, NULL) == TD_ERROR);
    CHECK(strstr(td_last_error(), "short") != NULL);
    CHECK(td_add_tensor(W, "baddtype", 9999, 2, shape_a, NULL, TD_ORDER_CANONICAL, 0, a, sizeof a, NULL, NULL) == TD_ERROR);
    CHECK(strstr(td_last_error(), "baddtype") != NULL);
    CHECK(td_add_tensor(W, "nullshape", f32, 2, NULL, NULL, TD_ORDER_CANONICAL, 0, a, sizeof a, NULL, NULL) == TD_ERROR);
    CHECK(td_add_view(W, "badstorage", f32, 2, shape_a, NULL, TD_ORDER_CANONICAL, 12345, 0, NULL, NULL) == TD_ERROR);
    CHECK(td_add_tensor(W, "badorder", f32, 2, shape_a, NULL, 7, 0, a, sizeof a, NULL, NULL) == TD_ERROR);
    CHECK(td_meta_layer(NULL, 1) == TD_ERROR);

    /* 7. threads */
    pthread_t th[4];
    for (size_t k = 0; k < 4; k++) CHECK(pthread_create(&th[k], NULL, worker, (void *) k) == 0);
    for (int k = 0; k < 4; k++) pthread_join(th[k], NULL);
    CHECK(td_writer_flush(W) == TD_OK);
    CHECK(td_writer_close(W) == TD_OK);

    /* 8. the ggml recorder with synthetic nodes: an owner, a VIEW and a PERMUTE of it */
    char path2[4096];
    snprintf(path2, sizeof path2, "%s.ggml.tdump", argv[1]);
    td_ggml * g = td_ggml_open(path2, NULL, NULL, 0, 1, 1 << 20, 0, NULL);
    CHECK(g != NULL);
    CHECK(td_ggml_wants(g, "x") == 1 && td_ggml_wants(NULL, "x") == 0);
    CHECK(td_ggml_set_step(g, 0) == TD_OK);
    float owner[24];
    for (int i = 0; i < 24; i++) owner[i] = (float) i;
    int dummy_owner, dummy_view, dummy_perm;
    td_ggml_node n;
    memset(&n, 0, sizeof n);
    n.name = "kq-0"; n.op = "MUL_MAT"; n.ggml_type = 0;
    n.ne[0] = 4; n.ne[1] = 3; n.ne[2] = 2; n.ne[3] = 1;
    n.nb[0] = 4; n.nb[1] = 16; n.nb[2] = 48; n.nb[3] = 96;
    n.key = &dummy_owner; n.data = owner; n.data_len = sizeof owner;
    uint64_t gid = 0;
    CHECK(td_ggml_record(g, &n, &gid) == TD_OK);
    uint64_t gid0 = gid;
    const void * srcs[1] = {&dummy_owner};
    const char * src_names[1] = {"kq-0"};
    td_ggml_node v = n;
    v.name = "kq-0 (view)"; v.op = "VIEW"; v.key = &dummy_view;
    v.ne[0] = 4; v.ne[1] = 2; v.ne[2] = 2; v.ne[3] = 1;
    v.srcs = srcs; v.src_names = src_names; v.n_srcs = 1;
    v.view_src = &dummy_owner; v.view_src_name = "kq-0"; v.view_offs = 16;
    CHECK(td_ggml_record(g, &v, &gid) == TD_OK && gid == gid0 + 1);
    const void * srcs2[1] = {&dummy_view};
    const char * src_names2[1] = {"kq-0 (view)"};
    int32_t params[16] = {0, 2, 1, 3};
    td_ggml_node p = v;
    p.name = "node_7"; p.op = "PERMUTE"; p.key = &dummy_perm;
    p.ne[0] = 4; p.ne[1] = 2; p.ne[2] = 2; p.ne[3] = 1;
    p.nb[0] = 4; p.nb[1] = 48; p.nb[2] = 16; p.nb[3] = 96;
    p.srcs = srcs2; p.src_names = src_names2;
    p.op_params = params; p.op_params_len = sizeof params;
    CHECK(td_ggml_record(g, &p, &gid) == TD_OK && gid == gid0 + 2);
    td_ggml_node bad = n;
    bad.ggml_type = 999; bad.key = &dummy_perm + 1;
    CHECK(td_ggml_record(g, &bad, NULL) == TD_ERROR && strstr(td_last_error(), "kq-0") != NULL);
    CHECK(td_ggml_record(g, NULL, NULL) == TD_ERROR);
    CHECK(td_ggml_close(g) == TD_OK);
    CHECK(td_ggml_close(NULL) == TD_OK);

    /* 8b. options: layer 1 of step 0 only, statistics only, background mode;
     * asked in graph order; a graph input recorded whatever the filter */
    td_ggml_options o;
    memset(&o, 0, sizeof o);
    int64_t keep_layers[1] = {1}, keep_steps[1] = {0};
    o.layers = keep_layers; o.n_layers = 1;
    o.steps = keep_steps; o.n_steps = 1;
    o.stats_only = 1; o.background = 1;
    o.name_regex = "(";
    CHECK(td_ggml_open_with(path2, NULL, NULL, 0, &o) == NULL && strstr(td_last_error(), "name_regex") != NULL);
    o.name_regex = NULL;
    snprintf(path2, sizeof path2, "%s.ggml-opts.tdump", argv[1]);
    g = td_ggml_open_with(path2, NULL, NULL, 0, &o);
    CHECK(g != NULL);
    CHECK(td_ggml_set_step(g, 0) == TD_OK);
    int k0, k1, d0, d1, embd, mask_key;
    const void * from_k0[1] = {&k0};
    const void * from_k1[2] = {&k1, NULL};
    CHECK(td_ggml_ask(g, &embd, "embd", NULL, 0) == 0);
    CHECK(td_ggml_ask(g, &k0, "kq-0", NULL, 0) == 0);
    CHECK(td_ggml_ask(g, &d0, "node_8", from_k0, 1) == 0);
    CHECK(td_ggml_ask(g, &k1, "kq-1", NULL, 0) == 1);
    CHECK(td_ggml_ask(g, &d1, "node_9", from_k1, 2) == 1);
    CHECK(td_ggml_ask(NULL, &d1, "node_9", NULL, 0) == 0);
    float mask_vals[4] = {0, 0, -INFINITY, 0};
    td_ggml_node mk;
    memset(&mk, 0, sizeof mk);
    mk.name = "mask"; mk.op = "NONE"; mk.ggml_type = 0;
    mk.ne[0] = 4; mk.ne[1] = 1; mk.ne[2] = 1; mk.ne[3] = 1;
    mk.nb[0] = 4; mk.nb[1] = 16; mk.nb[2] = 16; mk.nb[3] = 16;
    mk.key = &mask_key; mk.data = mask_vals; mk.data_len = sizeof mask_vals; mk.once = 1;
    uint64_t mask_id = 0;
    CHECK(td_ggml_record(g, &mk, &mask_id) == TD_OK);
    CHECK(td_ggml_record(g, &mk, &gid) == TD_OK && gid == mask_id); /* once per graph */
    td_ggml_node n1 = n;
    n1.name = "kq-1"; n1.key = &k1;
    const void * n1_srcs[1] = {&mask_key};
    const char * n1_src_names[1] = {"mask"};
    n1.srcs = n1_srcs; n1.src_names = n1_src_names; n1.n_srcs = 1;
    CHECK(td_ggml_record(g, &n1, &gid) == TD_OK && gid == mask_id + 1);
    td_ggml_node dn = n1;
    const char * dn_src_names[1] = {"kq-1"};
    dn.name = "node_9"; dn.op = "SCALE"; dn.key = &d1;
    dn.srcs = from_k1; dn.src_names = dn_src_names; dn.n_srcs = 1;
    CHECK(td_ggml_record(g, &dn, &gid) == TD_OK && gid == mask_id + 2);
    td_ggml_node n0 = n;
    n0.key = &k0;
    CHECK(td_ggml_record(g, &n0, &gid) == TD_SKIPPED); /* layer 0: filtered */
    CHECK(td_ggml_set_step(g, 1) == TD_OK);
    CHECK(td_ggml_ask(g, &k1, "kq-1", NULL, 0) == 0); /* step 1: filtered */
    CHECK(td_ggml_close(g) == TD_OK);
    snprintf(path2, sizeof path2, "%s.ggml-default.tdump", argv[1]);
    g = td_ggml_open_with(path2, NULL, NULL, 0, NULL); /* NULL options: everything */
    CHECK(g != NULL && td_ggml_ask(g, &k0, "kq-0", NULL, 0) == 1 && td_ggml_close(g) == TD_OK);
    /* asked with what a node writes: the same answers */
    g = td_ggml_open_with(path2, NULL, NULL, 0, NULL);
    CHECK(g != NULL && td_ggml_set_step(g, 0) == TD_OK);
    CHECK(td_ggml_ask_node(g, &k0, "kq-0", NULL, 0, NULL) == 1);
    CHECK(td_ggml_ask_node(g, &d0, "node_8", from_k0, 1, &k0) == 1);
    CHECK(td_ggml_ask_node(NULL, &d0, "node_8", NULL, 0, NULL) == 0);
    CHECK(td_ggml_close(g) == TD_OK);

    /* 9. in memory: the trace's bytes handed back, written out for check_capi.py */
    uint8_t * bytes = NULL;
    size_t len = 0;
    CHECK(td_writer_close_bytes(NULL, &bytes, &len) == TD_ERROR && bytes == NULL);
    td_bytes_free(NULL, 0);
    td_writer * mw = td_writer_open_memory(keys, values, 2, 0, 0, 0, NULL);
    CHECK(mw != NULL);
    uint64_t mid = 0;
    CHECK(td_add_tensor(mw, "m", f32, 2, shape_a, NULL, TD_ORDER_CANONICAL, 0, a, sizeof a, NULL, &mid) == TD_OK && mid == 1);
    /* 10. regions: row 1 of a, found inside the bytes of m, recorded as a view of m */
    td_regions * rg = td_regions_new();
    CHECK(rg != NULL && td_regions_add(rg, a, sizeof a, mid, 1) == TD_OK);
    uint64_t rid = 0, roff = 0;
    int32_t rtensor = 0;
    CHECK(td_regions_find(rg, mw, a[1], sizeof a[1], a, sizeof a, &rid, &roff, &rtensor) == TD_OK);
    CHECK(rid == mid && roff == 12 && rtensor == 1);
    int64_t shape_row[1] = {3};
    CHECK(td_add_view(mw, "m.row1", f32, 1, shape_row, NULL, TD_ORDER_CANONICAL, rid, roff, NULL, NULL) == TD_OK);
    a[1][0] = 40; /* changed bytes: no longer offered */
    CHECK(td_regions_find(rg, mw, a[1], sizeof a[1], a, sizeof a, &rid, &roff, &rtensor) == TD_SKIPPED);
    a[1][0] = 4;
    CHECK(td_regions_clear(rg) == TD_OK && td_regions_clear(NULL) == TD_ERROR);
    CHECK(td_regions_find(rg, mw, a[1], sizeof a[1], a, sizeof a, NULL, NULL, NULL) == TD_SKIPPED);
    td_regions_free(rg);
    td_regions_free(NULL);
    CHECK(td_writer_close_bytes(mw, &bytes, &len) == TD_OK && bytes != NULL && len > sizeof a);
    char path3[4096];
    snprintf(path3, sizeof path3, "%s.memory.tdump", argv[1]);
    FILE * out = fopen(path3, "wb");
    CHECK(out != NULL && fwrite(bytes, 1, len, out) == len && fclose(out) == 0);
    td_bytes_free(bytes, len);
    td_ggml * mg = td_ggml_open_memory(NULL, NULL, 0, 1, 1 << 20, 0, NULL);
    CHECK(mg != NULL);
    CHECK(td_ggml_set_step(mg, 3) == TD_OK);
    CHECK(td_ggml_record(mg, &n, &gid) == TD_OK && gid == 1);
    CHECK(td_ggml_close_bytes(mg, &bytes, &len) == TD_OK && bytes != NULL);
    snprintf(path3, sizeof path3, "%s.ggml-memory.tdump", argv[1]);
    out = fopen(path3, "wb");
    CHECK(out != NULL && fwrite(bytes, 1, len, out) == len && fclose(out) == 0);
    td_bytes_free(bytes, len);
    printf("capi_test: ok\n");
    return 0;
}
