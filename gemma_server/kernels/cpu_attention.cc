/*
 * Decode attention (one query per sequence) straight out of the KV cache, on x86-64 CPUs with
 * AVX-512: an XLA FFI custom call, registered by cpu_attention.py.
 *
 * Why this exists: XLA:CPU lowers decode attention to a transposed copy of the keys, two small
 * batched products and a handful of mask / softmax fusions. On bench-150m that was ~2.5 ms of
 * a 15 ms bfloat16 batch-1 step (the products themselves ~11 ms), and for 16 float32 sequences
 * over 512 entries the score product alone read the keys at ~17 GB/s, ~0.5 ms a layer. Here
 * each (sequence, kv head) reads its keys and values once, in place, and skips the entries no
 * query can see.
 *
 * gs_decode_attention(q, keys, values, positions) -> out, with
 *   q         float32 [B, K, G, Hd]: G queries per kv head, RoPE applied, not yet scaled
 *   keys      [Bc, K, S, Hd]  float32, or bfloat16 stored as uint16 bits (model/cache.py);
 *   values    the same; rows [0, B) and entries [0, length) are read (Bc >= B)
 *   positions int32 [B]: each query's position (-1: padding row)
 *   out       float32 [B, K, G, Hd]
 * and attributes length (entries read), scale, softcap (0: none), window (0: none).
 *
 * Semantics are model/forward.py's `_attend_block` for one query: entry j of a cache of S
 * entries holds position p_j = last - ((last - j) mod S) (last = max(position, 0)); it is
 * visible iff 0 <= p_j <= position and, with a window, p_j > position - window. Scores are
 * dot(q, k) * scale, soft-capped as cap * tanh(s / cap), masked to -1e30 (a row that sees
 * nothing gets a uniform softmax, never NaN), softmax'ed in float32, the probabilities
 * rounded to bfloat16 when the values are bfloat16 (as XLA's einsum there), and the values
 * summed with those weights in float32.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include <algorithm>
#include <vector>

#include "parallel.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr float MASKED = -1e30f;  /* as forward.py's _MASKED */
/* A (sequence, kv head)'s keys and values are two streams of a few to a few hundred KB, cold
 * in the cache at decode (the step streamed a layer's weights since it last read them). The
 * hardware prefetcher stops at every 4 KB page, so without help every page starts with a
 * stall: B=16 rows over 256 entries took ~0.4 ms a layer inside a decode step against 0.08 ms
 * warm. Both streams are prefetched this far ahead of the score loop, the values into L2 for
 * the weighted sum that follows. */
constexpr int64_t PREFETCH_BYTES = 4096;

/* 16 cache elements (masked) as float32 lanes. */
template <bool BF16>
TARGET INLINE __m512 load16(const void *p, int64_t i, __mmask16 m) {
    if constexpr (BF16) {
        return widen_bf16(static_cast<const uint16_t *>(p) + i, m);
    } else {
        return _mm512_maskz_loadu_ps(m, static_cast<const float *>(p) + i);
    }
}

/* cap * tanh(s / cap), through e^(-2|y|) so nothing overflows. */
TARGET INLINE __m512 soft_cap(__m512 s, float cap) {
    __m512 y = _mm512_div_ps(s, _mm512_set1_ps(cap));
    __m512 a = _mm512_abs_ps(y);
    __m512 t = exp_nonpositive(_mm512_mul_ps(a, _mm512_set1_ps(-2.0f)));
    __m512 th = _mm512_div_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), t),
                              _mm512_add_ps(_mm512_set1_ps(1.0f), t));
    __m512 sign = _mm512_and_ps(y, _mm512_castsi512_ps(_mm512_set1_epi32((int)0x80000000u)));
    return _mm512_mul_ps(_mm512_set1_ps(cap), _mm512_or_ps(th, sign));
}

