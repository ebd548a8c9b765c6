/*
 * Sampling work over the vocabulary on x86-64 CPUs with AVX-512: the greedy token choice, and
 * the top-p threshold further below. XLA FFI custom calls (gemma_server/kernels/library.py
 * registers them, cpu_sampling.py calls them, engine/sampling.py decides when).
 *
 * Why this exists: when every row of a step is greedy, with no penalty, logit bias or top
 * logprobs, sampling is the argmax of each row and the log-probability of that token. XLA:CPU
 * runs it as several unfused passes over the vocabulary (mask, max, index of the max, exp,
 * sum) at about a gigabyte of logits a second: 0.7-1.0 ms a step for 16 rows of a
 * 32000-token vocabulary, ~10 ms for 16 rows of Gemma's 256000. This kernel reads each row
 * twice: once for the masked maximum and its first index, once for the sum of exponentials.
 *
 * Same results as sampling.py's path for such rows: logits that are not finite, or whose id is
 * at or past `vocab_limit`, count as MASKED (-1e30), as does anything below it; the token is
 * the first index of the maximum; its log-probability is -log(sum_j e^(x_j - max)) (its own
 * shifted logit is 0), in float32. The sum's order differs from XLA's, so the log-probability
 * may differ in the last bits.
 *
 * Handlers: gs_greedy_pick(logits f32[R, V]) -> (tokens s32[R], logprob f32[R]), attribute
 * vocab_limit; gs_top_p_threshold(logits f32[R, V], top_p f32[R]) -> f32[R] (below). Rows
 * are shared with XLA's pool threads (parallel.h).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "parallel.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr float MASKED = -1e30f; /* as sampling.py's MASKED */

/* NaN (quiet or signalling) and +-inf, for _mm512_fpclass_ps_mask */
constexpr int NOT_FINITE = 0x01 | 0x08 | 0x10 | 0x80;

/* Lanes [j, j + 16) of a row, masked as sampling.py's process_logits does for neutral rows. */
TARGET INLINE __m512 masked_logits(const float *row, int64_t j, int64_t V, int64_t limit) {
    __mmask16 in_row = lanes(V - j);
    __m512 v = _mm512_maskz_loadu_ps(in_row, row + j);
    __mmask16 usable = in_row & lanes(limit - j) & ~_mm512_fpclass_ps_mask(v, NOT_FINITE);
    return _mm512_max_ps(_mm512_mask_blend_ps(usable, _mm512_set1_ps(MASKED), v),
                         _mm512_set1_ps(MASKED));
}

TARGET static void pick_row(const float *row, int64_t V, int64_t limit, int32_t *token,
                            float *logprob) {
    /* 1. each lane's maximum and the first index where it has it; then the smallest index
     * among the lanes that hold the row's maximum is the row's first argmax */
    __m512 best = _mm512_set1_ps(-INFINITY);
    __m512i where = _mm512_setzero_si512();
    __m512i index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i step = _mm512_set1_epi32(16);
    for (int64_t j = 0; j < V; j += 16) {
        __m512 v = masked_logits(row, j, V, limit);
        __mmask16 higher = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) & lanes(V - j);
        best = _mm512_mask_mov_ps(best, higher, v);
        where = _mm512_mask_mov_epi32(where, higher, index);
        index = _mm512_add_epi32(index, step);
    }
    const float top = _mm512_reduce_max_ps(best);
    __mmask16 at_top = _mm512_cmp_ps_mask(best, _mm512_set1_ps(top), _CMP_EQ_OQ);
    *token = _mm512_mask_reduce_min_epi32(at_top, where);

    /* 2. sum of e^(x - top) over the row (x - top <= 0; masked lanes of the last vector: 0) */
    __m512 sums[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                      _mm512_setzero_ps()};
    const __m512 shift = _mm512_set1_ps(top);
    int64_t j = 0;
    for (; j + 64 <= V; j += 64)
        UNROLL for (int u = 0; u < 4; u++)
            sums[u] = _mm512_add_ps(sums[u], exp_nonpositive(_mm512_sub_ps(
                masked_logits(row, j + 16 * u, V, limit), shift)));
    for (; j < V; j += 16)
        sums[0] = _mm512_add_ps(sums[0], _mm512_maskz_mov_ps(lanes(V - j), exp_nonpositive(
            _mm512_sub_ps(masked_logits(row, j, V, limit), shift))));
    const float total = _mm512_reduce_add_ps(
        _mm512_add_ps(_mm512_add_ps(sums[0], sums[1]), _mm512_add_ps(sums[2], sums[3])));
    *logprob = -logf(total);
}

