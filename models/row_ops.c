/* A decoding step's linear products and layer norms on CPU, float32, each row's result the same bits
   whatever rows are beside it.

   Compiled at load by models/row_ops.py for this CPU. Every output is computed by the same arithmetic
   in the same order for every row, whatever the row count: rows never change each other's bits
   (row_ops.py checks this at load).

   row_linear: y = x @ W + bias (then GeLU2 where asked), W (K, N) (DecodeLinear's weight_t) packed by
   column blocks (RowLinear packs it; row_vector_width gives VL): each block of 2 * VL columns (then one of
   VL where one is left) as its own (K, width) row-major strip, then the columns past the last whole
   vector as a (K, rest) one. A block's weights are then one contiguous run: read in place from (K, N),
   each k jumped N floats ahead, a page apart for the wide layers, and a large prior's weights came from
   memory at a third of the rate a contiguous read gets.
   Each output is summed over k in order, then its bias added: in the vector blocks by fused multiply-adds
   where the CPU has FMA, in the columns past the last whole vector by a multiply then an add (as the
   compiler leaves that loop). Which a column gets depends on its index alone, never on the rows. GeLU2
   (kernel_math.h's exp) goes 16 outputs at a time in vector code, the same arithmetic as one at a time.
   Rows go RB at a time (what is left in blocks of smaller powers of two) against two vectors of columns
   at a time (then one), so each weight read serves RB rows and the RB x 2 sums, held in registers, keep
   the multiply-add units busy.

   row_norm: the reference's layer norm, (x - mean) * (1 / sqrt(var) + 1e-5) * g + b, with a gain and bias
   per row (the class-conditional norms' tables). */
#include <math.h>
#include <stdint.h>
#include <stddef.h>

#include "kernel_math.h"

/* Vectors as wide as the CPU's: 16 floats with AVX-512 (32 vector registers hold 8 rows x 2 vectors of
   sums), else 8 (16 registers hold 4 x 2). The width changes which outputs go together, never an
   output's own arithmetic. */
#if defined(__AVX512F__)
#define VL 16
#define RB 8
#else
#define VL 8
#define RB 4
#endif
typedef float vec __attribute__((vector_size(VL * 4)));
#define LANES 8

static inline vec loadv(const float *p) { vec v; __builtin_memcpy(&v, p, sizeof v); return v; }
static inline void storev(float *p, vec v) { __builtin_memcpy(p, &v, sizeof v); }

/* exp(x) (kernel_math.h), x clamped to [-87, 88]. */
static inline float exp_clamped(float x) {
    return exp_in_range(x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x);
}

static inline float gelu2(float x) { return x / (1.0f + exp_clamped(-1.702f * x)); }  /* x * sigmoid(1.702 x) */

/* GeLU2 of n floats in place: 16 at a time in vector code (the same arithmetic as gelu2), then one by one. */
static void gelu2_span(float *out, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        vfloat16 x = load16(out + i), zero = {0}, e = -1.702f * x;
        e = select16(e < -87.0f, zero - 87.0f, e);
        e = select16(e > 88.0f, zero + 88.0f, e);
        store16(out + i, x / (1.0f + exp_in_range16(e)));
    }
    for (; i < n; i++) out[i] = gelu2(out[i]);
}

/* Rows xs[0..ROWS) times the NV vectors of a column block (wb: its (K, NV * VL) strip), each sum in the
   same order whatever ROWS and NV. */
#define COLUMNS(ROWS, NV)                                                                                    \
    static void columns_##ROWS##_##NV(const float *const *xs, const float *wb, int64_t k_dim,                \
                                      vec sums[][2]) {                                                       \
        vec acc[ROWS][NV]; /* local, so that the compiler keeps them in registers */                         \
        const float *rows[ROWS];                                                                             \
        for (int r = 0; r < ROWS; r++) {                                                                     \
            rows[r] = xs[r];                                                                                 \
            for (int v = 0; v < NV; v++) acc[r][v] = (vec){0};                                               \
        }                                                                                                    \
        for (int64_t k = 0; k < k_dim; k++) {                                                                \
            vec ws[NV];                                                                                      \
            for (int v = 0; v < NV; v++) ws[v] = loadv(wb + k * NV * VL + v * VL);                            \
            for (int r = 0; r < ROWS; r++) {                                                                 \
                vec x = rows[r][k] - (vec){0}; /* a broadcast: x - 0 is x */                                 \
                for (int v = 0; v < NV; v++) acc[r][v] += x * ws[v];                                         \
            }                                                                                                \
        }                                                                                                    \
        for (int r = 0; r < ROWS; r++)                                                                       \
            for (int v = 0; v < NV; v++) sums[r][v] = acc[r][v];                                             \
    }
COLUMNS(RB, 2)
COLUMNS(RB, 1)
#if RB == 8
COLUMNS(4, 2)
COLUMNS(4, 1)
#endif
COLUMNS(2, 2)
COLUMNS(2, 1)
COLUMNS(1, 2)
COLUMNS(1, 1)

