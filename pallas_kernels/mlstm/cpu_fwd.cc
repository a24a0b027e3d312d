// Forward pass of the chunkwise mLSTM on the CPU, as one XLA FFI custom call (float32).
//
// The contract is that of the Pallas-Triton forward (gpu_fwd.py): the O(S) gate algebra (the
// stabilizers and the per-token table ``tok``) is plain JAX; this kernel does the heavy part, for
// every head walking its chunks in order with the memory in a scratch buffer:
//
//   P      = (q_s k^T) * exp(logD - m)         q_s = q / sqrt(DHQK), causal, within one segment
//   num    = (q_s * alpha) C_{k-1} + P v
//   d      = (q_s * alpha) . n_{k-1} + rowsum(P)
//   h      = num / (max(|d|, exp(-m)) + eps)
//   C_k    = decay_k C_{k-1} + (k * w)^T v,    n_k = decay_k n_{k-1} + k^T w
//
// with logD[t, s] = (hi_t - hi_s) + (lo_t - lo_s) + i_s for s <= t. Why a kernel: XLA:CPU runs
// this form as many separate 64x64 batched dots and elementwise loops (benchmarks/RESULTS.md,
// session 31); here the chunk's matrices stay in the L1/L2 cache between the steps, and the
// masked upper triangle of the (L, L) products is skipped.
//
// Shapes (BH = batch * heads, S = NC * L): q, k (BH, S, DHQK); v (BH, S, DHV); tok (BH, 7, S);
// decay (BH, NC); c0 (BH, DHQK, DHV); n0 (BH, DHQK). Results: h (BH, S, DHV); d (BH, S);
// c_before (BH, NC', DHQK, DHV) and n_before (BH, NC', DHQK), the memory entering every chunk,
// with NC' = NC, or NC' = 0 to skip them (a call without gradient); c_final, n_final.
// Heads are spread over XLA's intra-op thread pool.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

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

// C = (or +=) A B for M rows; ``k_of(r0)`` and ``n_of(r0)`` bound the contraction and the columns of
// the row block starting at r0 (the causal products skip what the mask zeroes).
template <bool ACC, class KOf, class NOf>
void gemm(int M, const float* A, long ars, long acs, const float* B, long ldb, float* C, long ldc, KOf k_of, NOf n_of) {
  int r = 0;
  for (; r + kRows <= M; r += kRows)
    rows<kRows, ACC>(A + r * ars, ars, acs, B, ldb, C + r * ldc, ldc, k_of(r + kRows - 1), n_of(r + kRows - 1));
  for (; r < M; ++r) rows<1, ACC>(A + r * ars, ars, acs, B, ldb, C + r * ldc, ldc, k_of(r), n_of(r));
}

struct Dims {
  int64_t bh, s, dk, dv, len, nc;
  bool keep_states;
  float eps;
};

struct Operands {
  const float *q, *k, *v, *tok, *decay, *c0, *n0;
  float *h, *d, *c_before, *n_before, *c_final, *n_final;
};

// The whole forward of one head (index ``head``); ``scratch`` holds at least scratch_floats(dims).
int64_t scratch_floats(const Dims& D) { return D.len * D.len + 3 * D.len * D.dk + D.dk * D.dv + D.dk + D.len; }

