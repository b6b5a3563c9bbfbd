/* Arithmetic the decoder's C kernels share (row_attention.c, row_ops.c); models/kernels.py hashes this file
   with each kernel's source, so a change here rebuilds them. */
#ifndef KERNEL_MATH_H
#define KERNEL_MATH_H
#include <stdint.h>

/* Cephes' polynomial for exp(r), r in [-ln 2 / 2, ln 2 / 2], p holding its first coefficient: written once
   for the scalar and the vector exp, so that both do the same operations. */
#define EXP_POLYNOMIAL(p, r)                 \
    do {                                     \
        p = p * r + 1.3981999507e-3f;        \
        p = p * r + 8.3334519073e-3f;        \
        p = p * r + 4.1665795894e-2f;        \
        p = p * r + 1.6666665459e-1f;        \
        p = p * r + 5.0000001201e-1f;        \
        p = p * r * r + r + 1.0f;            \
    } while (0)

/* floor(x) for |x| < 2^31, through an integer conversion the compiler vectorizes (floorf it keeps scalar). */
static inline float floor_small(float x) {
    float t = (float)(int32_t)x;  /* x rounded toward zero */
    return t - (t > x ? 1.0f : 0.0f);  /* a select of constants: nothing computed only on one side */
}

/* exp(x) for x in [-87, 88] without branches (so loops over it vectorize): 2^n * p(r), x = n ln 2 + r, with
   Cephes' split of ln 2 and its polynomial (relative error ~1e-7). Callers clamp x to that range. */
static inline float exp_in_range(float x) {
    float n = floor_small(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    EXP_POLYNOMIAL(p, r);
    union { uint32_t u; float f; } scale;
    scale.u = (uint32_t)((int32_t)n + 127) << 23;
    return p * scale.f;
}

/* The same exp on 16 floats at once, in GCC's vector types (the compiler keeps scalar code that calls the
   above with clamps around it). Each lane's arithmetic is the scalar's, operation for operation, so the
   bits are the same (checked for every float in range when this was written). */
typedef float vfloat16 __attribute__((vector_size(64)));
typedef int32_t vint16 __attribute__((vector_size(64)));

static inline vfloat16 select16(vint16 mask, vfloat16 yes, vfloat16 no) {
    return (vfloat16)(((vint16)yes & mask) | ((vint16)no & ~mask));
}

static inline vfloat16 exp_in_range16(vfloat16 x) {
    vfloat16 zero = {0}, m = x * 1.44269504088896341f + 0.5f;
    vfloat16 t = __builtin_convertvector(__builtin_convertvector(m, vint16), vfloat16);
    vfloat16 n = t - select16(t > m, zero + 1.0f, zero);
    vfloat16 r = x - n * 0.693359375f + n * 2.12194440e-4f;
    vfloat16 p = zero + 1.9875691500e-4f;
    EXP_POLYNOMIAL(p, r);
    return p * (vfloat16)((__builtin_convertvector(n, vint16) + 127) << 23);
}

static inline vfloat16 load16(const float *p) { vfloat16 v; __builtin_memcpy(&v, p, sizeof v); return v; }
static inline void store16(float *p, vfloat16 v) { __builtin_memcpy(p, &v, sizeof v); }

#endif
