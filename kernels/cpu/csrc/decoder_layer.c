/* Llama decoder layers for a batch of decode tokens, all of a model's layers in one call: the
 * CPU counterpart of a captured CUDA graph. Called one op at a time, a layer costs about 10
 * library calls and their Python around them, some 5 ms per step for a 30-layer model here, as
 * much as the weights' reads; one call per layer still left ~30 us of Python and a parallel
 * region's start per layer (~1 ms a step, 8%). Here one parallel region runs every layer, the
 * same cores (kernels.h) between barriers.
 *
 * As runtime/models/llama.py's LlamaDecoderLayer.forward, with the same roundings:
 *   first layer: residual = hidden;  h = input_norm(hidden)
 *   otherwise:   h, residual = input_norm(hidden + residual)
 *   q, k, v = qkv_proj(h); rotate q, k; store k, v; a = attention(q, cache); o = o_proj(a)
 *   h, residual = post_norm(o + residual);  out = down_proj(silu(gate) * up), gate|up = gate_up(h)
 * Activations live in fp32 buffers holding values rounded to the model's dtype.
 *
 * With adapters (batch->token_slots set, the layer's LoRA slots given), every projection adds
 * its tokens' adapters after its base product (lora.c, as kernels/lora.py; the tokens grouped
 * by slot once per call): the shrink of the projection's input shared by the threads (one
 * barrier), the expand by each thread over the output columns it has just computed.
 */
#include <stdlib.h>
#include <omp.h>

#include "common.h"
#include "kernels.h"

/* Mirrored by kernels/cpu/decoder_layer.py (ctypes). Biases may be NULL. */
struct ifn_decoder_layer {
    int64_t hidden, num_heads, num_kv_heads, head_dim, intermediate, block_size, sliding_window;
    float eps, scale;
    const void *input_norm, *post_norm, *qkv_weight, *qkv_bias, *o_weight, *o_bias;
    const void *gate_up_weight, *gate_up_bias, *down_weight, *down_bias;
    void *key_cache, *value_cache;
    /* LoRA slot weights of q, k, v, o, gate, up, down (lora.c's a and b), zero-padded to
     * lora_rank; lora_rank 0 when the engine has no adapters. */
    int64_t lora_rank;
    const void *lora_a[7], *lora_b[7];
};

enum { LORA_Q, LORA_K, LORA_V, LORA_O, LORA_GATE, LORA_UP, LORA_DOWN };

struct ifn_decode_batch {
    int64_t num_tokens, max_blocks;
    const int64_t *positions, *slot_mapping, *block_tables, *seq_lens;
    const float *cos_sin; /* [max_position, head_dim]: cos half, sin half */
    const int32_t *token_slots; /* [num_tokens] adapter slots, -1 the base; NULL: none */
};

/* Activation buffers of one layer, carved from one allocation. */
struct layer_buffers {
    float *x, *sum, *normed, *o, *qkv, *attn, *gate_up, *act, *lora_y, *scores;
    int64_t *rows;
};

static size_t layer_floats(const struct ifn_decoder_layer *layer, int64_t m, int64_t longest,
                           int num_threads) {
    const int64_t h = layer->hidden, q_width = layer->num_heads * layer->head_dim;
    const int64_t qkv_width = q_width + 2 * layer->num_kv_heads * layer->head_dim;
    const int64_t group = layer->num_heads / layer->num_kv_heads;
    return (size_t)(m * (4 * h + qkv_width + q_width + 3 * layer->intermediate +
                         3 * layer->lora_rank)) +
           (size_t)num_threads * (size_t)(group * longest) + 1;
}

