/*
 * Small-row matrix products for decode on x86-64 CPUs with AVX-512, called from XLA as
 * custom calls (gemma_server/kernels/cpu_matmul.py registers them).
 *
 * Why this exists: a decode step multiplies a handful of rows (one per running sequence) by
 * every weight of the model, so it is bound by how fast the weights stream from memory.
 * XLA:CPU streams float32 weights well but reads bfloat16 weights at a fraction of the
 * bandwidth when there are few rows, and has no fused int8-weight product at all. These
 * kernels read each weight byte once per call and accumulate in float32 (bfloat16 pairs
 * through vdpbf16ps where the CPU has AVX512-BF16, else widened to float32 for an FMA), so
 * bfloat16 and int8 weights cost what their bytes cost. float32 weights stay with XLA.
 *
 * Products (y is float32 [M, N], x is float32 [M, K]):
 *   kn:  y = x @ W       with W [K, N] row-major (every projection: our [in, out] layout)
 *   nk:  y = x @ W^T     with W [N, K] row-major (the tied output head: the embedding)
 * Weights are bfloat16 or int8; int8 takes a float32 scale per output column n.
 *
 * XLA FFI handlers (typed API): gs_mm_kn / gs_mm_nk take (x, W) and gs_mm_kn_scaled /
 * gs_mm_nk_scaled take (x, W, scale); the shapes come from the buffers.
 * Work is split over output columns between XLA's own intra-op threads (no second thread
 * pool competing for the cores), so no two threads write the same y element and results do
 * not depend on the thread count.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "xla/ffi/api/ffi.h"


#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define INLINE static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 16")

enum { W_BF16 = 1, W_I8 = 2 };
/* kn streams KPANEL weight rows side by side and asks for each row's bytes PREFETCH ahead:
 * the hardware prefetchers alone leave a third of the bandwidth unused on this pattern
 * (measured on Zen 4: 26 -> 36 GB/s for bfloat16 at one row, 128 bytes ahead). */
#ifndef KPANEL_ROWS
#define KPANEL_ROWS 64
#endif
#ifndef PREFETCH_BYTES
#define PREFETCH_BYTES 128
#endif
enum { KPANEL = KPANEL_ROWS, PREFETCH = PREFETCH_BYTES };   /* kn: weight rows streamed per pass over a tile */
enum { MBLOCK = 8 };   /* rows of x kept in registers at once */

/* ---- widening loads: 16 weights at w (masked), as float32 lanes ------------------------ */

template <int KIND>
TARGET INLINE __m512 load16(const char *w, __mmask16 m) {
    if constexpr (KIND == W_BF16) {
        __m256i h = _mm256_maskz_loadu_epi16(m, w);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    } else {
        __m128i b = _mm_maskz_loadu_epi8(m, w);
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
    }
}

template <int KIND> constexpr int64_t ELEM = KIND == W_BF16 ? 2 : 1;

