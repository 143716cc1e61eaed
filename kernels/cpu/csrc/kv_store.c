/* Writes each new token's keys and values into the paged cache (layout: kernels/paged_attention.py,
 * [num_blocks, num_kv_heads, block_size, head_dim]). Slots below 0 are skipped. */
#include <omp.h>

#include "common.h"

/* key, value: [num_tokens, num_kv_heads, head_dim] with token strides key_stride and
 * value_stride (heads and dims contiguous); slot_mapping: [num_tokens] int64. The caches have
 * the inputs' dtype. */
void ifn_kv_store(const void *key, int64_t key_stride, const void *value, int64_t value_stride,
                  void *key_cache, void *value_cache, const int64_t *slot_mapping,
                  int64_t num_tokens, int64_t num_kv_heads, int64_t head_dim, int64_t block_size,
                  int dtype) {
    size_t elem = ifn_elem_size(dtype), row = (size_t)head_dim * elem;
    for (int64_t t = 0; t < num_tokens; t++) {
        int64_t slot = slot_mapping[t];
        if (slot < 0) continue;
        for (int64_t h = 0; h < num_kv_heads; h++) {
            size_t dst = (size_t)ifn_cache_offset(slot, h, num_kv_heads, block_size, head_dim) *
                         elem;
            size_t src = (size_t)(t * key_stride + h * head_dim) * elem;
            memcpy((char *)key_cache + dst, (const char *)key + src, row);
            src = (size_t)(t * value_stride + h * head_dim) * elem;
            memcpy((char *)value_cache + dst, (const char *)value + src, row);
        }
    }
}