static struct layer_buffers carve(const struct ifn_decoder_layer *layer, int64_t m,
                                  int64_t *rows, float *buffer) {
    const int64_t h = layer->hidden, q_width = layer->num_heads * layer->head_dim;
    const int64_t qkv_width = q_width + 2 * layer->num_kv_heads * layer->head_dim;
    struct layer_buffers b;
    b.rows = rows;
    b.x = buffer;
    b.sum = b.x + m * h;
    b.normed = b.sum + m * h;
    b.o = b.normed + m * h;
    b.qkv = b.o + m * h;
    b.attn = b.qkv + m * qkv_width;
    b.gate_up = b.attn + m * q_width;
    b.act = b.gate_up + m * 2 * layer->intermediate;
    b.lora_y = b.act + m * layer->intermediate;
    b.scores = b.lora_y + m * 3 * layer->lora_rank;
    return b;
}

/* One layer, run by every thread of the enclosing parallel region (the work-sharing below is
 * orphaned: it binds to that region). hidden may be `out` itself: it is read, into b->x, before
 * anything is written to out. */
static void run_layer(const struct ifn_decoder_layer *layer, const struct ifn_decode_batch *batch,
                      const struct ifn_lora_batch *lora, const struct layer_buffers *b,
                      int64_t longest, const void *hidden, void *residual, void *out,
                      int first_layer, int dtype) {
    const int64_t m = batch->num_tokens, h = layer->hidden, d = layer->head_dim;
    const int64_t q_width = layer->num_heads * d, kv_width = layer->num_kv_heads * d;
    const int64_t qkv_width = q_width + 2 * kv_width, inter = layer->intermediate;
    const int64_t group = layer->num_heads / layer->num_kv_heads;
    const size_t elem = ifn_elem_size(dtype);
    const int thread = omp_get_thread_num(), threads = omp_get_num_threads();
    float *x = b->x, *sum = b->sum, *normed = b->normed, *o = b->o, *qkv = b->qkv;
    float *attn = b->attn, *gate_up = b->gate_up, *act = b->act;
    int64_t first, last;
    /* The adapters' parts of each projection, at their columns of its output. */
    const void *const *la = layer->lora_a, *const *lb = layer->lora_b;
    const struct ifn_lora_target lora_qkv[3] = {
        {la[LORA_Q], lb[LORA_Q], h, q_width, 0},
        {la[LORA_K], lb[LORA_K], h, kv_width, q_width},
        {la[LORA_V], lb[LORA_V], h, kv_width, q_width + kv_width}};
    const struct ifn_lora_target lora_o = {la[LORA_O], lb[LORA_O], q_width, h, 0};
    const struct ifn_lora_target lora_gate_up[2] = {
        {la[LORA_GATE], lb[LORA_GATE], h, inter, 0},
        {la[LORA_UP], lb[LORA_UP], h, inter, inter}};
    const struct ifn_lora_target lora_down = {la[LORA_DOWN], lb[LORA_DOWN], inter, h, 0};
#pragma omp single
    {
        ifn_widen(hidden, x, m * h, dtype);
        if (first_layer) {
            for (int64_t i = 0; i < m * h; i++) sum[i] = x[i];
        } else {
            ifn_widen(residual, sum, m * h, dtype);
        }
        for (int64_t t = 0; t < m; t++)
            ifn_rms_norm_row(x + t * h, first_layer ? NULL : sum + t * h, layer->input_norm,
                             normed + t * h, h, layer->eps, dtype);
    }
    if (lora) ifn_lora_shrink(lora_qkv, 3, normed, h, IFN_F32, lora, b->lora_y, dtype);
    ifn_thread_range(qkv_width, thread, threads, &first, &last);
    ifn_linear_rows(normed, m, h, layer->qkv_weight, layer->qkv_bias, qkv, qkv_width, IFN_F32,
                    first, last, dtype);
    if (lora)
        ifn_lora_expand(lora_qkv, 3, b->lora_y, lora, qkv, qkv_width, IFN_F32, first, last,
                        dtype);
#pragma omp barrier
#pragma omp single
    for (int64_t t = 0; t < m; t++) {
        float *row = qkv + t * qkv_width;
        ifn_rotary_token(row, layer->num_heads + layer->num_kv_heads, d,
                         batch->cos_sin + batch->positions[t] * d, dtype);
        int64_t slot = batch->slot_mapping[t];
        if (slot < 0) continue;
        for (int64_t kv = 0; kv < layer->num_kv_heads; kv++) {
            size_t at = (size_t)ifn_cache_offset(slot, kv, layer->num_kv_heads,
                                                 layer->block_size, d) * elem;
            ifn_narrow(row + q_width + kv * d, (char *)layer->key_cache + at, d, dtype);
            ifn_narrow(row + q_width + kv_width + kv * d, (char *)layer->value_cache + at, d,
                       dtype);
        }
    }
    /* One task per (token, KV head) and its group of query heads; with fewer such tasks than
     * two per thread (a single sequence), one per query head, or the threads idle unevenly. */
    const int64_t split = m * layer->num_kv_heads < 2 * threads ? group : 1;
    const int64_t heads_per_task = group / split;
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < m * layer->num_kv_heads * split; task++) {
        int64_t t = task / (layer->num_kv_heads * split), kv = task / split % layer->num_kv_heads;
        int64_t head = kv * group + task % split * heads_per_task;
        int64_t len = batch->seq_lens[t], window = layer->sliding_window;
        ifn_decode_attention_group(
            qkv + t * qkv_width + head * d, attn + t * q_width + head * d,
            b->scores + (size_t)thread * (size_t)(group * longest),
            b->rows + (size_t)thread * (size_t)longest, heads_per_task, layer->key_cache,
            layer->value_cache, batch->block_tables + t * batch->max_blocks,
            window > 0 && len > window ? len - window : 0, len, kv, layer->num_kv_heads, d,
            layer->block_size, layer->scale, dtype);
    }
    if (lora) ifn_lora_shrink(&lora_o, 1, attn, q_width, IFN_F32, lora, b->lora_y, dtype);
    ifn_thread_range(h, thread, threads, &first, &last);
    ifn_linear_rows(attn, m, q_width, layer->o_weight, layer->o_bias, o, h, IFN_F32, first, last,
                    dtype);
    if (lora) ifn_lora_expand(&lora_o, 1, b->lora_y, lora, o, h, IFN_F32, first, last, dtype);
