/* A decoding step's linear products and layer norms on CPU, float32, each row's result the same bits
   whatever rows are beside it.

   Compiled at load by models/row_ops.py for this CPU. Every output is computed by the same arithmetic
   in the same order for every row, whatever the row count: rows never change each other's bits
   (row_ops.py checks this at load).

   row_linear: y = x @ W + bias (then GeLU2 where asked), W (K, N) row-major (DecodeLinear's weight_t).
   Each output is summed over k in order, one multiply-add at a time (fused where the CPU has FMA: the
   compiler contracts every one alike), then its bias added. Rows go RB at a time (what is left in blocks
   of 2 and 1) against 16 columns (two 8-float vectors) at a time, so each weight read serves RB rows and
   the RB x 2 sums keep the multiply-add units busy; columns past the last multiple of 16 go one at a time.

   row_norm: the reference's layer norm, (x - mean) * (1 / sqrt(var) + 1e-5) * g + b, with a gain and bias
   per row (the class-conditional norms' tables). */
#include <math.h>
#include <stdint.h>
#include <stddef.h>

#include "kernel_math.h"

typedef float v8 __attribute__((vector_size(32)));
#define RB 4
#define LANES 8

static inline v8 load8(const float *p) { v8 v; __builtin_memcpy(&v, p, sizeof v); return v; }
static inline void store8(float *p, v8 v) { __builtin_memcpy(p, &v, sizeof v); }

/* exp(x) (kernel_math.h), x clamped to [-87, 88]. */
static inline float exp_clamped(float x) {
    return exp_in_range(x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x);
}

/* GeLU2, x * sigmoid(1.702 x), on 8 values. */
static inline v8 gelu2_8(v8 x) {
    float out[8];
    for (int i = 0; i < 8; i++) out[i] = x[i] / (1.0f + exp_clamped(-1.702f * x[i]));
    return load8(out);
}

/* Rows xs[0..ROWS) times 16 columns from c, each sum in the same order whatever ROWS is. */
#define COLUMNS16(ROWS)                                                                                      \
    static void columns16_##ROWS(const float *const *xs, const float *w, int64_t k_dim, int64_t n_dim,       \
                                 int64_t c, v8 sums[][2]) {                                                  \
        for (int r = 0; r < ROWS; r++) sums[r][0] = sums[r][1] = (v8){0};                                    \
        for (int64_t k = 0; k < k_dim; k++) {                                                                \
            v8 w0 = load8(w + k * n_dim + c), w1 = load8(w + k * n_dim + c + 8);                             \
            for (int r = 0; r < ROWS; r++) {                                                                 \
                v8 x = (v8){0} + xs[r][k];                                                                   \
                sums[r][0] += x * w0;                                                                        \
                sums[r][1] += x * w1;                                                                        \
            }                                                                                                \
        }                                                                                                    \
    }
COLUMNS16(4)
COLUMNS16(2)
COLUMNS16(1)

static float column(const float *x, const float *w, int64_t k_dim, int64_t n_dim, int64_t c) {
    float sum = 0.0f;
    for (int64_t k = 0; k < k_dim; k++) sum += x[k] * w[k * n_dim + c];
    return sum;
}

/* x: rows of k_dim floats, x_row apart; w (k_dim, n_dim); bias (n_dim) or NULL; y: rows of n_dim floats,
   y_row apart; gelu: apply GeLU2 to each output. */
void row_linear(const float *x, int64_t x_row, const float *w, const float *bias, float *y, int64_t y_row,
                int64_t rows, int64_t k_dim, int64_t n_dim, int gelu) {
    int64_t wide = n_dim / 16, whole = rows / RB, left = rows % RB;
    int64_t row_blocks = whole + (left >= 2) + (left % 2), tail = n_dim - wide * 16;
    #pragma omp parallel for schedule(static) collapse(2)
    for (int64_t cb = 0; cb < wide; cb++) {
        for (int64_t rb = 0; rb < row_blocks; rb++) {
            /* whole blocks of RB rows, then one of 2 where 2 or 3 are left, then one of 1 */
            int64_t r0 = rb < whole ? rb * RB : whole * RB + (rb == whole && left >= 2 ? 0 : left & 2);
            int count = rb < whole ? RB : (rb == whole && left >= 2 ? 2 : 1);
            int64_t c = cb * 16;
            const float *xs[RB];
            for (int r = 0; r < count; r++) xs[r] = x + (r0 + r) * x_row;
            v8 sums[RB][2];
            if (count == RB) columns16_4(xs, w, k_dim, n_dim, c, sums);
            else if (count == 2) columns16_2(xs, w, k_dim, n_dim, c, sums);
            else columns16_1(xs, w, k_dim, n_dim, c, sums);
            v8 b0 = bias ? load8(bias + c) : (v8){0}, b1 = bias ? load8(bias + c + 8) : (v8){0};
            for (int r = 0; r < count; r++) {
                v8 y0 = bias ? sums[r][0] + b0 : sums[r][0], y1 = bias ? sums[r][1] + b1 : sums[r][1];
                store8(y + (r0 + r) * y_row + c, gelu ? gelu2_8(y0) : y0);
                store8(y + (r0 + r) * y_row + c + 8, gelu ? gelu2_8(y1) : y1);
            }
        }
    }
    if (tail) {
        #pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = wide * 16; c < n_dim; c++) {
                float sum = column(x + r * x_row, w, k_dim, n_dim, c);
                sum = bias ? sum + bias[c] : sum;
                y[r * y_row + c] = gelu ? sum / (1.0f + exp_clamped(-1.702f * sum)) : sum;
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