static void columns(int rows, int nv, const float *const *xs, const float *wb, int64_t k_dim, vec sums[][2]) {
    if (rows == RB) (nv == 2 ? columns_RB_2 : columns_RB_1)(xs, wb, k_dim, sums);
#if RB == 8
    else if (rows == 4) (nv == 2 ? columns_4_2 : columns_4_1)(xs, wb, k_dim, sums);
#endif
    else if (rows == 2) (nv == 2 ? columns_2_2 : columns_2_1)(xs, wb, k_dim, sums);
    else (nv == 2 ? columns_1_2 : columns_1_1)(xs, wb, k_dim, sums);
}

/* The packed layout's vector width (see row_linear). */
int row_vector_width(void) { return VL; }

/* Row block rb: whole blocks of RB rows, then one of each smaller power of two that is left. */
static void row_block(int64_t rb, int64_t rows, int64_t *first, int *count) {
    int64_t whole = rows / RB, at = whole * RB;
    *first = rb * RB;
    *count = RB;
    if (rb < whole) return;
    for (int size = RB / 2; size >= 1; size /= 2)
        if ((rows % RB) & size) {
            if (rb == whole) {
                *first = at;
                *count = size;
                return;
            }
            rb--;
            at += size;
        }
}

/* Column j of a (K, width) strip. */
static float column(const float *x, const float *strip, int64_t k_dim, int64_t width, int64_t j) {
    float sum = 0.0f;
    for (int64_t k = 0; k < k_dim; k++) sum += x[k] * strip[k * width + j];
    return sum;
}

/* x: rows of k_dim floats, x_row apart; w (k_dim, n_dim) packed (see the top); bias (n_dim) or NULL; y: rows
   of n_dim floats, y_row apart; gelu: apply GeLU2 to each output. */
void row_linear(const float *x, int64_t x_row, const float *w, const float *bias, float *y, int64_t y_row,
                int64_t rows, int64_t k_dim, int64_t n_dim, int gelu) {
    /* column blocks: 2 vectors each, then one of 1 vector where one is left; then columns one at a time */
    int64_t pairs = n_dim / (2 * VL), col_blocks = pairs + (n_dim % (2 * VL) >= VL);
    int64_t vector_cols = pairs * 2 * VL + (col_blocks > pairs ? VL : 0);
    int64_t row_blocks = rows / RB + __builtin_popcount((unsigned)(rows % RB));
    #pragma omp parallel for schedule(static) collapse(2)
    for (int64_t cb = 0; cb < col_blocks; cb++) {
        for (int64_t rb = 0; rb < row_blocks; rb++) {
            int64_t first, c = cb * 2 * VL;
            int count, nv = cb < pairs ? 2 : 1;
            row_block(rb, rows, &first, &count);
            const float *xs[RB];
            for (int r = 0; r < count; r++) xs[r] = x + (first + r) * x_row;
            vec sums[RB][2];
            columns(count, nv, xs, w + c * k_dim, k_dim, sums);  /* the blocks before hold c columns */
            for (int v = 0; v < nv; v++) {
                vec b = bias ? loadv(bias + c + v * VL) : (vec){0};
                for (int r = 0; r < count; r++)
                    storev(y + (first + r) * y_row + c + v * VL, bias ? sums[r][v] + b : sums[r][v]);
            }
            if (gelu)
                for (int r = 0; r < count; r++) gelu2_span(y + (first + r) * y_row + c, nv * VL);
        }
    }
    if (vector_cols < n_dim) {
        #pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = vector_cols; c < n_dim; c++) {
                float sum = column(x + r * x_row, w + vector_cols * k_dim, k_dim, n_dim - vector_cols,
                                   c - vector_cols);
                sum = bias ? sum + bias[c] : sum;
                y[r * y_row + c] = gelu ? gelu2(sum) : sum;
            }
    }
}

/* x, g, b, y: rows of dim floats, x_row, g_row, b_row and y_row apart (g_row, b_row 0: one gain and bias
   for every row). */
void row_norm(const float *x, int64_t x_row, const float *g, int64_t g_row, const float *b, int64_t b_row,
              float *y, int64_t y_row, int64_t rows, int64_t dim) {
    #pragma omp parallel for schedule(static) if (rows * dim > 8192)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * x_row, *gr = g + r * g_row, *br = b + r * b_row;
        float lane[LANES] = {0}, total = 0.0f, mean, var;
        for (int64_t i = 0; i + LANES <= dim; i += LANES)
            for (int j = 0; j < LANES; j++) lane[j] += xr[i + j];
        for (int64_t i = dim - dim % LANES; i < dim; i++) lane[0] += xr[i];
        for (int j = 0; j < LANES; j++) total += lane[j];
        mean = total / (float)dim;
        for (int j = 0; j < LANES; j++) lane[j] = 0.0f;
        for (int64_t i = 0; i + LANES <= dim; i += LANES)
            for (int j = 0; j < LANES; j++) { float d = xr[i + j] - mean; lane[j] += d * d; }
        for (int64_t i = dim - dim % LANES; i < dim; i++) { float d = xr[i] - mean; lane[0] += d * d; }
        total = 0.0f;
        for (int j = 0; j < LANES; j++) total += lane[j];
        var = total / (float)dim;
        float scale = 1.0f / sqrtf(var) + 1e-5f;
        for (int64_t i = 0; i < dim; i++) y[r * y_row + i] = (xr[i] - mean) * scale * gr[i] + br[i];
    }
}
