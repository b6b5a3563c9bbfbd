/* A decoding step on CPU, float32, in one call: the rows' input features, then the compiled kernels
   (row_ops.c's products and norms, row_attention.c's attention, a frames prior's cross-attention
   included) chained in the order AttentionBlock.forward states, with the residual sums between them, so a
   step crosses from Python into C once instead of some thirty times.

   Nothing is computed here but sums and the frames' gate (one float add or multiply each, as torch does
   them; compiled with -ffp-contract=off, so none is fused): every product, norm and attention is the
   kernel's own call, through the pointers the plan holds (the kernels live in their own libraries,
   compiled for their shapes). So a row gets the bits the layer-by-layer step gives it, which row_step.py
   checks when a decoder takes this path. */
#include <stdint.h>
#include <stddef.h>

typedef void (*linear_fn)(const float *x, int64_t x_row, const float *w, const float *bias, float *y,
                          int64_t y_row, int64_t rows, int64_t k_dim, int64_t n_dim, int gelu);
typedef void (*norm_fn)(const float *x, int64_t x_row, const float *g, int64_t g_row, const float *b,
                        int64_t b_row, float *y, int64_t y_row, int64_t rows, int64_t dim);
typedef int (*attend_fn)(const float *q, float *keys, float *values, const int64_t *blocks,
                         const int64_t *counts, int64_t rows, int64_t heads, int64_t key_row, int64_t value_row,
                         int64_t block_row, float scale, float *out, int64_t q_row, const float *new_keys,
                         int64_t new_key_row, const float *new_values, int64_t new_value_row,
                         const int64_t *positions);

/* One layer: its norms' per-row gains and biases (rows `dim` apart), its products' weights (K, N) and
   biases (NULL: none), its cache (row r at keys + r * key_row); a frames prior's cross-attention: its norm,
   its query and output products, its rows' frame keys and values (row r at frame_keys + r * frame_key_row). */
typedef struct {
    const float *attn_g, *attn_b, *fc_g, *fc_b;
    const float *qkv_w, *qkv_b, *out_w, *out_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
    float *keys, *values;
    const float *cross_g, *cross_b, *cross_q_w, *cross_q_b, *cross_out_w, *cross_out_b;
    float *frame_keys, *frame_values;
} StepLayer;

typedef struct {
    linear_fn linear;
    norm_fn norm;
    attend_fn attend;
    int64_t layers, dim, heads, d_k, d_v, hidden, n_codes, key_row, value_row;
    float scale;
    const StepLayer *layer;
    const float *final_g, *final_b, *logits_w, *logits_b;
    float *h, *qkv, *att, *proj, *mlp;  /* scratch, room for every row of the decoder */
    /* the input features of each code (the last: start of sequence) and of each position; what a position
       reads (sparse: read_index (seq_len, read_width) and read_counts (seq_len,), NULL for full attention,
       which reads its first n_blocks blocks up to itself); scratch for the rows' inputs and reads */
    const float *token_features, *position_features;
    int64_t n_tokens, seq_len, n_blocks, read_width;
    const int64_t *read_index, *read_counts;
    float *x;
    int64_t *blocks, *counts;
    /* a frames prior (cross_attend NULL: none): the cross-attention kernel, each row reading its frames' one
       block (cross_blocks) of cross_counts[r] entries; the rows' gates (1: frames, 0: none); the rows'
       aligned frame features (rows seq_len * dim apart; NULL: none) */
    attend_fn cross_attend;
    int64_t cross_d_v, frame_key_row, frame_value_row;
    const int64_t *cross_blocks, *cross_counts;
    const float *gate, *aligned;
} StepPlan;

#define STEP_BAD_TOKEN (-3)

static void add_rows(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = x[i] + y[i];
}

/* Layer i's self-attention and its residual: x (rows, dim) in place. Row r reads the blocks
   blocks[r * block_row + j] of its cache, the first counts[r] entries, after writing its new key and value
   at positions[r]. Returns row_attention.c's code (0: done). */
static int attend_half(const StepPlan *p, int64_t i, float *x, int64_t rows, const int64_t *blocks,
                       int64_t block_row, const int64_t *counts, const int64_t *positions) {
    const StepLayer *l = &p->layer[i];
    int64_t dim = p->dim, keys_width = p->heads * p->d_k, heads_width = p->heads * p->d_v;
    int64_t qkv_width = 2 * keys_width + heads_width;
    p->norm(x, dim, l->attn_g, dim, l->attn_b, dim, p->h, dim, rows, dim);
    p->linear(p->h, dim, l->qkv_w, l->qkv_b, p->qkv, qkv_width, rows, dim, qkv_width, 0);
    int failed = p->attend(p->qkv, l->keys, l->values, blocks, counts, rows, p->heads, p->key_row,
                           p->value_row, block_row, p->scale, p->att, qkv_width, p->qkv + keys_width,
                           qkv_width, p->qkv + 2 * keys_width, qkv_width, positions);
    if (failed) return failed;
    p->linear(p->att, heads_width, l->out_w, l->out_b, p->proj, dim, rows, heads_width, dim, 0);
    add_rows(x, p->proj, rows * dim);
    return 0;
}