INLINE __mmask16 lanes(int64_t left) {
    if (left <= 0) return 0;
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

/* ---- kn: y[m, n:n+16*NV] (+)= x[m, k0:k1] @ W[k0:k1, n:n+16*NV] for MC rows of x ---------- */

template <int KIND, int MC, int NV>
TARGET static void kn_tile(const float *x, int64_t K, const char *w, int64_t N, float *y,
                           int64_t n, int64_t k0, int64_t k1) {
    __mmask16 mask[NV];
    __m512 acc[MC][NV];
    UNROLL for (int v = 0; v < NV; v++) mask[v] = lanes(N - n - 16 * v);
    UNROLL for (int r = 0; r < MC; r++)
        UNROLL for (int v = 0; v < NV; v++)
            acc[r][v] = _mm512_maskz_loadu_ps(mask[v], y + r * N + n + 16 * v);
    for (int64_t k = k0; k < k1; k++) {
        const char *row = w + (k * N + n) * ELEM<KIND>;
        _mm_prefetch(row + PREFETCH, _MM_HINT_T0);
        __m512 wv[NV];
        UNROLL for (int v = 0; v < NV; v++) wv[v] = load16<KIND>(row + 16 * v * ELEM<KIND>, mask[v]);
        UNROLL for (int r = 0; r < MC; r++) {
            __m512 xv = _mm512_set1_ps(x[r * K + k]);
            UNROLL for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(xv, wv[v], acc[r][v]);
        }
    }
    UNROLL for (int r = 0; r < MC; r++)
        UNROLL for (int v = 0; v < NV; v++) _mm512_mask_storeu_ps(y + r * N + n + 16 * v, mask[v], acc[r][v]);
}

/* Rows of x per register tile, and 16-column vectors per tile row: NV * MC <= 16 accumulators. */
template <int KIND, int NV>
TARGET static void kn_block(const float *x, int64_t M, int64_t K, const char *w, int64_t N,
                            float *y, int64_t n, int64_t k0, int64_t k1) {
    constexpr int MB = 16 / NV;
    for (int64_t m = 0; m < M; m += MB) {
        const float *xm = x + m * K;
        float *ym = y + m * N;
        switch (M - m < MB ? M - m : MB) {
            case 1: kn_tile<KIND, 1, NV>(xm, K, w, N, ym, n, k0, k1); break;
            case 2: kn_tile<KIND, 2, NV>(xm, K, w, N, ym, n, k0, k1); break;
            case 3: kn_tile<KIND, 3, NV>(xm, K, w, N, ym, n, k0, k1); break;
            case 4: kn_tile<KIND, 4, NV>(xm, K, w, N, ym, n, k0, k1); break;
            case 5: if constexpr (MB >= 5) kn_tile<KIND, 5, NV>(xm, K, w, N, ym, n, k0, k1); break;
            case 6: if constexpr (MB >= 6) kn_tile<KIND, 6, NV>(xm, K, w, N, ym, n, k0, k1); break;
            case 7: if constexpr (MB >= 7) kn_tile<KIND, 7, NV>(xm, K, w, N, ym, n, k0, k1); break;
            default: if constexpr (MB >= 8) kn_tile<KIND, 8, NV>(xm, K, w, N, ym, n, k0, k1); break;
        }
    }
}

/* y += x[:, k_begin:k_end] @ W[k_begin:k_end, :]: a contiguous block of W's rows, streamed in
 * panels of KPANEL rows, each panel left to right (KPANEL sequential streams); each weight is
 * read from memory once. Few rows of x take wide tiles, more rows narrow ones. */
template <int KIND>
TARGET static void kn_rows(const void *xv, int64_t M, int64_t K, const char *w, int64_t N,
                           float *y, int64_t k_begin, int64_t k_end) {
    const float *x = static_cast<const float *>(xv);
    for (int64_t k0 = k_begin; k0 < k_end; k0 += KPANEL) {
        int64_t k1 = k0 + (int64_t)KPANEL < k_end ? k0 + (int64_t)KPANEL : k_end;
        if (M <= 4)
            for (int64_t n = 0; n < N; n += 64) kn_block<KIND, 4>(x, M, K, w, N, y, n, k0, k1);
        else
            for (int64_t n = 0; n < N; n += 32) kn_block<KIND, 2>(x, M, K, w, N, y, n, k0, k1);
    }
}

/* ---- nk: y[m, n] = dot(x[m, :], W[n, :]) ------------------------------------------------ */

/* Independent accumulators per row of x: with few rows, one chain of dependent FMAs per
 * output would leave the core waiting on FMA latency instead of on memory. */
template <int MC> constexpr int CHAINS = MC >= 8 ? 1 : MC >= 4 ? 2 : MC >= 2 ? 4 : 8;

template <int KIND, int MC>
TARGET static void nk_row(const float *x, int64_t K, const char *wrow, float *y, int64_t N,
                          int64_t n) {
    constexpr int U = CHAINS<MC>;
    __m512 a[MC][U];
    UNROLL for (int r = 0; r < MC; r++) UNROLL for (int u = 0; u < U; u++) a[r][u] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 * U <= K; k += 16 * U) {
        UNROLL for (int u = 0; u < U; u++) {
            __m512 wv = load16<KIND>(wrow + (k + 16 * u) * ELEM<KIND>, (__mmask16)0xFFFF);
            UNROLL for (int r = 0; r < MC; r++)
                a[r][u] = _mm512_fmadd_ps(_mm512_loadu_ps(x + r * K + k + 16 * u), wv, a[r][u]);
        }
    }
    for (; k < K; k += 16) {
        __mmask16 mk = lanes(K - k);
        __m512 wv = load16<KIND>(wrow + k * ELEM<KIND>, mk);
        UNROLL for (int r = 0; r < MC; r++)
            a[r][0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, x + r * K + k), wv, a[r][0]);
    }
    UNROLL for (int r = 0; r < MC; r++) {
        UNROLL for (int u = 1; u < U; u++) a[r][0] = _mm512_add_ps(a[r][0], a[r][u]);
        y[r * N + n] = _mm512_reduce_add_ps(a[r][0]);
    }
}