void run_head(const Dims& D, const Operands& o, int64_t head, float* scratch) {
  const int64_t S = D.s, DK = D.dk, DV = D.dv, L = D.len;
  const float* q = o.q + head * S * DK;
  const float* k = o.k + head * S * DK;
  const float* v = o.v + head * S * DV;
  const float* tok = o.tok + head * kTokRows * S;
  float* h = o.h + head * S * DV;
  float* d = o.d + head * S;

  float* p = scratch;           // (L, L) scores, then P
  float* qs = p + L * L;        // (L, DK) q / sqrt(DK)
  float* qin = qs + L * DK;     // (L, DK) qs * alpha
  float* kt = qin + L * DK;     // (DK, L) k^T, then (k * w)
  float* mem = kt + L * DK;     // (DK, DV) the memory C
  float* nrm = mem + DK * DV;   // (DK) the normalizer state n
  float* rowsum = nrm + DK;     // (L)

  std::memcpy(mem, o.c0 + head * DK * DV, sizeof(float) * DK * DV);
  std::memcpy(nrm, o.n0 + head * DK, sizeof(float) * DK);
  const float scale = 1.0f / std::sqrt(static_cast<float>(DK));

  for (int64_t c = 0; c < D.nc; ++c) {
    const int64_t off = c * L;
    const float* hi = tok + kHi * S + off;
    const float* lo = tok + kLo * S + off;
    const float* ig = tok + kIgate * S + off;
    const float* seg = tok + kSeg * S + off;
    const float* m = tok + kM * S + off;
    const float* alpha = tok + kAlpha * S + off;
    const float* w = tok + kW * S + off;
    const float* qc = q + off * DK;
    const float* kc = k + off * DK;
    const float* vc = v + off * DV;
    float* hc = h + off * DV;

    if (D.keep_states) {
      std::memcpy(o.c_before + (head * D.nc + c) * DK * DV, mem, sizeof(float) * DK * DV);
      std::memcpy(o.n_before + (head * D.nc + c) * DK, nrm, sizeof(float) * DK);
    }
    for (int64_t t = 0; t < L; ++t)
      for (int64_t j = 0; j < DK; ++j) {
        qs[t * DK + j] = qc[t * DK + j] * scale;
        qin[t * DK + j] = qs[t * DK + j] * alpha[t];
        kt[j * L + t] = kc[t * DK + j];
      }

    // Scores of the causal part, rounded up to whole vectors: row block ending at t needs s <= t.
    auto cols_to = [&](int r) { return static_cast<int>(std::min<int64_t>(L, (r + kV) / kV * kV)); };
    gemm<false>(L, qs, DK, 1, kt, L, p, L, [&](int) { return static_cast<int>(DK); }, cols_to);

    // P = scores * exp(logD - m), zero where s > t or another segment; its row sums.
    for (int64_t t = 0; t < L; ++t) {
      float* pr = p + t * L;
      const int n = cols_to(static_cast<int>(t));
      const v16 hi_t = splat(hi[t]), lo_t = splat(lo[t]), m_t = splat(m[t]), seg_t = splat(seg[t]);
      v16 acc = splat(0.0f);
      int s = 0;
      for (; s + kV <= n; s += kV) {
        v16 log_d = ((hi_t - *(const v16*)(hi + s)) + (lo_t - *(const v16*)(lo + s))) + *(const v16*)(ig + s);
        v16 e = vexp(log_d - m_t);
        i16v pos = i16v{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15} + s;
        auto valid = (pos <= static_cast<int32_t>(t)) & (*(const v16*)(seg + s) == seg_t);
        v16 pv = valid ? *(v16*)(pr + s) * e : splat(0.0f);
        *(v16*)(pr + s) = pv;
        acc += pv;
      }
      float sum = 0.0f;
      for (int j = 0; j < kV; ++j) sum += acc[j];
      for (; s < n; ++s) {
        float pv = 0.0f;
        if (s <= t && seg[s] == seg[t]) pv = pr[s] * std::exp(((hi[t] - hi[s]) + (lo[t] - lo[s])) + ig[s] - m[t]);
        pr[s] = pv;
        sum += pv;
      }
      rowsum[t] = sum;
    }

    // num = qin C + P v, written into h.
    gemm<false>(L, qin, DK, 1, mem, DV, hc, DV, [&](int) { return static_cast<int>(DK); },
                [&](int) { return static_cast<int>(DV); });
    gemm<true>(L, p, L, 1, vc, DV, hc, DV, [&](int r) { return r + 1; }, [&](int) { return static_cast<int>(DV); });

    for (int64_t t = 0; t < L; ++t) {
      float dt = 0.0f;
      for (int64_t j = 0; j < DK; ++j) dt += qin[t * DK + j] * nrm[j];
      dt += rowsum[t];
      const float den = std::max(std::fabs(dt), std::exp(-m[t])) + D.eps;
      for (int64_t j = 0; j < DV; ++j) hc[t * DV + j] = hc[t * DV + j] / den;
      d[off + t] = dt;
    }

    // The memory after the chunk: decay * C + (k * w)^T v, decay * n + k^T w.
    const float dec = o.decay[head * D.nc + c];
    for (int64_t j = 0; j < DK * DV; ++j) mem[j] *= dec;
    for (int64_t j = 0; j < DK; ++j) {
      float acc = 0.0f;
      for (int64_t t = 0; t < L; ++t) {
        kt[j * L + t] *= w[t];
        acc += kt[j * L + t];
      }
      nrm[j] = dec * nrm[j] + acc;
    }
    gemm<true>(DK, kt, L, 1, vc, DV, mem, DV, [&](int) { return static_cast<int>(L); },
               [&](int) { return static_cast<int>(DV); });
  }
  std::memcpy(o.c_final + head * DK * DV, mem, sizeof(float) * DK * DV);
  std::memcpy(o.n_final + head * DK, nrm, sizeof(float) * DK);
}