/* Layer i's frame cross-attention, gated by each row's gate, and its residual (AttentionBlock.read_frames):
   x (rows, dim) in place. */
static int cross_half(const StepPlan *p, int64_t i, float *x, int64_t rows) {
    const StepLayer *l = &p->layer[i];
    int64_t dim = p->dim, keys_width = p->heads * p->d_k, heads_width = p->heads * p->cross_d_v;
    p->norm(x, dim, l->cross_g, dim, l->cross_b, dim, p->h, dim, rows, dim);
    p->linear(p->h, dim, l->cross_q_w, l->cross_q_b, p->qkv, keys_width, rows, dim, keys_width, 0);
    int failed = p->cross_attend(p->qkv, l->frame_keys, l->frame_values, p->cross_blocks, p->cross_counts, rows,
                                 p->heads, p->frame_key_row, p->frame_value_row, 0, p->scale, p->att, keys_width,
                                 NULL, 0, NULL, 0, NULL);
    if (failed) return failed;
    p->linear(p->att, heads_width, l->cross_out_w, l->cross_out_b, p->proj, dim, rows, heads_width, dim, 0);
    for (int64_t r = 0; r < rows; r++) {
        float gate = p->gate[r], *xr = x + r * dim;
        const float *branch = p->proj + r * dim;
        for (int64_t j = 0; j < dim; j++) {
            float gated = branch[j] * gate;
            xr[j] = xr[j] + gated;
        }
    }
    return 0;
}

/* Layer i's MLP and its residual: x (rows, dim) in place. */
static void mlp_half(const StepPlan *p, int64_t i, float *x, int64_t rows) {
    const StepLayer *l = &p->layer[i];
    int64_t dim = p->dim;
    p->norm(x, dim, l->fc_g, dim, l->fc_b, dim, p->h, dim, rows, dim);
    p->linear(p->h, dim, l->fc1_w, l->fc1_b, p->mlp, p->hidden, rows, dim, p->hidden, 1);
    p->linear(p->mlp, p->hidden, l->fc2_w, l->fc2_b, p->proj, dim, rows, p->hidden, dim, 0);
    add_rows(x, p->proj, rows * dim);
}

/* A whole step from the rows' codes: row r's input is its code's feature plus its position's (plus its
   aligned frame feature there), its reads are its position's, and its position moves on by one after the
   step (staying at the last); the logits (rows, n_codes). Returns STEP_BAD_TOKEN for a code or position
   that has no feature (nothing computed), else the attention kernels' code (0: done). */
int step_tokens(const StepPlan *p, const int64_t *tokens, int64_t *positions, int64_t rows, float *logits) {
    int64_t dim = p->dim, width = p->read_index ? p->read_width : p->n_blocks;
    for (int64_t r = 0; r < rows; r++) {
        if (tokens[r] < 0 || tokens[r] >= p->n_tokens || positions[r] < 0 || positions[r] >= p->seq_len)
            return STEP_BAD_TOKEN;
        const float *token = p->token_features + tokens[r] * dim, *place = p->position_features + positions[r] * dim;
        float *x = p->x + r * dim;
        for (int64_t j = 0; j < dim; j++) x[j] = token[j] + place[j];
        if (p->aligned) add_rows(x, p->aligned + (r * p->seq_len + positions[r]) * dim, dim);
        if (p->read_index) {
            const int64_t *read = p->read_index + positions[r] * width;
            for (int64_t j = 0; j < width; j++) p->blocks[r * width + j] = read[j];
            p->counts[r] = p->read_counts[positions[r]];
        } else {
            p->counts[r] = positions[r] + 1;
        }
    }
    if (!p->read_index)
        for (int64_t j = 0; j < width; j++) p->blocks[j] = j;
    for (int64_t i = 0; i < p->layers; i++) {
        int failed = attend_half(p, i, p->x, rows, p->blocks, p->read_index ? width : 0, p->counts, positions);
        if (!failed && p->cross_attend) failed = cross_half(p, i, p->x, rows);
        if (failed) return failed;
        mlp_half(p, i, p->x, rows);
    }
    p->norm(p->x, dim, p->final_g, dim, p->final_b, dim, p->h, dim, rows, dim);
    p->linear(p->h, dim, p->logits_w, p->logits_b, logits, p->n_codes, rows, dim, p->n_codes, 0);
    for (int64_t r = 0; r < rows; r++) positions[r] = positions[r] + 1 < p->seq_len ? positions[r] + 1 : p->seq_len - 1;
    return 0;
}
