/*
 * Decode-sized matrix products `y = x @ W^T` on x86-64 CPUs with AVX-512, called from XLA as
 * FFI custom calls (gemma_server/kernels/cpu_matmul.py registers them).
 *
 * Why this exists: a decode step multiplies a handful of rows (one per running sequence) by
 * every weight of the model, so it is bound by how fast the weights stream from memory.
 * XLA:CPU reads bfloat16 weights at a fraction of the bandwidth when there are few rows, and
 * has no fused int8-weight product at all. These kernels read each weight byte once per call
 * and accumulate in float32 (bfloat16 pairs through vdpbf16ps where the CPU has AVX512-BF16,
 * else widened to float32 for an FMA), so bfloat16 and int8 weights cost what their bytes
 * cost. float32 weights go through the same FMA loops (XLA's float32 product streams on one
 * thread with one row and reaches a third of the bandwidth with 2-16).
 *
 * W is [N, K] row-major, Hugging Face's [out, in] (params.py): output n is the dot product of
 * x with row n, and a block of outputs is a contiguous block of W, read front to back.
 * x is float32 [M, K], y float32 [M, N]; W float32, bfloat16 or int8 (with a float32 scale
 * per row).
 *
 * Handlers (XLA's typed FFI): gs_matmul(x, W) and gs_matmul_scaled(x, W, scale). Work is
 * split into row blocks of W shared with XLA's own intra-op threads (parallel.h); no two
 * threads write the same y element, so results do not depend on the thread count.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "parallel.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

enum { W_BF16 = 1, W_I8 = 2, W_F32 = 3 };
enum { MBLOCK = 8 }; /* rows of x whose accumulators are kept in registers at once */
/* Row-by-row products prefetch the weights this many bytes ahead of the loads. The hardware
 * prefetcher stops at every 4 KB page; a software prefetch one page ahead keeps the stream
 * going across them (355 MB of bf16 products at one row of x, same process, medians:
 * 12.0 -> 10.5 ms; int8 6.2 -> 4.4 ms; float32 unchanged, its stream already runs at speed).
 * The prefetch goes to L2 (T1), not L1: filling L1 ahead took the L1 miss slots the loads
 * themselves need (decode step at one row, alternating builds: bf16 16.5 -> 14.0 ms, int8
 * 8.7 -> 8.1, float32 31.6 -> 28.3). 2, 8 or 16 KB ahead, or the T2 and NTA hints, measured
 * no better. */
enum { PREFETCH_BYTES = 4096 };

/* ---- widening loads: 16 weights at w (masked), as float32 lanes ------------------------ */

template <int KIND>
TARGET INLINE __m512 load16(const char *w, __mmask16 m) {
    if constexpr (KIND == W_F32) {
        return _mm512_maskz_loadu_ps(m, w);
    } else if constexpr (KIND == W_BF16) {
        return widen_bf16(w, m);
    } else {
        __m128i b = _mm_maskz_loadu_epi8(m, w);
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
    }
}

template <int KIND> constexpr int64_t ELEM = KIND == W_F32 ? 4 : KIND == W_BF16 ? 2 : 1;

/* ---- y[m, n] = dot(x[m, :], W[n, :]), weights widened to float32 ------------------------- */

/* Independent accumulators per row of x: with few rows, one chain of dependent FMAs per
 * output would leave the core waiting on FMA latency instead of on memory. */
template <int MC> constexpr int CHAINS = MC >= 8 ? 1 : MC >= 4 ? 2 : MC >= 2 ? 4 : 8;

