/*
 * The AVX-512 vocabulary the CPU kernels share: the target attributes that let one build run
 * on any x86-64 (the Python side checks the CPU before registering anything), masks for the
 * last partial vector of a row, and the widening of bfloat16 to float32 lanes.
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

/* The lane sums of four vectors, as the four lanes of one: a transpose-and-add tree. Summing
 * each vector on its own (`_mm512_reduce_add_ps`) costs ~10 instructions a vector, which in
 * the 4x4 block kernels was ~5% of a 16-row product. */
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