#pragma omp barrier
#pragma omp single
    {
        for (int64_t t = 0; t < m; t++)
            ifn_rms_norm_row(o + t * h, sum + t * h, layer->post_norm, normed + t * h, h,
                             layer->eps, dtype);
        ifn_narrow(sum, residual, m * h, dtype);
    }
    /* Each thread the gate rows and the up rows of one span, then that span's SiLU-and-mul:
     * both halves are its own, so no barrier between. */
    if (lora) ifn_lora_shrink(lora_gate_up, 2, normed, h, IFN_F32, lora, b->lora_y, dtype);
    ifn_thread_range(inter, thread, threads, &first, &last);
    ifn_linear_rows(normed, m, h, layer->gate_up_weight, layer->gate_up_bias, gate_up, 2 * inter,
                    IFN_F32, first, last, dtype);
    ifn_linear_rows(normed, m, h, layer->gate_up_weight, layer->gate_up_bias, gate_up, 2 * inter,
                    IFN_F32, inter + first, inter + last, dtype);
    if (lora) {
        ifn_lora_expand(lora_gate_up, 2, b->lora_y, lora, gate_up, 2 * inter, IFN_F32, first,
                        last, dtype);
        ifn_lora_expand(lora_gate_up, 2, b->lora_y, lora, gate_up, 2 * inter, IFN_F32,
                        inter + first, inter + last, dtype);
    }
    for (int64_t t = 0; t < m; t++)
        ifn_silu_and_mul_span(gate_up + t * 2 * inter + first,
                              gate_up + t * 2 * inter + inter + first, act + t * inter + first,
                              last - first, dtype);
#pragma omp barrier
    if (lora) ifn_lora_shrink(&lora_down, 1, act, inter, IFN_F32, lora, b->lora_y,
                              dtype);
    ifn_thread_range(h, thread, threads, &first, &last);
    ifn_linear_rows(act, m, inter, layer->down_weight, layer->down_bias, out, h, dtype, first,
                    last, dtype);
    if (lora) ifn_lora_expand(&lora_down, 1, b->lora_y, lora, out, h, dtype, first, last, dtype);
}