template <int KIND, int MC>
TARGET static void dot_widened(const float *x, int64_t K, const char *wrow, float *y, int64_t N,
                          int64_t n) {
    constexpr int U = CHAINS<MC>;
    __m512 a[MC][U];
    UNROLL for (int r = 0; r < MC; r++) UNROLL for (int u = 0; u < U; u++) a[r][u] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 * U <= K; k += 16 * U) {
        UNROLL for (int u = 0; u < (U * ELEM<KIND> + 3) / 4; u++)  /* this step's cache lines */
            _mm_prefetch(wrow + k * ELEM<KIND> + 64 * u + PREFETCH_BYTES, _MM_HINT_T1);
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

/* 4 rows of x against R rows of W at once (K % 16 == 0): each x load feeds R products and each
 * widened weight 4, instead of one x load per product (the limit with many rows of x). */
template <int KIND, int R>
TARGET static void dot_widened_block(const float *x, int64_t K, const char *w, float *y,
                                     int64_t N, int64_t n) {
    static_assert(R == 4, "the sums go out four at a time (sum4)");
    __m512 a[4][R];
    UNROLL for (int m = 0; m < 4; m++) UNROLL for (int r = 0; r < R; r++) a[m][r] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
        __m512 wv[R];
        /* the next block's rows (see dot_bf16_block) */
        UNROLL for (int r = 0; r < R; r++)
            _mm_prefetch(w + ((R + r) * K + k) * ELEM<KIND>, _MM_HINT_T1);
        UNROLL for (int r = 0; r < R; r++)
            wv[r] = load16<KIND>(w + (r * K + k) * ELEM<KIND>, (__mmask16)0xFFFF);
        UNROLL for (int m = 0; m < 4; m++) {
            __m512 xv = _mm512_loadu_ps(x + m * K + k);
            UNROLL for (int r = 0; r < R; r++) a[m][r] = _mm512_fmadd_ps(xv, wv[r], a[m][r]);
        }
    }
    UNROLL for (int m = 0; m < 4; m++) _mm_storeu_ps(y + m * N + n, sum4(a[m][0], a[m][1], a[m][2], a[m][3]));
}

template <int KIND>
TARGET static void rows_widened(const void *xv, int64_t M, int64_t K, const char *w, int64_t N,
                              float *y, int64_t n0, int64_t n1) {
    const float *x = static_cast<const float *>(xv);
    constexpr int R = 4;
    int64_t n = n0;
    if (M >= 4 && K % 16 == 0)  /* blocks of 4 x rows by R W rows; the rest row by row below */
        for (; n + R <= n1; n += R)
            for (int64_t m = 0; m + 4 <= M; m += 4)
                dot_widened_block<KIND, R>(x + m * K, K, w + n * K * ELEM<KIND>, y + m * N, N, n);
    for (int64_t row = n0; row < n1; row++) {
        const char *wrow = w + row * K * ELEM<KIND>;
        for (int64_t m = row < n ? M - M % 4 : 0; m < M; m += MBLOCK) {
            const float *xm = x + m * K;
            float *ym = y + m * N;
            switch (M - m < MBLOCK ? M - m : (int64_t)MBLOCK) {
                case 1: dot_widened<KIND, 1>(xm, K, wrow, ym, N, row); break;
                case 2: dot_widened<KIND, 2>(xm, K, wrow, ym, N, row); break;
                case 3: dot_widened<KIND, 3>(xm, K, wrow, ym, N, row); break;
                case 4: dot_widened<KIND, 4>(xm, K, wrow, ym, N, row); break;
                case 5: dot_widened<KIND, 5>(xm, K, wrow, ym, N, row); break;
                case 6: dot_widened<KIND, 6>(xm, K, wrow, ym, N, row); break;
                case 7: dot_widened<KIND, 7>(xm, K, wrow, ym, N, row); break;
                default: dot_widened<KIND, 8>(xm, K, wrow, ym, N, row); break;
            }
        }
    }
}

/* ---- bfloat16 weights with AVX512-BF16: vdpbf16ps ----------------------------------------
 * vdpbf16ps multiplies 16 pairs of bfloat16 and adds both products into 16 float32 lanes: half
 * the instructions of widening each weight for an FMA. Along a row of W the pairs are simply
 * adjacent weights; x (bfloat16-exact in a bfloat16 model) is packed as pairs once per call.
 * Needs K % 32 == 0. */

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

