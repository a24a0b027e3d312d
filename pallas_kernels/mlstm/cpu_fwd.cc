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
// Heads are spread over XLA's intra-op thread pool. Shared helpers: cpu_common.h.

#include "cpu_common.h"

namespace ffi = xla::ffi;

namespace {

using namespace xlstm_cpu;

struct Dims : Sizes {
  bool keep_states;
  float eps;
};

struct Operands {
  const float *q, *k, *v, *tok, *decay, *c0, *n0;
  float *h, *d, *c_before, *n_before, *c_final, *n_final;
};

// Floats of scratch one head needs.
int64_t scratch_floats(const Dims& D) { return D.len * D.len + 3 * D.len * D.dk + D.dk * D.dv + D.dk + D.len; }

// The whole forward of one head (index ``head``).
void run_head(const Dims& D, const Operands& o, int64_t head, float* scratch) {
  const int64_t S = D.s, DK = D.dk, DV = D.dv, L = D.len;
  const int iL = static_cast<int>(L), iDK = static_cast<int>(DK), iDV = static_cast<int>(DV);
  const float* q = o.q + head * S * DK;
  const float* k = o.k + head * S * DK;
  const float* v = o.v + head * S * DV;
  const float* tok = o.tok + head * kTokRows * S;
  float* h = o.h + head * S * DV;
  float* d = o.d + head * S;

  float* p = scratch;          // (L, L) scores, then P
  float* qs = p + L * L;       // (L, DK) q / sqrt(DK)
  float* qin = qs + L * DK;    // (L, DK) qs * alpha
  float* kt = qin + L * DK;    // (DK, L) k^T, then (k * w)^T
  float* mem = kt + L * DK;    // (DK, DV) the memory C
  float* nrm = mem + DK * DV;  // (DK) the normalizer state n
  float* rowsum = nrm + DK;    // (L)

  std::memcpy(mem, o.c0 + head * DK * DV, sizeof(float) * DK * DV);
  std::memcpy(nrm, o.n0 + head * DK, sizeof(float) * DK);
  const float scale = 1.0f / std::sqrt(static_cast<float>(DK));

  for (int64_t c = 0; c < D.nc; ++c) {
    const int64_t off = c * L;
    const ChunkGates g(tok, S, off);
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
        qin[t * DK + j] = qs[t * DK + j] * g.alpha[t];
        kt[j * L + t] = kc[t * DK + j];
      }

    // P = (qs k^T) * exp(logD - m) on the causal part (row t: the columns up to causal_cols(t)).
    auto cols_to = [&](int r) { return causal_cols(r, iL); };
    gemm<false>(iL, qs, DK, 1, kt, L, p, L, zero, Upto{iDK}, cols_to);
    for (int t = 0; t < iL; ++t) rowsum[t] = weight_row(g, t, cols_to(t), p + t * L);

    // num = qin C + P v, written into h.
    gemm<false>(iL, qin, DK, 1, mem, DV, hc, DV, zero, Upto{iDK}, Upto{iDV});
    gemm<true>(iL, p, L, 1, vc, DV, hc, DV, zero, [](int r) { return r + 1; }, Upto{iDV});

    for (int64_t t = 0; t < L; ++t) {
      float dt = 0.0f;
      for (int64_t j = 0; j < DK; ++j) dt += qin[t * DK + j] * nrm[j];
      dt += rowsum[t];
      const float den = std::max(std::fabs(dt), std::exp(-g.m[t])) + D.eps;
      for (int64_t j = 0; j < DV; ++j) hc[t * DV + j] = hc[t * DV + j] / den;
      d[off + t] = dt;
    }

    // The memory after the chunk: decay * C + (k * w)^T v, decay * n + k^T w.
    const float dec = o.decay[head * D.nc + c];
    for (int64_t j = 0; j < DK * DV; ++j) mem[j] *= dec;
    for (int64_t j = 0; j < DK; ++j) {
      float acc = 0.0f;
      for (int64_t t = 0; t < L; ++t) {
        kt[j * L + t] *= g.w[t];
        acc += kt[j * L + t];
      }
      nrm[j] = dec * nrm[j] + acc;
    }
    gemm<true>(iDK, kt, L, 1, vc, DV, mem, DV, zero, Upto{iL}, Upto{iDV});
  }
  std::memcpy(o.c_final + head * DK * DV, mem, sizeof(float) * DK * DV);
  std::memcpy(o.n_final + head * DK, nrm, sizeof(float) * DK);
}

ffi::Error ChunkwiseFwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                            ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> tok, ffi::Buffer<ffi::F32> decay,
                            ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> n0, ffi::ResultBuffer<ffi::F32> h,
                            ffi::ResultBuffer<ffi::F32> d, ffi::ResultBuffer<ffi::F32> c_before,
                            ffi::ResultBuffer<ffi::F32> n_before, ffi::ResultBuffer<ffi::F32> c_final,
                            ffi::ResultBuffer<ffi::F32> n_final, int64_t chunk_size, float eps) {
  Dims D;
  if (auto err = sizes_of(q.dimensions(), v.dimensions(), chunk_size, &D); err.failure()) return err;
  D.eps = eps;
  auto cbd = c_before->dimensions();
  D.keep_states = cbd.size() == 4 && cbd[1] == D.nc;
  if (!D.keep_states && !(cbd.size() == 4 && cbd[1] == 0))
    return ffi::Error::InvalidArgument("c_before must be (BH, NC, DHQK, DHV) or (BH, 0, DHQK, DHV)");
  const Operands o{q.typed_data(),      k.typed_data(),         v.typed_data(),         tok.typed_data(),
                   decay.typed_data(),  c0.typed_data(),        n0.typed_data(),        h->typed_data(),
                   d->typed_data(),     c_before->typed_data(), n_before->typed_data(), c_final->typed_data(),
                   n_final->typed_data()};
  parallel_for(pool, D.bh, scratch_floats(D), [D, o](int64_t head, float* scratch) { run_head(D, o, head, scratch); });
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