template <int KIND>
TARGET static void nk_columns(const void *xv, int64_t M, int64_t K, const char *w, int64_t N,
                              float *y, int64_t n0, int64_t n1) {
    const float *x = static_cast<const float *>(xv);
    for (int64_t n = n0; n < n1; n++) {
        const char *wrow = w + n * K * ELEM<KIND>;
        for (int64_t m = 0; m < M; m += MBLOCK) {
            const float *xm = x + m * K;
            float *ym = y + m * N;
            switch (M - m < MBLOCK ? M - m : (int64_t)MBLOCK) {
                case 1: nk_row<KIND, 1>(xm, K, wrow, ym, N, n); break;
                case 2: nk_row<KIND, 2>(xm, K, wrow, ym, N, n); break;
                case 3: nk_row<KIND, 3>(xm, K, wrow, ym, N, n); break;
                case 4: nk_row<KIND, 4>(xm, K, wrow, ym, N, n); break;
                case 5: nk_row<KIND, 5>(xm, K, wrow, ym, N, n); break;
                case 6: nk_row<KIND, 6>(xm, K, wrow, ym, N, n); break;
                case 7: nk_row<KIND, 7>(xm, K, wrow, ym, N, n); break;
                default: nk_row<KIND, 8>(xm, K, wrow, ym, N, n); break;
            }
        }
    }
}

/* ---- bfloat16 weights with AVX512-BF16: pairs of rows through vdpbf16ps --------------------
 * vdpbf16ps multiplies 16 pairs of bfloat16 and adds both products to 16 float32 lanes: half
 * the instructions of widening each weight and using an FMA. x (already bfloat16-exact in a
 * bfloat16 model) is packed as pairs (x[k], x[k+1]); the weights of rows k and k+1 are
 * interleaved in registers (unpacklo/hi), which leaves the 32 columns of a tile in a shuffled
 * lane order that one permute undoes when the tile is stored. Needs N % 32 == 0, K % 32 == 0. */

#define TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))

static inline uint32_t bf16_bits(float f) { /* round to nearest even */
    uint32_t u;
    memcpy(&u, &f, 4);
    return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
}

static void pack_pairs(const float *x, int64_t M, int64_t K, uint32_t *out) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < K; k += 2)
            out[m * (K / 2) + k / 2] = bf16_bits(x[m * K + k]) | (bf16_bits(x[m * K + k + 1]) << 16);
}

/* Register lane L = 4j + i of the "lo" half holds column 8j + i of the tile, of "hi" 8j+4+i. */
TARGET_BF16 INLINE __m512i lane_columns(int half) {
    alignas(64) int32_t idx[16];
    for (int j = 0; j < 4; j++)
        for (int i = 0; i < 4; i++) idx[4 * j + i] = 8 * j + 4 * half + i;
    return _mm512_load_si512(idx);
}
TARGET_BF16 INLINE __m512i column_lanes(int part) { /* y[16*part + c] <- lo/hi lanes */
    alignas(64) int32_t idx[16];
    for (int c = 0; c < 16; c++) {
        int col = 16 * part + c, j = col / 8, h = (col % 8) / 4, i = col % 4;
        idx[c] = 16 * h + 4 * j + i;
    }
    return _mm512_load_si512(idx);
}

