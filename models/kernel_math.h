/* Arithmetic the decoder's C kernels share (row_attention.c, row_ops.c); models/kernels.py hashes this file
   with each kernel's source, so a change here rebuilds them. */
#ifndef KERNEL_MATH_H
#define KERNEL_MATH_H
#include <stdint.h>

/* exp(x) for x in [-87, 88] without branches (so loops over it vectorize): 2^n * p(r), x = n ln 2 + r, with
   Cephes' split of ln 2 and its polynomial (relative error ~1e-7). Callers clamp x to that range. */
static inline float exp_in_range(float x) {
    float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { uint32_t u; float f; } scale;
    scale.u = (uint32_t)((int32_t)n + 127) << 23;
    return p * scale.f;
}

#endif