/* Round each lane to the nearest bfloat16 (ties to even), kept as float32. */
TARGET INLINE __m512 round_bf16(__m512 x) {
    __m512i u = _mm512_castps_si512(x);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    u = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), odd));
    return _mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32((int)0xFFFF0000u)));
}

struct Shape {
    int64_t B, K, G, Hd, S, n;  /* n: entries read (the attributes' length) */
    float scale, cap;
    int64_t window;
};

/* Which of the first n entries row b's query sees (1 / 0), and the range [lo, hi) of entries
 * worth reading: the visible ones, or all n when none is (the uniform softmax of padding). */
static void visibility(const Shape &sh, int32_t position, uint8_t *vis, int64_t *lo, int64_t *hi) {
    int64_t last = std::max<int64_t>(position, 0), first_seen = -1, last_seen = -1;
    int64_t newest = last % sh.S;  /* the entry holding `last`; (last - j) mod S without a
                                      division per entry, as 0 <= j < S */
    for (int64_t j = 0; j < sh.n; j++) {
        int64_t p = last - newest + j - (j > newest ? sh.S : 0);
        bool ok = p >= 0 && p <= position && (sh.window == 0 || p > position - sh.window);
        vis[j] = ok;
        if (ok) {
            if (first_seen < 0) first_seen = j;
            last_seen = j;
        }
    }
    *lo = first_seen < 0 ? 0 : first_seen;
    *hi = first_seen < 0 ? sh.n : last_seen + 1;
}

/* One (sequence, kv head): G queries against its entries [lo, hi).
 *
 * Scores are kept in blocks of 16 lanes, KB = 16 / G entries by G queries (lane g * KB + e is
 * query g against entry j0 + e): a key is loaded once for all G queries, and each block's 16
 * dot products are summed together (sum16). The softmax then works lane-wise over blocks. */