template <int MC>
TARGET_BF16 static void kn_dp_tile(const uint32_t *xp, int64_t K, const uint16_t *w, int64_t N,
                                   float *y, int64_t n, int64_t k0, int64_t k1) {
    __m512 lo[MC], hi[MC];
    const __m512i to_lo = lane_columns(0), to_hi = lane_columns(1);
    UNROLL for (int r = 0; r < MC; r++) {
        __m512 a = _mm512_loadu_ps(y + r * N + n), b = _mm512_loadu_ps(y + r * N + n + 16);
        lo[r] = _mm512_permutex2var_ps(a, to_lo, b);
        hi[r] = _mm512_permutex2var_ps(a, to_hi, b);
    }
    for (int64_t k = k0; k < k1; k += 2) {
        __m512i a = _mm512_loadu_si512(w + k * N + n), b = _mm512_loadu_si512(w + (k + 1) * N + n);
        _mm_prefetch((const char *)(w + k * N + n) + PREFETCH, _MM_HINT_T0);
        _mm_prefetch((const char *)(w + (k + 1) * N + n) + PREFETCH, _MM_HINT_T0);
        __m512bh plo = (__m512bh)_mm512_unpacklo_epi16(a, b);
        __m512bh phi = (__m512bh)_mm512_unpackhi_epi16(a, b);
        UNROLL for (int r = 0; r < MC; r++) {
            __m512bh xv = (__m512bh)_mm512_set1_epi32((int)xp[r * (K / 2) + k / 2]);
            lo[r] = _mm512_dpbf16_ps(lo[r], xv, plo);
            hi[r] = _mm512_dpbf16_ps(hi[r], xv, phi);
        }
    }
    const __m512i out0 = column_lanes(0), out1 = column_lanes(1);
    UNROLL for (int r = 0; r < MC; r++) {
        _mm512_storeu_ps(y + r * N + n, _mm512_permutex2var_ps(lo[r], out0, hi[r]));
        _mm512_storeu_ps(y + r * N + n + 16, _mm512_permutex2var_ps(lo[r], out1, hi[r]));
    }
}

TARGET_BF16 static void kn_dp_rows(const void *x, int64_t M, int64_t K, const char *w,
                                   int64_t N, float *y, int64_t k_begin, int64_t k_end) {
    const uint32_t *xp = static_cast<const uint32_t *>(x); /* pairs, see pack_pairs */
    const uint16_t *wb = reinterpret_cast<const uint16_t *>(w);
    for (int64_t k0 = k_begin; k0 < k_end; k0 += KPANEL) {
        int64_t k1 = k0 + (int64_t)KPANEL < k_end ? k0 + (int64_t)KPANEL : k_end;
        for (int64_t n = 0; n < N; n += 32)
            for (int64_t m = 0; m < M; m += 8) {
                const uint32_t *xm = xp + m * (K / 2);
                float *ym = y + m * N;
                switch (M - m < 8 ? M - m : (int64_t)8) {
                    case 1: kn_dp_tile<1>(xm, K, wb, N, ym, n, k0, k1); break;
                    case 2: kn_dp_tile<2>(xm, K, wb, N, ym, n, k0, k1); break;
                    case 3: kn_dp_tile<3>(xm, K, wb, N, ym, n, k0, k1); break;
                    case 4: kn_dp_tile<4>(xm, K, wb, N, ym, n, k0, k1); break;
                    case 5: kn_dp_tile<5>(xm, K, wb, N, ym, n, k0, k1); break;
                    case 6: kn_dp_tile<6>(xm, K, wb, N, ym, n, k0, k1); break;
                    case 7: kn_dp_tile<7>(xm, K, wb, N, ym, n, k0, k1); break;
                    default: kn_dp_tile<8>(xm, K, wb, N, ym, n, k0, k1); break;
                }
            }
    }
}

template <int MC>
TARGET_BF16 static void nk_dp_row(const uint32_t *xp, int64_t K, const uint16_t *wrow, float *y,
                                  int64_t N, int64_t n) {
    constexpr int U = CHAINS<MC>;
    __m512 a[MC][U];
    UNROLL for (int r = 0; r < MC; r++) UNROLL for (int u = 0; u < U; u++) a[r][u] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 * U <= K; k += 32 * U) {
        UNROLL for (int u = 0; u < U; u++) {
            __m512bh wv = (__m512bh)_mm512_loadu_si512(wrow + k + 32 * u);
            UNROLL for (int r = 0; r < MC; r++)
                a[r][u] = _mm512_dpbf16_ps(
                    a[r][u], (__m512bh)_mm512_loadu_si512(xp + r * (K / 2) + (k + 32 * u) / 2), wv);
        }
    }
    for (; k < K; k += 32) {
        __m512bh wv = (__m512bh)_mm512_loadu_si512(wrow + k);
        UNROLL for (int r = 0; r < MC; r++)
            a[r][0] = _mm512_dpbf16_ps(a[r][0], (__m512bh)_mm512_loadu_si512(xp + r * (K / 2) + k / 2), wv);
    }
    UNROLL for (int r = 0; r < MC; r++) {
        UNROLL for (int u = 1; u < U; u++) a[r][0] = _mm512_add_ps(a[r][0], a[r][u]);
        y[r * N + n] = _mm512_reduce_add_ps(a[r][0]);
    }
}

