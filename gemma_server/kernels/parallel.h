/*
 * Work sharing for the CPU kernels: a kernel's work is cut into `units` (row blocks of a
 * weight matrix, (sequence, kv head) pairs of an attention) that the calling thread and XLA's
 * own intra-op threads claim one at a time through an atomic counter. No second thread pool
 * competes with XLA's for the cores (OpenMP's spinning threads did, measured: 57 vs 82 tok/s);
 * a pool thread that wakes up late still takes its share; the caller never waits for a unit
 * nobody has started (XLA may run several custom calls at once on its small pool).
 */
#pragma once

#include <immintrin.h>
#include <stdint.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>

#include "xla/ffi/api/ffi.h"

namespace gs {

/* The claim counter, shared with the pool's tasks, which may outlive the call: they then find
 * nothing left to claim and never touch `body` (whose captures live on the caller's stack). */
struct Claims {
    std::function<void(int64_t)> body;
    int64_t units = 0;
    std::atomic<int64_t> next{0}, done{0};

    void work() {
        for (int64_t u; (u = next.fetch_add(1, std::memory_order_relaxed)) < units;) {
            body(u);
            done.fetch_add(1, std::memory_order_acq_rel);
        }
    }
};

/* body(u) for u in [0, units), on the caller and up to units - 1 pool threads; returns when
 * every unit is done. No two units may write the same memory. */
inline void parallel_for(xla::ffi::ThreadPool &pool, int64_t units,
                         std::function<void(int64_t)> body) {
    if (units <= 0) return;
    auto claims = std::make_shared<Claims>();
    claims->body = std::move(body);
    claims->units = units;
    int64_t helpers = std::min<int64_t>(std::max<int64_t>(1, pool.num_threads()), units) - 1;
    for (int64_t t = 0; t < helpers; t++) pool.Schedule([claims] { claims->work(); });
    claims->work();
    while (claims->done.load(std::memory_order_acquire) < units) _mm_pause();
}

}  // namespace gs