/* ---- top-p: the nucleus threshold without sorting the row ----------------------------------
 * sampling.py keeps the smallest set of most likely tokens whose probability reaches top_p:
 * sorted descending, token i is kept while the mass before it is < top_p (the first always),
 * and then every logit >= the smallest kept one. That smallest kept value is the smallest
 * logit v whose "mass strictly above v" S(v) is < top_p (or the maximum). XLA:CPU sorts the
 * whole row for it (~1 s a step at 16 rows of 256000 logits); a quickselect on mass finds v in
 * a few passes: partition around a pivot, and keep looking below it (S(pivot) < top_p: v is
 * the pivot or smaller) or above it. Logits with no mass at all (e^(x - max) = 0 in float32)
 * are never the threshold and are left out from the start. Masses are taken unnormalised
 * (e^(x - max), against top_p times their sum) and summed in another order than XLA's cumsum,
 * so a row whose S(v) lies within float rounding of top_p may keep one token more or less. */

struct Entry {
    float logit, mass;
};

TARGET static float nucleus_threshold(const float *x, int64_t V, float top_p,
                                      std::vector<Entry> &entries) {
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < V; j += 16)
        vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), lanes(V - j), x + j));
    const float top = _mm512_reduce_max_ps(vmax);
    entries.resize((size_t)V);
    int64_t n = 0;
    double total = 0.0;
    alignas(64) float mass[16];
    for (int64_t j = 0; j < V; j += 16) {
        __mmask16 m = lanes(V - j);
        __m512 v = _mm512_maskz_loadu_ps(m, x + j);
        _mm512_store_ps(mass, _mm512_maskz_mov_ps(m, exp_nonpositive(_mm512_sub_ps(v, _mm512_set1_ps(top)))));
        for (int u = 0; u < 16 && j + u < V; u++)
            if (mass[u] > 0.0f) {
                entries[(size_t)n++] = {x[j + u], mass[u]};
                total += mass[u];
            }
    }
    const double target = (double)top_p * total;
    float best = top;      /* the smallest logit found so far with S < top_p (the max has S = 0) */
    double above = 0.0;    /* mass of the entries known to lie above [b, e) */
    int64_t b = 0, e = n;  /* candidates; none below best is known to qualify yet */
    Entry *s = entries.data();
    while (b < e) {
        const float p0 = s[b].logit, p1 = s[b + (e - b) / 2].logit, p2 = s[e - 1].logit;
        const float pivot = std::max(std::min(p0, p1), std::min(std::max(p0, p1), p2));
        /* three-way partition: [b, g) above the pivot, [g, l) equal, [l, e) below */
        int64_t g = b, j = b, l = e;
        double mass_above_pivot = 0.0, mass_at_pivot = 0.0;
        while (j < l) {
            if (s[j].logit > pivot) {
                mass_above_pivot += s[j].mass;
                std::swap(s[g++], s[j++]);
            } else if (s[j].logit < pivot) {
                std::swap(s[j], s[--l]);
            } else {  /* equal, or NaN: either way taken out of the candidates */
                mass_at_pivot += s[j++].mass;
            }
        }
        if (above + mass_above_pivot < target) {  /* the pivot qualifies: look below it */
            best = std::min(best, pivot);
            above += mass_above_pivot + mass_at_pivot;
            b = l;
        } else {  /* it does not: the threshold lies above it */
            e = g;
        }
    }
    return best;
}

ffi::Error top_p_threshold(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> logits,
                           ffi::Buffer<ffi::F32> top_p, ffi::ResultBuffer<ffi::F32> threshold) {
    auto dims = logits.dimensions();
    if (dims.size() != 2) return ffi::Error::InvalidArgument("logits must be [rows, vocab]");
    const int64_t R = dims[0], V = dims[1];
    if (top_p.element_count() != R) return ffi::Error::InvalidArgument("one top_p per row");
    const float *l = logits.typed_data(), *tp = top_p.typed_data();
    float *out = threshold->typed_data();
    gs::parallel_for(pool, R, [&](int64_t r) {
        thread_local std::vector<Entry> entries;
        out[r] = tp[r] >= 1.0f || V < 1 ? -INFINITY : nucleus_threshold(l + r * V, V, tp[r], entries);
    });
    return ffi::Error::Success();
}

ffi::Error greedy_pick(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> logits,
                       ffi::ResultBuffer<ffi::S32> tokens, ffi::ResultBuffer<ffi::F32> logprobs,
                       int64_t vocab_limit) {
    auto dims = logits.dimensions();
    if (dims.size() != 2) return ffi::Error::InvalidArgument("logits must be [rows, vocab]");
    const int64_t R = dims[0], V = dims[1];
    if (V < 1) return ffi::Error::InvalidArgument("the vocabulary is empty");
    const float *l = logits.typed_data();
    int32_t *t = tokens->typed_data();
    float *p = logprobs->typed_data();
    gs::parallel_for(pool, R, [&](int64_t r) { pick_row(l + r * V, V, vocab_limit, t + r, p + r); });
    return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(gs_greedy_pick, greedy_pick,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("vocab_limit"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(gs_top_p_threshold, top_p_threshold,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