TARGET_BF16 static void nk_dp_columns(const void *x, int64_t M, int64_t K, const char *w,
                                      int64_t N, float *y, int64_t n0, int64_t n1) {
    const uint32_t *xp = static_cast<const uint32_t *>(x); /* pairs, see pack_pairs */
    const uint16_t *wb = reinterpret_cast<const uint16_t *>(w);
    for (int64_t n = n0; n < n1; n++)
        for (int64_t m = 0; m < M; m += 8) {
            const uint32_t *xm = xp + m * (K / 2);
            const uint16_t *wrow = wb + n * K;
            float *ym = y + m * N;
            switch (M - m < 8 ? M - m : (int64_t)8) {
                case 1: nk_dp_row<1>(xm, K, wrow, ym, N, n); break;
                case 2: nk_dp_row<2>(xm, K, wrow, ym, N, n); break;
                case 3: nk_dp_row<3>(xm, K, wrow, ym, N, n); break;
                case 4: nk_dp_row<4>(xm, K, wrow, ym, N, n); break;
                case 5: nk_dp_row<5>(xm, K, wrow, ym, N, n); break;
                case 6: nk_dp_row<6>(xm, K, wrow, ym, N, n); break;
                case 7: nk_dp_row<7>(xm, K, wrow, ym, N, n); break;
                default: nk_dp_row<8>(xm, K, wrow, ym, N, n); break;
            }
        }
}

static bool has_bf16_dot() {
    static const bool yes = (__builtin_cpu_init(), __builtin_cpu_supports("avx512bf16"));
    return yes;
}

/* ---- driver and XLA FFI bindings ------------------------------------------------------ */

/* y (+)= the product over [begin, end): K-rows of W for `x @ W`, output columns for `x @ W^T` */
typedef void (*part_fn)(const void *, int64_t, int64_t, const char *, int64_t, float *, int64_t,
                        int64_t);

extern "C" int gs_cpu_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("fma");
}

namespace ffi = xla::ffi;

/* One product split into chunks that the calling thread and XLA's idle pool threads claim one
 * at a time (an atomic counter): a pool thread that wakes up late still takes its share, and
 * the caller never waits for a chunk nobody has started (XLA may run several custom calls at
 * once on its small pool). The state is shared with the tasks, which may outlive the call and
 * then find nothing left to claim.
 *
 * Chunks are contiguous blocks of W, so each one is a sequential read: for `x @ W` ([K, N])
 * blocks of rows of W, each participant adding into its own zeroed partial y, summed at the
 * end; for `x @ W^T` ([N, K]) blocks of W's rows are blocks of y's columns, written directly. */
#ifndef CHUNKS_PER_THREAD
#define CHUNKS_PER_THREAD 4
#endif
struct Split {
    part_fn part;
    bool over_k;  /* chunks are row blocks of a [K, N] W (partial sums), else of [N, K] */
    const void *x;
    int64_t M, K, N, units, unit, chunks, participants;
    const char *w;
    const float *scale;
    float *y;
    std::vector<uint32_t> pairs;
    std::vector<float> partials; /* (participants - 1) x M x N */
    std::atomic<int64_t> next{0}, done{0}, joined{1};

    void work(int64_t id) {
        float *out = id == 0 ? y : partials.data() + (id - 1) * M * N;
        int64_t extent = over_k ? K : N;
        for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
            int64_t b = units * c / chunks * unit, e = units * (c + 1) / chunks * unit;
            if (e > extent) e = extent;
            if (b < e) part(x, M, K, w, N, over_k ? out : y, b, e);
            done.fetch_add(1, std::memory_order_acq_rel);
        }
    }

    void help() {
        int64_t id = joined.fetch_add(1, std::memory_order_relaxed);
        if (id < participants) work(id);
    }
};