/* out = norm(out + residual), residual = out + residual, as LlamaModel.forward ends. */
static void final_rms_norm(const struct layer_buffers *b, int64_t m, int64_t h,
                           const void *weight, float eps, void *residual, void *out, int dtype) {
    ifn_widen(out, b->x, m * h, dtype);
    ifn_widen(residual, b->sum, m * h, dtype);
    for (int64_t t = 0; t < m; t++)
        ifn_rms_norm_row(b->x + t * h, b->sum + t * h, weight, b->normed + t * h, h, eps, dtype);
    ifn_narrow(b->normed, out, m * h, dtype);
    ifn_narrow(b->sum, residual, m * h, dtype);
}

/* num_layers consecutive layers in one parallel region. hidden, residual, out: [num_tokens,
 * hidden] contiguous in `dtype`; layer 0 reads hidden, each later one the output before it
 * (from out); residual is read (unless first_layer: layers[0] is the model's first) and
 * written; out receives the last layer's output, or, given final_norm ([hidden], the model's
 * last RMSNorm), that norm of it added to the residual (the residual then holds the sum), as
 * the model's forward ends. Returns 0, or -1 when out of memory. */
int ifn_decoder_layers(const struct ifn_decoder_layer *layers, int64_t num_layers,
                       const struct ifn_decode_batch *batch, const void *hidden, void *residual,
                       void *out, int first_layer, const void *final_norm, float final_eps,
                       int dtype, int num_threads) {
    const int64_t m = batch->num_tokens;
    int64_t longest = 0;
    for (int64_t t = 0; t < m; t++)
        longest = batch->seq_lens[t] > longest ? batch->seq_lens[t] : longest;
    if (num_threads < 1) num_threads = 1;
    /* per thread, the attention's key offsets (int64, first for alignment) and scores */
    size_t scratch = (size_t)num_threads * (size_t)longest, floats = 1;
    for (int64_t i = 0; i < num_layers; i++) {
        size_t need = layer_floats(&layers[i], m, longest, num_threads);
        floats = need > floats ? need : floats;
    }
    int64_t *rows = malloc(scratch * sizeof(int64_t) + floats * sizeof(float));
    if (rows == NULL) return -1;
    float *buffer = (float *)(rows + scratch);
    /* The batch's adapters: its tokens grouped by slot, and per thread the rows of a chunk. */
    struct ifn_lora_batch lora = {0};
    void *lora_memory = NULL;
    if (batch->token_slots != NULL && num_layers > 0 && layers[0].lora_rank > 0) {
        int64_t widest = 1;
        for (int64_t i = 0; i < num_layers; i++) {
            const struct ifn_decoder_layer *l = &layers[i];
            widest = l->hidden > widest ? l->hidden : widest;
            widest = l->intermediate > widest ? l->intermediate : widest;
            widest = l->num_heads * l->head_dim > widest ? l->num_heads * l->head_dim : widest;
        }
        float *unused;
        lora_memory = ifn_lora_prepare(&lora, batch->token_slots, m, layers[0].lora_rank, widest,
                                       num_threads, 0, &unused);
        if (lora_memory == NULL) {
            free(rows);
            return -1;
        }
    }
    const struct ifn_lora_batch *adapters = lora.num_chunks > 0 ? &lora : NULL;

#pragma omp parallel num_threads(num_threads)
    for (int64_t i = 0; i < num_layers; i++) {
        struct layer_buffers b = carve(&layers[i], m, rows, buffer);
        if (i > 0) {
#pragma omp barrier
        }
        run_layer(&layers[i], batch, adapters, &b, longest, i == 0 ? hidden : out, residual,
                  out, first_layer && i == 0, dtype);
        if (final_norm != NULL && i == num_layers - 1) {
#pragma omp barrier
#pragma omp single
            final_rms_norm(&b, m, layers[i].hidden, final_norm, final_eps, residual, out, dtype);
        }
    }
    free(lora_memory);
    free(rows);
    return 0;
}