template <int G, bool BF16>
TARGET static void attend_one(const Shape &sh, const float *q, const void *keys, const void *values,
                              const uint8_t *vis, int64_t lo, int64_t hi, float *out,
                              std::vector<float> &blocks) {
    constexpr int KB = 16 / G;
    const int64_t Hd = sh.Hd;
    const int64_t j_begin = lo / KB * KB;
    const int64_t nblocks = (hi - j_begin + KB - 1) / KB;
    blocks.resize((size_t)(nblocks * 16));
    float *s = blocks.data();

    /* 1. scores, scaled, capped and masked; entries past hi or n: -inf (weight exactly 0).
     * Keys and values are prefetched PREFETCH_BYTES ahead of the block being read. */
    constexpr int64_t ELEM = BF16 ? 2 : 4;
    const int64_t block_bytes = KB * Hd * ELEM;
    const char *kbytes = static_cast<const char *>(keys), *vbytes = static_cast<const char *>(values);
    for (int64_t off = 0; off < PREFETCH_BYTES && off < (hi - j_begin) * Hd * ELEM; off += 64) {
        _mm_prefetch(kbytes + j_begin * Hd * ELEM + off, _MM_HINT_T0);
        _mm_prefetch(vbytes + j_begin * Hd * ELEM + off, _MM_HINT_T1);
    }
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int64_t blk = 0; blk < nblocks; blk++) {
        const int64_t j0 = j_begin + blk * KB;
        const int64_t ahead = j0 * Hd * ELEM + PREFETCH_BYTES;
        if (ahead < hi * Hd * ELEM)
            for (int64_t off = 0; off < block_bytes; off += 64) {
                _mm_prefetch(kbytes + ahead + off, _MM_HINT_T0);
                _mm_prefetch(vbytes + ahead + off, _MM_HINT_T1);  /* read in step 3 */
            }
        __m512 acc[16];
        UNROLL for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
        for (int64_t d = 0; d < Hd; d += 16) {
            __mmask16 m = lanes(Hd - d);
            __m512 qv[G];
            UNROLL for (int g = 0; g < G; g++) qv[g] = _mm512_maskz_loadu_ps(m, q + g * Hd + d);
            UNROLL for (int e = 0; e < KB; e++) {
                int64_t j = std::min(j0 + e, hi - 1);  /* past hi: a repeat, masked below */
                __m512 kv = load16<BF16>(keys, j * Hd + d, m);
                UNROLL for (int g = 0; g < G; g++)
                    acc[g * KB + e] = _mm512_fmadd_ps(qv[g], kv, acc[g * KB + e]);
            }
        }
        __m512 sv = _mm512_mul_ps(sum16(acc), _mm512_set1_ps(sh.scale));
        if (sh.cap > 0) sv = soft_cap(sv, sh.cap);
        __mmask16 seen = 0, inside = 0;
        UNROLL for (int e = 0; e < KB; e++) {
            __mmask16 column = 0;
            UNROLL for (int g = 0; g < G; g++) column |= (__mmask16)(1u << (g * KB + e));
            if (j0 + e < hi) inside |= column;
            if (j0 + e < hi && j0 + e >= lo && vis[j0 + e]) seen |= column;
        }
        sv = _mm512_mask_mov_ps(_mm512_set1_ps(MASKED), seen, sv);
        sv = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), inside, sv);
        _mm512_storeu_ps(s + blk * 16, sv);
        vmax = _mm512_max_ps(vmax, sv);
    }

    /* 2. softmax per query: lane-wise over blocks, then over each query's KB lanes */
    alignas(64) float lane[16], gmax[16], gsum[16];
    _mm512_store_ps(lane, vmax);
    for (int g = 0; g < G; g++) {
        float m = lane[g * KB];
        for (int e = 1; e < KB; e++) m = std::max(m, lane[g * KB + e]);
        for (int e = 0; e < KB; e++) gmax[g * KB + e] = m;
    }
    const __m512 mv = _mm512_load_ps(gmax);
    __m512 vsum = _mm512_setzero_ps();
    for (int64_t blk = 0; blk < nblocks; blk++) {
        __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s + blk * 16), mv));
        _mm512_storeu_ps(s + blk * 16, e);
        vsum = _mm512_add_ps(vsum, e);
    }
    _mm512_store_ps(lane, vsum);
    for (int g = 0; g < G; g++) {
        float t = 0;
        for (int e = 0; e < KB; e++) t += lane[g * KB + e];
        for (int e = 0; e < KB; e++) gsum[g * KB + e] = t;
    }
    const __m512 sumv = _mm512_load_ps(gsum);
    for (int64_t blk = 0; blk < nblocks; blk++) {
        __m512 p = _mm512_div_ps(_mm512_loadu_ps(s + blk * 16), sumv);
        _mm512_storeu_ps(s + blk * 16, BF16 ? round_bf16(p) : p);
    }

    /* 3. out[g] = sum_j p[g, j] * v[j]: up to 4 queries by 64 lanes of Hd in registers */
    constexpr int GQ = G < 4 ? G : 4;
    for (int g0 = 0; g0 < G; g0 += GQ) {
        for (int64_t d0 = 0; d0 < Hd; d0 += 64) {
            __mmask16 m[4];
            UNROLL for (int c = 0; c < 4; c++) m[c] = lanes(Hd - d0 - 16 * c);
            __m512 acc[GQ][4];
            UNROLL for (int g = 0; g < GQ; g++) UNROLL for (int c = 0; c < 4; c++)
                acc[g][c] = _mm512_setzero_ps();
            for (int64_t j = j_begin; j < hi; j++) {
                const float *pj = s + (j - j_begin) / KB * 16 + (j - j_begin) % KB;
                __m512 v[4];
                UNROLL for (int c = 0; c < 4; c++) v[c] = load16<BF16>(values, j * Hd + d0 + 16 * c, m[c]);
                UNROLL for (int g = 0; g < GQ; g++) {
                    __m512 p = _mm512_set1_ps(pj[(g0 + g) * KB]);
                    UNROLL for (int c = 0; c < 4; c++) acc[g][c] = _mm512_fmadd_ps(p, v[c], acc[g][c]);
                }
            }
            UNROLL for (int g = 0; g < GQ; g++) UNROLL for (int c = 0; c < 4; c++)
                _mm512_mask_storeu_ps(out + (g0 + g) * Hd + d0 + 16 * c, m[c], acc[g][c]);
        }
    }
}

