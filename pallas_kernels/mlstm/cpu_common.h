// Shared by the C++ CPU kernels of the chunkwise mLSTM (cpu_fwd.cc, cpu_bwd.cc): the per-token
// table's rows, a vectorised exp, a register-blocked matrix product and a parallel loop over heads
// on XLA's intra-op thread pool. GCC/Clang vector extensions; float32.

#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace xlstm_cpu {

// Rows of ``tok`` (token_table.py).
enum TokRow { kHi = 0, kLo = 1, kIgate = 2, kSeg = 3, kM = 4, kAlpha = 5, kW = 6, kTokRows = 7 };

constexpr int kV = 16;  // floats per vector
typedef float v16 __attribute__((vector_size(64), aligned(4)));  // unaligned loads and stores
typedef int32_t i16v __attribute__((vector_size(64), aligned(4)));

inline v16 splat(float x) { return v16{} + x; }

// exp(x) for float32 vectors: 2^n * p(r), r = x - n ln 2 in [-ln2/2, ln2/2], a degree-6 polynomial
// (relative error about 2 ulp). exp(x) = 0 below -87.3 (no subnormals), +inf above 88.7, NaN stays NaN.
inline v16 vexp(v16 x) {
  const v16 hi = splat(88.7f), lo = splat(-87.3f);
  v16 xc = x;
  xc = xc > hi ? hi : xc;
  xc = xc < lo ? lo : xc;
  const v16 magic = splat(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  v16 n = (xc * 1.44269504088896341f + magic) - magic;
  v16 r = xc - n * 0.693359375f;  // ln 2 in two parts (Cody-Waite)
  r = r - n * -2.12194440e-4f;
  v16 p = splat(1.0f / 720);
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  i16v e = (__builtin_convertvector(n, i16v) + 127) << 23;
  v16 scale;
  std::memcpy(&scale, &e, sizeof(scale));
  v16 y = p * scale;
  y = x < lo ? splat(0.0f) : y;
  y = x > hi ? splat(INFINITY) : y;
  return y;
}

// C[r, n] (+)= sum_kk A[r, kk] B[kk, n] for R rows and NV * 16 columns; A is read through strides
// (A[r, kk] = A[r * ars + kk * acs]), B and C are row-major.
template <int R, int NV, bool ACC>
inline void micro(const float* A, long ars, long acs, const float* B, long ldb, float* C, long ldc, int K) {
  v16 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) acc[r][j] = ACC ? *(const v16*)(C + r * ldc + j * kV) : splat(0.0f);
  for (int kk = 0; kk < K; ++kk) {
    v16 b[NV];
    for (int j = 0; j < NV; ++j) b[j] = *(const v16*)(B + kk * ldb + j * kV);
    for (int r = 0; r < R; ++r) {
      v16 a = splat(A[r * ars + kk * acs]);
      for (int j = 0; j < NV; ++j) acc[r][j] += a * b[j];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) *(v16*)(C + r * ldc + j * kV) = acc[r][j];
}

template <int R, bool ACC>
inline void scalar_cols(const float* A, long ars, long acs, const float* B, long ldb, float* C, long ldc, int K,
                        int n0, int n1) {
  for (int r = 0; r < R; ++r)
    for (int n = n0; n < n1; ++n) {
      float s = ACC ? C[r * ldc + n] : 0.0f;
      for (int kk = 0; kk < K; ++kk) s += A[r * ars + kk * acs] * B[kk * ldb + n];
      C[r * ldc + n] = s;
    }
}

// R rows of C = (or +=) A B over the columns [0, N).
template <int R, bool ACC>
inline void rows(const float* A, long ars, long acs, const float* B, long ldb, float* C, long ldc, int K, int N) {
  int n = 0;
  for (; n + 4 * kV <= N; n += 4 * kV) micro<R, 4, ACC>(A, ars, acs, B + n, ldb, C + n, ldc, K);
  for (; n + kV <= N; n += kV) micro<R, 1, ACC>(A, ars, acs, B + n, ldb, C + n, ldc, K);
  if (n < N) scalar_cols<R, ACC>(A, ars, acs, B, ldb, C, ldc, K, n, N);
}

constexpr int kRows = 4;

// C = (or +=) A B for M rows; the row block starting at r0 contracts over [k_lo(r0), k_hi(r0 + 3))
// and writes the columns [0, n_of(r0 + 3)) (the causal products skip what the mask zeroes).
template <bool ACC, class KLo, class KHi, class NOf>
void gemm(int M, const float* A, long ars, long acs, const float* B, long ldb, float* C, long ldc, KLo k_lo, KHi k_hi,
          NOf n_of) {
  auto block = [&](auto rows_const, int r) {
    constexpr int R = decltype(rows_const)::value;
    const int lo = k_lo(r), hi = k_hi(r + R - 1);
    rows<R, ACC>(A + r * ars + lo * acs, ars, acs, B + lo * ldb, ldb, C + r * ldc, ldc, std::max(hi - lo, 0),
                 n_of(r + R - 1));
  };
  int r = 0;
  for (; r + kRows <= M; r += kRows) block(std::integral_constant<int, kRows>{}, r);
  for (; r < M; ++r) block(std::integral_constant<int, 1>{}, r);
}

// The whole range [0, n) for gemm's bounds.
struct Upto {
  int n;
  int operator()(int) const { return n; }
};
constexpr int zero(int) { return 0; }

// Runs body(index, scratch) for every index in [0, n) on the caller and on helpers from XLA's
// intra-op pool, handing indices out one at a time. The caller never waits for an index nobody has
// started (a helper queued behind other work finds none left), so a busy pool cannot deadlock it;
// once none are left it sleeps until the last one is done (no spinning: with several CPU devices in
// one process, the callers and the helpers share the same cores). The shared state outlives the
// call for helpers that start late.
template <class Body>
void parallel_for(xla::ffi::ThreadPool& pool, int64_t n, int64_t scratch_floats, Body body) {
  struct State {
    Body body;
    int64_t n, scratch_floats;
    std::atomic<int64_t> next{0};
    int64_t done = 0;  // guarded by mu
    std::mutex mu;
    std::condition_variable all_done;
    State(Body b, int64_t n, int64_t s) : body(std::move(b)), n(n), scratch_floats(s) {}
    void drain() {
      std::vector<float> scratch;
      for (int64_t j; (j = next.fetch_add(1)) < n;) {
        if (scratch.empty()) scratch.resize(scratch_floats);
        body(j, scratch.data());
        std::lock_guard<std::mutex> lock(mu);
        if (++done == n) all_done.notify_all();
      }
    }
  };
  auto state = std::make_shared<State>(std::move(body), n, scratch_floats);
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int64_t j = 0; j < helpers; ++j) pool.Schedule([state] { state->drain(); });
  state->drain();
  std::unique_lock<std::mutex> lock(state->mu);
  state->all_done.wait(lock, [&] { return state->done == n; });
}