template <int MC>
TARGET_BF16 static void dot_bf16_pairs(const uint32_t *xp, int64_t K, const uint16_t *wrow, float *y,
                                  int64_t N, int64_t n) {
    constexpr int U = CHAINS<MC>;
    __m512 a[MC][U];
    UNROLL for (int r = 0; r < MC; r++) UNROLL for (int u = 0; u < U; u++) a[r][u] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 * U <= K; k += 32 * U) {
        UNROLL for (int u = 0; u < U; u++)
            _mm_prefetch((const char *)(wrow + k + 32 * u) + PREFETCH_BYTES, _MM_HINT_T1);
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

/* R rows of W against 4 rows of x at once: each x load then feeds R products and each weight
 * load 4, instead of one x load per product (the limit with many rows of x). */
template <int R>
TARGET_BF16 static void dot_bf16_block(const uint32_t *xp, int64_t K, const uint16_t *w, float *y,
                                      int64_t N, int64_t n) {
    static_assert(R == 4, "the sums go out four at a time (sum4)");
    __m512 a[4][R];
    UNROLL for (int m = 0; m < 4; m++) UNROLL for (int r = 0; r < R; r++) a[m][r] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 32) {
        __m512bh wv[R];
        /* The next block's rows, at the same offset: R short interleaved streams (a row is
         * a few KB) are too short for the hardware prefetcher to ramp up on; prefetched, the
         * 32000x1024 head at 8 rows of x went from 3.5 to 1.6 ms. Into L2, not L1: 16 rows of
         * x (32 KB at K = 1024) already fill L1, which evicted the prefetched rows before
         * their first use (bf16 products at 16 rows: 224 -> 311 GFLOP/s). */
        UNROLL for (int r = 0; r < R; r++)
            _mm_prefetch((const char *)(w + (R + r) * K + k), _MM_HINT_T1);
        UNROLL for (int r = 0; r < R; r++) wv[r] = (__m512bh)_mm512_loadu_si512(w + r * K + k);
        UNROLL for (int m = 0; m < 4; m++) {
            __m512bh xv = (__m512bh)_mm512_loadu_si512(xp + m * (K / 2) + k / 2);
            UNROLL for (int r = 0; r < R; r++) a[m][r] = _mm512_dpbf16_ps(a[m][r], xv, wv[r]);
        }
    }
    UNROLL for (int m = 0; m < 4; m++) _mm_storeu_ps(y + m * N + n, sum4(a[m][0], a[m][1], a[m][2], a[m][3]));
}

TARGET_BF16 static void rows_bf16_pairs(const void *x, int64_t M, int64_t K, const char *w,
                                      int64_t N, float *y, int64_t n0, int64_t n1) {
    const uint32_t *xp = static_cast<const uint32_t *>(x); /* pairs, see pack_pairs */
    const uint16_t *wb = reinterpret_cast<const uint16_t *>(w);
    constexpr int R = 4;
    int64_t n = n0;
    if (M >= 4)  /* blocks of 4 x rows by R W rows; the rest row by row below */
        for (; n + R <= n1; n += R)
            for (int64_t m = 0; m + 4 <= M; m += 4)
                dot_bf16_block<R>(xp + m * (K / 2), K, wb + n * K, y + m * N, N, n);
    for (int64_t row = n0; row < n1; row++) {
        for (int64_t m = row < n ? M - M % 4 : 0; m < M; m += 8) {  /* x rows not done above */
            const uint32_t *xm = xp + m * (K / 2);
            const uint16_t *wrow = wb + row * K;
            float *ym = y + m * N;
            switch (M - m < 8 ? M - m : (int64_t)8) {
                case 1: dot_bf16_pairs<1>(xm, K, wrow, ym, N, row); break;
                case 2: dot_bf16_pairs<2>(xm, K, wrow, ym, N, row); break;
                case 3: dot_bf16_pairs<3>(xm, K, wrow, ym, N, row); break;
                case 4: dot_bf16_pairs<4>(xm, K, wrow, ym, N, row); break;
                case 5: dot_bf16_pairs<5>(xm, K, wrow, ym, N, row); break;
                case 6: dot_bf16_pairs<6>(xm, K, wrow, ym, N, row); break;
                case 7: dot_bf16_pairs<7>(xm, K, wrow, ym, N, row); break;
                default: dot_bf16_pairs<8>(xm, K, wrow, ym, N, row); break;
            }
        }
    }
}

