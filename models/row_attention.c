/* Attention of one query per row and head over that row's cached blocks, for decoding on CPU.

   Compiled at load by models/row_attention.py for one prior's shapes: DK, DV and BLOCK (entries a block)
   are constants, so the compiler keeps a block's scores and a head's output in vector registers. ELEM_BF16
   selects bfloat16 cache and queries (else float32). Arithmetic is float32 throughout.

   Each (row, head) is computed by one thread, in a fixed order: its result depends on nothing but its own
   query and cache, not on the rows beside it, the thread count or how far other rows read. */
#include <stdint.h>
#include <stdlib.h>

#include "kernel_math.h"

#if ELEM_BF16
typedef uint16_t elem;
static inline float load(elem x) { union { uint32_t u; float f; } v; v.u = (uint32_t)x << 16; return v.f; }
static inline elem store(float f) {  /* round to nearest even, as torch rounds to bfloat16 */
    union { uint32_t u; float f; } v; v.f = f;
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (elem)((v.u >> 16) | 0x40);  /* NaN stays NaN */
    v.u += 0x7fffu + ((v.u >> 16) & 1u);
    return (elem)(v.u >> 16);
}
#else
typedef float elem;
static inline float load(elem x) { return x; }
static inline elem store(float f) { return f; }
#endif

#define LANES 16  /* partial maxima and sums: a fixed order the compiler can vectorize */
#define MASKED (-3.0e38f)

/* exp(x) for x <= 0 (kernel_math.h); 0 below -87 (a masked entry). */
static inline float exp_nonpositive(float x) {
    float keep = x < -87.0f ? 0.0f : 1.0f;
    return exp_in_range(x < -87.0f ? -87.0f : x) * keep;
}

/* scores[j] = exp_nonpositive(scores[j] - top): 16 at a time in vector code (the same arithmetic), then one
   by one. */
static void exp_span(float *scores, int64_t n, float top) {
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        vfloat16 x = load16(scores + j) - top, zero = {0};
        vint16 masked = x < -87.0f;
        vfloat16 e = exp_in_range16(select16(masked, zero - 87.0f, x));
        store16(scores + j, e * select16(masked, zero, zero + 1.0f));
    }
    for (; j < n; j++) scores[j] = exp_nonpositive(scores[j] - top);
}

/* q (rows, heads, DK), row r at q + r * q_row (its heads contiguous); keys of row r: keys + r * key_row,
   block b of it (heads, DK, BLOCK) (transposed within a block); values likewise (heads, BLOCK, DV). Row r
   reads the blocks blocks[r * block_row + i] in order, of which the first counts[r] entries count. out
   (rows, heads, DV).
   Where positions is not NULL, row r's new key and value (new_keys (rows, heads, DK) and new_values (rows,
   heads, DV), rows new_key_row and new_value_row apart) are first written to its cache at entry
   positions[r] (in block positions[r] / BLOCK of the row's cache), by the thread that then reads them: a
   decoding step's cache write and attention in one call.
   Returns 0; -1 where memory for the scores could not be had; 2 where a position lies beyond its row's
   cache (nothing is written for that row). */
int attend_rows(const elem *q, elem *keys, elem *values, const int64_t *blocks,
                const int64_t *counts, int64_t rows, int64_t heads, int64_t key_row, int64_t value_row,
                int64_t block_row, float scale, elem *out, int64_t q_row,
                const elem *new_keys, int64_t new_key_row, const elem *new_values, int64_t new_value_row,
                const int64_t *positions)
{
    int failed = 0;
    /* Items handed out one at a time: rows read as far as their own positions, so equal shares of items
       are unequal work (the shipped prior's step at 16 rows: 0.78x the attention time of static shares). */
    #pragma omp parallel for schedule(dynamic, 1)
    for (int64_t item = 0; item < rows * heads; item++) {
        int64_t r = item / heads, h = item % heads, count = counts[r];
        if (positions != NULL) {
            int64_t at = positions[r], block = at / BLOCK, within = at % BLOCK;
            if (at < 0 || at >= key_row / (heads * DK)) {  /* beyond the row's cache: write nothing */
                failed = 2;
                continue;
            }
            elem *k = keys + r * key_row + (block * heads + h) * DK * BLOCK + within;
            elem *v = values + r * value_row + ((block * heads + h) * BLOCK + within) * DV;
            for (int d = 0; d < DK; d++) k[d * BLOCK] = new_keys[r * new_key_row + h * DK + d];
            for (int e = 0; e < DV; e++) v[e] = new_values[r * new_value_row + h * DV + e];
        }
        int64_t n_blocks = (count + BLOCK - 1) / BLOCK, padded = n_blocks * BLOCK;
        const int64_t *row_blocks = blocks + r * block_row;
        float *scores = malloc(sizeof(float) * (size_t)(padded > 0 ? padded : 1));
        if (scores == NULL) {
            failed = 1;
            continue;
        }
        float qs[DK], acc[DV];
        for (int d = 0; d < DK; d++) qs[d] = load(q[r * q_row + h * DK + d]) * scale;
        for (int64_t b = 0; b < n_blocks; b++) {
            const elem *k = keys + r * key_row + (row_blocks[b] * heads + h) * DK * BLOCK;
            float s[BLOCK] = {0};
            for (int d = 0; d < DK; d++) {
                float qd = qs[d];
                for (int w = 0; w < BLOCK; w++) s[w] += qd * load(k[d * BLOCK + w]);
            }
            for (int w = 0; w < BLOCK; w++) scores[b * BLOCK + w] = s[w];
        }
        for (int64_t j = count; j < padded; j++) scores[j] = MASKED;
        float lane[LANES];
        for (int i = 0; i < LANES; i++) lane[i] = MASKED;
        for (int64_t j = 0; j + LANES <= padded; j += LANES)
            for (int i = 0; i < LANES; i++) lane[i] = scores[j + i] > lane[i] ? scores[j + i] : lane[i];
        for (int64_t j = padded - padded % LANES; j < padded; j++)
            lane[0] = scores[j] > lane[0] ? scores[j] : lane[0];
        float top = lane[0];
        for (int i = 1; i < LANES; i++) top = lane[i] > top ? lane[i] : top;
        exp_span(scores, padded, top);
        for (int i = 0; i < LANES; i++) lane[i] = 0.0f;
        for (int64_t j = 0; j + LANES <= padded; j += LANES)
            for (int i = 0; i < LANES; i++) lane[i] += scores[j + i];
        for (int64_t j = padded - padded % LANES; j < padded; j++) lane[0] += scores[j];
        float total = 0.0f;
        for (int i = 0; i < LANES; i++) total += lane[i];
        for (int e = 0; e < DV; e++) acc[e] = 0.0f;
        for (int64_t b = 0; b < n_blocks; b++) {
            const elem *v = values + r * value_row + (row_blocks[b] * heads + h) * BLOCK * DV;
            int64_t entries = count - b * BLOCK < BLOCK ? count - b * BLOCK : BLOCK;
            for (int64_t w = 0; w < entries; w++) {
                float p = scores[b * BLOCK + w];
                for (int e = 0; e < DV; e++) acc[e] += p * load(v[w * DV + e]);
            }
        }
        float inverse = 1.0f / total;
        for (int e = 0; e < DV; e++) out[item * DV + e] = store(acc[e] * inverse);
        free(scores);
    }
    return failed == 1 ? -1 : failed;
}