typedef void (*attend_fn)(const Shape &, const float *, const void *, const void *, const uint8_t *,
                          int64_t, int64_t, float *, std::vector<float> &);

template <bool BF16>
attend_fn pick(int64_t G) {
    switch (G) {
        case 1: return attend_one<1, BF16>;
        case 2: return attend_one<2, BF16>;
        case 4: return attend_one<4, BF16>;
        case 8: return attend_one<8, BF16>;
        case 16: return attend_one<16, BF16>;
        default: return nullptr;
    }
}

ffi::Error decode_attention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::AnyBuffer keys,
                            ffi::AnyBuffer values, ffi::Buffer<ffi::S32> positions,
                            ffi::ResultBuffer<ffi::F32> out, int64_t length, float scale,
                            float softcap, int64_t window) {
    auto qd = q.dimensions(), kd = keys.dimensions(), vd = values.dimensions();
    if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4 || positions.dimensions().size() != 1)
        return ffi::Error::InvalidArgument("q, keys, values must be rank 4, positions rank 1");
    Shape sh{qd[0], qd[1], qd[2], qd[3], kd[2], length, scale, softcap, window};
    for (int i = 0; i < 4; i++)
        if (kd[i] != vd[i]) return ffi::Error::InvalidArgument("keys and values differ in shape");
    if (kd[0] < sh.B || kd[1] != sh.K || kd[3] != sh.Hd || positions.dimensions()[0] != sh.B)
        return ffi::Error::InvalidArgument("q, cache and positions disagree");
    if (sh.n < 1 || sh.n > sh.S) return ffi::Error::InvalidArgument("length out of range");
    if (keys.element_type() != values.element_type())
        return ffi::Error::InvalidArgument("keys and values differ in dtype");
    bool bf16 = keys.element_type() == ffi::DataType::U16;
    if (!bf16 && keys.element_type() != ffi::DataType::F32)
        return ffi::Error::InvalidArgument("the cache must be float32 or uint16 (bfloat16 bits)");
    attend_fn fn = bf16 ? pick<true>(sh.G) : pick<false>(sh.G);
    if (fn == nullptr) return ffi::Error::InvalidArgument("queries per kv head must divide 16");

    std::vector<uint8_t> vis((size_t)(sh.B * sh.n));
    std::vector<int64_t> lo((size_t)sh.B), hi((size_t)sh.B);
    const int32_t *pos = positions.typed_data();
    for (int64_t b = 0; b < sh.B; b++) visibility(sh, pos[b], &vis[b * sh.n], &lo[b], &hi[b]);

    const size_t elem = bf16 ? 2 : 4;
    const char *kb = static_cast<const char *>(keys.untyped_data());
    const char *vb = static_cast<const char *>(values.untyped_data());
    const float *qb = q.typed_data();
    float *ob = out->typed_data();
    gs::parallel_for(pool, sh.B * sh.K, [&](int64_t unit) {
        thread_local std::vector<float> blocks;
        int64_t b = unit / sh.K;
        size_t entries = (size_t)(unit * sh.S * sh.Hd) * elem;  /* row b, head k of the cache */
        fn(sh, qb + unit * sh.G * sh.Hd, kb + entries, vb + entries, &vis[b * sh.n], lo[b], hi[b],
           ob + unit * sh.G * sh.Hd, blocks);
    });
    return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(gs_decode_attention, decode_attention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("length")
                                  .Attr<float>("scale")
                                  .Attr<float>("softcap")
                                  .Attr<int64_t>("window"));