static bool has_bf16_dot() {
    static const bool yes = (__builtin_cpu_init(), __builtin_cpu_supports("avx512bf16"));
    return yes;
}


/* ---- driver and XLA FFI bindings ------------------------------------------------------ */

/* y[:, begin:end] = x @ W[begin:end, :]^T */
typedef void (*rows_fn)(const void *, int64_t, int64_t, const char *, int64_t, float *, int64_t,
                        int64_t);

extern "C" int gs_cpu_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("fma");
}

namespace ffi = xla::ffi;

/* A product is split into row blocks of W (parallel.h); no two blocks write the same y. */
enum { CHUNKS_PER_THREAD = 4, MIN_CHUNK_ROWS = 256 };

/* x [M, K] float32; w [N, K] bfloat16 or int8; scale [N] float32 for int8 weights. */
static ffi::Error product(ffi::ThreadPool &pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer w,
                          const float *scale, ffi::ResultBuffer<ffi::F32> y) {
    auto xd = x.dimensions(), wd = w.dimensions();
    if (xd.size() != 2 || wd.size() != 2) return ffi::Error::InvalidArgument("rank must be 2");
    const int64_t M = xd[0], K = xd[1], N = wd[0];
    if (wd[1] != K) return ffi::Error::InvalidArgument("x and W disagree on K");
    rows_fn rows;
    bool pairs = false;
    switch (w.element_type()) {
        case ffi::DataType::BF16:
            pairs = has_bf16_dot() && K % 32 == 0;
            rows = pairs ? rows_bf16_pairs : rows_widened<W_BF16>;
            break;
        case ffi::DataType::S8:
            rows = rows_widened<W_I8>;
            break;
        case ffi::DataType::F32:
            rows = rows_widened<W_F32>;
            break;
        default: return ffi::Error::InvalidArgument("weights must be f32, bf16 or s8");
    }
    if ((w.element_type() == ffi::DataType::S8) != (scale != nullptr))
        return ffi::Error::InvalidArgument("int8 weights and scales go together");
    const void *xs = x.typed_data();
    std::vector<uint32_t> packed;
    if (pairs) {
        packed.resize((size_t)(M * K / 2));
        pack_pairs(x.typed_data(), M, K, packed.data());
        xs = packed.data();
    }
    const char *wd8 = static_cast<const char *>(w.untyped_data());
    float *yd = y->typed_data();
    int64_t threads = std::max<int64_t>(1, pool.num_threads());
    int64_t chunks = std::clamp<int64_t>(N / MIN_CHUNK_ROWS, 1, threads * CHUNKS_PER_THREAD);
    int64_t units16 = (N + 15) / 16;  /* blocks start on multiples of 16 rows */
    gs::parallel_for(pool, chunks, [&](int64_t c) {
        int64_t b = units16 * c / chunks * 16, e = std::min(N, units16 * (c + 1) / chunks * 16);
        if (b >= e) return;
        rows(xs, M, K, wd8, N, yd, b, e);
        if (scale)
            for (int64_t m = 0; m < M; m++)
                for (int64_t n = b; n < e; n++) yd[m * N + n] *= scale[n];
    });
    return ffi::Error::Success();
}

static ffi::Error matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer w,
                         ffi::ResultBuffer<ffi::F32> y) {
    return product(pool, x, w, nullptr, y);
}
static ffi::Error matmul_scaled(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer w,
                                ffi::Buffer<ffi::F32> s, ffi::ResultBuffer<ffi::F32> y) {
    return product(pool, x, w, s.typed_data(), y);
}

#define BIND \
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::AnyBuffer>()
XLA_FFI_DEFINE_HANDLER_SYMBOL(gs_matmul, matmul, BIND.Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(gs_matmul_scaled, matmul_scaled,
                              BIND.Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