// Heads handed out one at a time to the caller and to helpers on XLA's thread pool. The caller
// never waits for a head nobody has started (a helper queued behind other work finds none left),
// so the call cannot deadlock on a busy pool.
struct Work {
  Dims dims;
  Operands ops;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void drain() {
    std::vector<float> scratch(scratch_floats(dims));
    for (int64_t head; (head = next.fetch_add(1)) < dims.bh;) {
      run_head(dims, ops, head, scratch.data());
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error ChunkwiseFwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                            ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> tok, ffi::Buffer<ffi::F32> decay,
                            ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> n0, ffi::ResultBuffer<ffi::F32> h,
                            ffi::ResultBuffer<ffi::F32> d, ffi::ResultBuffer<ffi::F32> c_before,
                            ffi::ResultBuffer<ffi::F32> n_before, ffi::ResultBuffer<ffi::F32> c_final,
                            ffi::ResultBuffer<ffi::F32> n_final, int64_t chunk_size, float eps) {
  auto qd = q.dimensions(), vd = v.dimensions();
  if (qd.size() != 3 || vd.size() != 3) return ffi::Error::InvalidArgument("q and v must be (BH, S, D)");
  auto dims = std::make_shared<Work>();
  Dims& D = dims->dims;
  D.bh = qd[0];
  D.s = qd[1];
  D.dk = qd[2];
  D.dv = vd[2];
  D.len = chunk_size;
  if (chunk_size <= 0 || D.s % chunk_size != 0)
    return ffi::Error::InvalidArgument("chunk_size must be positive and divide S");
  D.nc = D.s / chunk_size;
  D.eps = eps;
  auto cbd = c_before->dimensions();
  D.keep_states = cbd.size() == 4 && cbd[1] == D.nc;
  if (!D.keep_states && !(cbd.size() == 4 && cbd[1] == 0))
    return ffi::Error::InvalidArgument("c_before must be (BH, NC, DHQK, DHV) or (BH, 0, DHQK, DHV)");
  dims->ops = Operands{q.typed_data(),         k.typed_data(),        v.typed_data(),         tok.typed_data(),
                       decay.typed_data(),     c0.typed_data(),       n0.typed_data(),        h->typed_data(),
                       d->typed_data(),        c_before->typed_data(), n_before->typed_data(), c_final->typed_data(),
                       n_final->typed_data()};
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), D.bh) - 1;
  for (int64_t j = 0; j < helpers; ++j) pool.Schedule([work = dims] { work->drain(); });
  dims->drain();
  while (dims->done.load(std::memory_order_acquire) < D.bh) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(XlstmMlstmChunkwiseFwd, ChunkwiseFwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // q
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k
                                  .Arg<ffi::Buffer<ffi::F32>>()  // v
                                  .Arg<ffi::Buffer<ffi::F32>>()  // tok
                                  .Arg<ffi::Buffer<ffi::F32>>()  // decay
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // n0
                                  .Ret<ffi::Buffer<ffi::F32>>()  // h
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d
                                  .Ret<ffi::Buffer<ffi::F32>>()  // c_before
                                  .Ret<ffi::Buffer<ffi::F32>>()  // n_before
                                  .Ret<ffi::Buffer<ffi::F32>>()  // c_final
                                  .Ret<ffi::Buffer<ffi::F32>>()  // n_final
                                  .Attr<int64_t>("chunk_size")
                                  .Attr<float>("eps"));
