/*
 * The AVX-512 vocabulary the CPU kernels share: the target attributes that let one build run
 * on any x86-64 (the Python side checks the CPU before registering anything), masks for the
 * last partial vector of a row, the widening of bfloat16 to float32 lanes, e^x, and lane sums
 * of several vectors at once.
 */
#pragma once

#include <immintrin.h>
#include <stdint.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define INLINE static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 16")

/* The first min(left, 16) lanes (none when left <= 0). */
INLINE __mmask16 lanes(int64_t left) {
    if (left <= 0) return 0;
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

/* 16 bfloat16 values at p (masked lanes read nothing) as float32: a bfloat16 is the upper
 * half of the float32 with the same value. */
TARGET INLINE __m512 widen_bf16(const void *p, __mmask16 m) {
    __m256i h = _mm256_maskz_loadu_epi16(m, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* e^x for x <= 0 (Cephes' expf polynomial, ~1 ulp); exactly 0 below -87.3. */
TARGET INLINE __m512 exp_nonpositive(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-87.3f);
    __m512 xc = _mm512_max_ps(x, lo);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    y = _mm512_scalef_ps(y, n);
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ), y);
}

/* Lane sums of several vectors at once, each as one lane of the result: transpose-and-add
 * trees. Summing each vector on its own (`_mm512_reduce_add_ps`) costs ~10 instructions a
 * vector: ~5% of a 16-row product in the 4x4 block kernels (sum4), and the scores' dominant
 * cost in decode attention (sum16). */
TARGET INLINE __m256 fold_halves(__m512 v) {
    return _mm256_add_ps(_mm512_castps512_ps256(v),
                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}
TARGET INLINE __m128 sum4(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m256 ab = _mm256_hadd_ps(fold_halves(a), fold_halves(b));
    __m256 cd = _mm256_hadd_ps(fold_halves(c), fold_halves(d));
    __m256 abcd = _mm256_hadd_ps(ab, cd); /* a b c d partial sums, low and high 128 bits */
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

/* Lane i of the result = the sum of the lanes of v[i]: 16 sums in 15 shuffle-add steps. */
TARGET INLINE __m512 sum16(const __m512 *v) {
    __m512 t[8], u[4], w[2];
    /* Inputs taken transposed (v[4c + e] where 4e + c is read): the tree's last step leaves
     * the sum of its input 4e + c in lane 4c + e, so lane i ends up with the sum of v[i]. */
    UNROLL for (int i = 0; i < 8; i++) {
        const __m512 a = v[4 * ((2 * i) % 4) + (2 * i) / 4], b = v[4 * ((2 * i + 1) % 4) + (2 * i + 1) / 4];
        t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    }
    UNROLL for (int i = 0; i < 4; i++)
        u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0xDD));
    UNROLL for (int i = 0; i < 2; i++)
        w[i] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * i], u[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(u[2 * i], u[2 * i + 1], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], 0x88), _mm512_shuffle_ps(w[0], w[1], 0xDD));
}