// The per-token rows of one chunk (``tok`` at the chunk's first token; S the sequence length).
struct ChunkGates {
  const float *hi, *lo, *ig, *seg, *m, *alpha, *w;
  ChunkGates(const float* tok, int64_t S, int64_t off)
      : hi(tok + kHi * S + off), lo(tok + kLo * S + off), ig(tok + kIgate * S + off), seg(tok + kSeg * S + off),
        m(tok + kM * S + off), alpha(tok + kAlpha * S + off), w(tok + kW * S + off) {}
};

// The first n columns of row t of the decay-weighted scores: pr[s] *= exp(logD[t, s] - m_t) for s <= t
// in t's segment, 0 elsewhere, with logD[t, s] = (hi_t - hi_s) + (lo_t - lo_s) + i_s. If ``weight`` is
// given, weight[s] = that factor (0 where masked). Returns the sum of the weighted row.
inline float weight_row(const ChunkGates& g, int t, int n, float* pr, float* weight = nullptr) {
  const v16 hi_t = splat(g.hi[t]), lo_t = splat(g.lo[t]), m_t = splat(g.m[t]), seg_t = splat(g.seg[t]);
  v16 acc = splat(0.0f);
  int s = 0;
  for (; s + kV <= n; s += kV) {
    v16 log_d = ((hi_t - *(const v16*)(g.hi + s)) + (lo_t - *(const v16*)(g.lo + s))) + *(const v16*)(g.ig + s);
    i16v pos = i16v{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15} + s;
    auto valid = (pos <= t) & (*(const v16*)(g.seg + s) == seg_t);
    v16 e = valid ? vexp(log_d - m_t) : splat(0.0f);
    v16 pv = valid ? *(v16*)(pr + s) * e : splat(0.0f);
    *(v16*)(pr + s) = pv;
    if (weight) *(v16*)(weight + s) = e;
    acc += pv;
  }
  float sum = 0.0f;
  for (int j = 0; j < kV; ++j) sum += acc[j];
  for (; s < n; ++s) {
    const bool valid = s <= t && g.seg[s] == g.seg[t];
    const float e = valid ? std::exp(((g.hi[t] - g.hi[s]) + (g.lo[t] - g.lo[s])) + g.ig[s] - g.m[t]) : 0.0f;
    const float pv = valid ? pr[s] * e : 0.0f;
    pr[s] = pv;
    if (weight) weight[s] = e;
    sum += pv;
  }
  return sum;
}

// Columns up to the causal diagonal of row t, rounded up to whole vectors (at most L).
inline int causal_cols(int t, int L) { return std::min(L, (t + kV) / kV * kV); }

// The sizes of a call (BH = batch * heads, S = NC * L): q (BH, S, DHQK), v (BH, S, DHV), chunk L.
struct Sizes {
  int64_t bh, s, dk, dv, len, nc;
};

// Sizes from q's and v's dimensions and the chunk length; an error unless they are (BH, S, D) and L divides S.
template <class Dimensions>
xla::ffi::Error sizes_of(Dimensions qd, Dimensions vd, int64_t chunk_size, Sizes* out) {
  if (qd.size() != 3 || vd.size() != 3) return xla::ffi::Error::InvalidArgument("q and v must be (BH, S, D)");
  if (chunk_size <= 0 || qd[1] % chunk_size != 0)
    return xla::ffi::Error::InvalidArgument("chunk_size must be positive and divide S");
  *out = Sizes{qd[0], qd[1], qd[2], vd[2], chunk_size, qd[1] / chunk_size};
  return xla::ffi::Error::Success();
}

}  // namespace xlstm_cpu