static void run(ffi::ThreadPool &pool, std::shared_ptr<Split> split) {
    Split &s = *split;
    int64_t threads = pool.num_threads() > 0 ? pool.num_threads() : 1;
    int64_t extent = s.over_k ? s.K : s.N;
    s.units = (extent + s.unit - 1) / s.unit;
    /* Chunks of at least 128 K-rows or 256 output rows: smaller ones cost more than they save. */
    int64_t most = (extent + (s.over_k ? 127 : 255)) / (s.over_k ? 128 : 256);
    int64_t want = threads * CHUNKS_PER_THREAD;
    s.chunks = want < most ? want : (most > 0 ? most : 1);
    s.participants = threads < s.chunks ? threads : s.chunks;
    std::fill(s.y, s.y + s.M * s.N, 0.0f);
    if (s.over_k) s.partials.assign((size_t)((s.participants - 1) * s.M * s.N), 0.0f);
    for (int64_t t = 1; t < s.participants; t++) pool.Schedule([split] { split->help(); });
    s.work(0);
    while (s.done.load(std::memory_order_acquire) < s.chunks) _mm_pause();
    if (s.over_k)
        for (int64_t p = 1; p < s.participants; p++) {
            const float *partial = s.partials.data() + (p - 1) * s.M * s.N;
            for (int64_t i = 0; i < s.M * s.N; i++) s.y[i] += partial[i];
        }
    if (s.scale)
        for (int64_t m = 0; m < s.M; m++)
            for (int64_t n = 0; n < s.N; n++) s.y[m * s.N + n] *= s.scale[n];
}

/* x [M, K] float32; w [K, N] ("kn") or [N, K] ("nk"); scale [N] float32 for int8 weights. */
static ffi::Error product(ffi::ThreadPool &pool, bool transposed, ffi::Buffer<ffi::F32> x,
                          ffi::AnyBuffer w, const float *scale, ffi::ResultBuffer<ffi::F32> y) {
    auto xd = x.dimensions(), wd = w.dimensions();
    if (xd.size() != 2 || wd.size() != 2) return ffi::Error::InvalidArgument("rank must be 2");
    const int64_t M = xd[0], K = xd[1], N = transposed ? wd[0] : wd[1];
    if ((transposed ? wd[1] : wd[0]) != K) return ffi::Error::InvalidArgument("K mismatch");
    auto split = std::make_shared<Split>();
    part_fn &part = split->part;
    bool pairs = false;
    switch (w.element_type()) {
        case ffi::DataType::BF16:
            pairs = has_bf16_dot() && N % 32 == 0 && K % 32 == 0;
            if (pairs)
                part = transposed ? nk_dp_columns : kn_dp_rows;
            else
                part = transposed ? nk_columns<W_BF16> : kn_rows<W_BF16>;
            break;
        case ffi::DataType::S8:
            part = transposed ? nk_columns<W_I8> : kn_rows<W_I8>; break;
        default: return ffi::Error::InvalidArgument("weights must be bf16 or s8");
    }
    if ((w.element_type() == ffi::DataType::S8) != (scale != nullptr))
        return ffi::Error::InvalidArgument("int8 weights and scales go together");
    split->x = x.typed_data();
    if (pairs) {
        split->pairs.resize((size_t)(M * K / 2));
        pack_pairs(x.typed_data(), M, K, split->pairs.data());
        split->x = split->pairs.data();
    }
    split->M = M, split->K = K, split->N = N;
    split->over_k = !transposed;
    split->unit = transposed ? 16 : KPANEL; /* K blocks stay even: bfloat16 row pairs */
    split->w = static_cast<const char *>(w.untyped_data());
    split->scale = scale, split->y = y->typed_data();
    run(pool, split);
    return ffi::Error::Success();
}

static ffi::Error mm_kn(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer w,
                        ffi::ResultBuffer<ffi::F32> y) {
    return product(pool, false, x, w, nullptr, y);
}
static ffi::Error mm_nk(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer w,
                        ffi::ResultBuffer<ffi::F32> y) {
    return product(pool, true, x, w, nullptr, y);
}
static ffi::Error mm_kn_scaled(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer w,
                               ffi::Buffer<ffi::F32> s, ffi::ResultBuffer<ffi::F32> y) {
    return product(pool, false, x, w, s.typed_data(), y);
}
static ffi::Error mm_nk_scaled(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer w,
                               ffi::Buffer<ffi::F32> s, ffi::ResultBuffer<ffi::F32> y) {
    return product(pool, true, x, w, s.typed_data(), y);
}

#define PLAIN \
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::AnyBuffer>()
XLA_FFI_DEFINE_HANDLER_SYMBOL(gs_mm_kn, mm_kn, PLAIN.Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(gs_mm_nk, mm_nk, PLAIN.Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(gs_mm_kn_scaled, mm_kn_scaled,
                              PLAIN.Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(gs_mm_nk_scaled, mm_nk_scaled,
                              PLAIN.Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
