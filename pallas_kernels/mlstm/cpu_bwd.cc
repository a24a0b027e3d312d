// Backward pass of the chunkwise mLSTM on the CPU, stabilizers held fixed, as one XLA FFI custom
// call (float32): the heavy part of ``ops._chunkwise_bwd.backward`` (the same math, term by term).
// The O(S) parts stay in plain JAX (cpu.py): the normalizer's cotangents (``tokb``: 1/den and dd),
// the gate gradients from the per-token sums written here, and the stabilizers' own terms.
//
// For every head a walk over its chunks in reverse, with the memory's cotangent G = dL/dC_k (and
// gn = dL/dn_k) in scratch, starting from the final state's cotangent. Per chunk, with qs = q / sqrt(DHQK),
// q_in = qs * alpha, P = (qs k^T) * Dw the forward's decay-weighted scores (Dw = exp(logD - m), masked):
//
//   dnum   = dh / den                        dp  = dnum v^T + dd          ds = dp * Dw
//   dv     = P^T dnum + (k * w) G            dk  = ds^T qs + dk_w,        dk_w = w * (v G^T + gn)
//   dq_in  = dnum C_{k-1}^T + dd n_{k-1}     dq  = (dq_in * alpha + ds k) / sqrt(DHQK)
//   gates: row_sum_t = sum_s dp P, col_sum_s = sum_t dp P, dlog_alpha_t = dq_in . q_in, da_s = dk_w . k,
//          dlog_decay_k = decay_k (<G, C_{k-1}> + <gn, n_{k-1}>)
//   then G <- decay_k G + q_in^T dnum, gn <- decay_k gn + q_in^T dd (the cotangent of C_{k-1}).
//
// Shapes (BH = batch * heads, S = NC * L): q, k (BH, S, DHQK); v, dh (BH, S, DHV); tok (BH, 7, S);
// tokb (BH, 2, S); decay (BH, NC); c_before (BH, NC, DHQK, DHV); n_before (BH, NC, DHQK); dc_final
// (BH, DHQK, DHV); dn_final (BH, DHQK). Results: dq, dk (BH, S, DHQK); dv (BH, S, DHV); gates
// (BH, 4, S) rows row_sum, dlog_alpha, col_sum, da; dlog_decay (BH, NC); dc0 (BH, DHQK, DHV); dn0
// (BH, DHQK). Heads are spread over XLA's intra-op thread pool. Shared helpers: cpu_common.h.

#include "cpu_common.h"

namespace ffi = xla::ffi;

namespace {

using namespace xlstm_cpu;

enum TokbRow { kRden = 0, kDd = 1 };
enum GateRow { kRowSum = 0, kDlogAlpha = 1, kColSum = 2, kDa = 3, kGateRows = 4 };

using Dims = Sizes;

struct Operands {
  const float *q, *k, *v, *dh, *tok, *tokb, *decay, *c_before, *n_before, *dc_final, *dn_final;
  float *dq, *dk, *dv, *gates, *dlog_decay, *dc0, *dn0;
};

// Floats of scratch one head needs.
int64_t scratch_floats(const Dims& D) {
  const int64_t L = D.len, DK = D.dk, DV = D.dv;
  return 3 * L * L + 5 * L * DK + 3 * L * DV + 4 * DK * DV + 2 * DK;
}

// Zeroes row t of an (L, L) matrix from column n on.
inline void zero_tail(float* row, int n, int L) { std::fill(row + n, row + L, 0.0f); }

void run_head(const Dims& D, const Operands& o, int64_t head, float* scratch) {
  const int64_t S = D.s, DK = D.dk, DV = D.dv, L = D.len;
  const int iL = static_cast<int>(L), iDK = static_cast<int>(DK), iDV = static_cast<int>(DV);
  const float* q = o.q + head * S * DK;
  const float* k = o.k + head * S * DK;
  const float* v = o.v + head * S * DV;
  const float* dh = o.dh + head * S * DV;
  const float* tok = o.tok + head * kTokRows * S;
  const float* rden = o.tokb + (head * 2 + kRden) * S;
  const float* dd = o.tokb + (head * 2 + kDd) * S;
  float* gates = o.gates + head * kGateRows * S;

  float* p = scratch;           // (L, L) scores, then P
  float* dw = p + L * L;        // (L, L) the decay weights exp(logD - m), masked
  float* ds = dw + L * L;       // (L, L) dp, then ds = dp * dw
  float* qs = ds + L * L;       // (L, DK)
  float* qin = qs + L * DK;     // (L, DK)
  float* kt = qin + L * DK;     // (DK, L) k^T
  float* kw = kt + L * DK;      // (L, DK) k * w
  float* dkw = kw + L * DK;     // (L, DK) dk_w
  float* vt = dkw + L * DK;     // (DV, L) v^T
  float* vw = vt + L * DV;      // (L, DV) v * w
  float* dnum = vw + L * DV;    // (L, DV)
  float* cbt = dnum + L * DV;   // (DV, DK) C_{k-1}^T
  float* gm = cbt + DK * DV;    // (DK, DV) G
  float* gt = gm + DK * DV;     // (DV, DK) G^T
  float* dcb = gt + DK * DV;    // (DK, DV) q_in^T dnum
  float* gn = dcb + DK * DV;    // (DK)
  float* dnb = gn + DK;         // (DK)

  std::memcpy(gm, o.dc_final + head * DK * DV, sizeof(float) * DK * DV);
  std::memcpy(gn, o.dn_final + head * DK, sizeof(float) * DK);
  const float scale = 1.0f / std::sqrt(static_cast<float>(DK));
  auto cols_to = [&](int r) { return causal_cols(r, iL); };
  auto from_row = [](int r) { return r; };       // transposed causal products: t >= s
  auto to_diag = [](int r) { return r + 1; };    // causal products: s <= t

  for (int64_t c = D.nc - 1; c >= 0; --c) {
    const int64_t off = c * L;
    const ChunkGates g(tok, S, off);
    const float* qc = q + off * DK;
    const float* kc = k + off * DK;
    const float* vc = v + off * DV;
    const float* dhc = dh + off * DV;
    const float* cb = o.c_before + (head * D.nc + c) * DK * DV;
    const float* nb = o.n_before + (head * D.nc + c) * DK;
    float* dqc = o.dq + (head * S + off) * DK;
    float* dkc = o.dk + (head * S + off) * DK;
    float* dvc = o.dv + (head * S + off) * DV;

    for (int64_t t = 0; t < L; ++t) {
      for (int64_t j = 0; j < DK; ++j) {
        qs[t * DK + j] = qc[t * DK + j] * scale;
        qin[t * DK + j] = qs[t * DK + j] * g.alpha[t];
        kt[j * L + t] = kc[t * DK + j];
        kw[t * DK + j] = kc[t * DK + j] * g.w[t];
      }
      for (int64_t j = 0; j < DV; ++j) {
        vt[j * L + t] = vc[t * DV + j];
        vw[t * DV + j] = vc[t * DV + j] * g.w[t];
        dnum[t * DV + j] = dhc[t * DV + j] * rden[off + t];
      }
    }
    for (int64_t a = 0; a < DK; ++a)
      for (int64_t e = 0; e < DV; ++e) {
        cbt[e * DK + a] = cb[a * DV + e];
        gt[e * DK + a] = gm[a * DV + e];
      }

    // P and the decay weights, zero above the diagonal and across segments.
    gemm<false>(iL, qs, DK, 1, kt, L, p, L, zero, Upto{iDK}, cols_to);
    for (int t = 0; t < iL; ++t) {
      weight_row(g, t, cols_to(t), p + t * L, dw + t * L);
      zero_tail(p + t * L, cols_to(t), iL);
      zero_tail(dw + t * L, cols_to(t), iL);
    }

    // dp = dnum v^T + dd; the gate sums of dp * P; ds = dp * dw.
    gemm<false>(iL, dnum, DV, 1, vt, L, ds, L, zero, Upto{iDV}, cols_to);
    float* row_sum = gates + kRowSum * S + off;
    float* col_sum = gates + kColSum * S + off;
    std::fill(col_sum, col_sum + L, 0.0f);
    for (int t = 0; t < iL; ++t) {
      const int n = cols_to(t);
      float* dr = ds + t * L;
      const float* pr = p + t * L;
      const float* wr = dw + t * L;
      const float ddt = dd[off + t];
      float sum = 0.0f;
      for (int s = 0; s < n; ++s) {
        const float dps = dr[s] + ddt;
        const float dlog_d = dps * pr[s];
        sum += dlog_d;
        col_sum[s] += dlog_d;
        dr[s] = dps * wr[s];
      }
      zero_tail(dr, n, iL);
      row_sum[t] = sum;
    }

    // dv = P^T dnum + (k * w) G.
    gemm<false>(iL, p, 1, L, dnum, DV, dvc, DV, from_row, Upto{iL}, Upto{iDV});
    gemm<true>(iL, kw, DK, 1, gm, DV, dvc, DV, zero, Upto{iDK}, Upto{iDV});

    // dq_in = dnum C^T + dd n; dq = (dq_in * alpha + ds k) / sqrt(DK).
    float* dlog_alpha = gates + kDlogAlpha * S + off;
    gemm<false>(iL, dnum, DV, 1, cbt, DK, dqc, DK, zero, Upto{iDV}, Upto{iDK});
    for (int64_t t = 0; t < L; ++t) {
      float acc = 0.0f;
      for (int64_t j = 0; j < DK; ++j) {
        const float dqin = dqc[t * DK + j] + dd[off + t] * nb[j];
        acc += dqin * qin[t * DK + j];
        dqc[t * DK + j] = dqin * g.alpha[t];
      }
      dlog_alpha[t] = acc;
    }
    gemm<true>(iL, ds, L, 1, kc, DK, dqc, DK, zero, to_diag, Upto{iDK});
    for (int64_t j = 0; j < L * DK; ++j) dqc[j] *= scale;

    // dk = ds^T qs + dk_w, dk_w = w * (v G^T + gn); da = dk_w . k.
    float* da = gates + kDa * S + off;
    gemm<false>(iL, vw, DV, 1, gt, DK, dkw, DK, zero, Upto{iDV}, Upto{iDK});
    gemm<false>(iL, ds, 1, L, qs, DK, dkc, DK, from_row, Upto{iL}, Upto{iDK});
    for (int64_t t = 0; t < L; ++t) {
      float acc = 0.0f;
      for (int64_t j = 0; j < DK; ++j) {
        const float x = dkw[t * DK + j] + g.w[t] * gn[j];
        acc += x * kc[t * DK + j];
        dkc[t * DK + j] += x;
      }
      da[t] = acc;
    }

    // The decay's gradient, then the cotangent of the memory entering the chunk.
    const float dec = o.decay[head * D.nc + c];
    float inner = 0.0f;
    for (int64_t j = 0; j < DK * DV; ++j) inner += gm[j] * cb[j];
    for (int64_t j = 0; j < DK; ++j) inner += gn[j] * nb[j];
    o.dlog_decay[head * D.nc + c] = dec * inner;
    gemm<false>(iDK, qin, 1, DK, dnum, DV, dcb, DV, zero, Upto{iL}, Upto{iDV});
    for (int64_t j = 0; j < DK; ++j) {
      float acc = 0.0f;
      for (int64_t t = 0; t < L; ++t) acc += qin[t * DK + j] * dd[off + t];
      dnb[j] = acc;
    }
    for (int64_t j = 0; j < DK * DV; ++j) gm[j] = dec * gm[j] + dcb[j];
    for (int64_t j = 0; j < DK; ++j) gn[j] = dec * gn[j] + dnb[j];
  }
  std::memcpy(o.dc0 + head * DK * DV, gm, sizeof(float) * DK * DV);
  std::memcpy(o.dn0 + head * DK, gn, sizeof(float) * DK);
}

ffi::Error ChunkwiseBwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                            ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> dh, ffi::Buffer<ffi::F32> tok,
                            ffi::Buffer<ffi::F32> tokb, ffi::Buffer<ffi::F32> decay, ffi::Buffer<ffi::F32> c_before,
                            ffi::Buffer<ffi::F32> n_before, ffi::Buffer<ffi::F32> dc_final,
                            ffi::Buffer<ffi::F32> dn_final, ffi::ResultBuffer<ffi::F32> dq,
                            ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv,
                            ffi::ResultBuffer<ffi::F32> gates, ffi::ResultBuffer<ffi::F32> dlog_decay,
                            ffi::ResultBuffer<ffi::F32> dc0, ffi::ResultBuffer<ffi::F32> dn0, int64_t chunk_size) {
  Dims D;
  if (auto err = sizes_of(q.dimensions(), v.dimensions(), chunk_size, &D); err.failure()) return err;
  auto cbd = c_before.dimensions();
  if (cbd.size() != 4 || cbd[1] != D.nc) return ffi::Error::InvalidArgument("c_before must be (BH, NC, DHQK, DHV)");
  const Operands o{q.typed_data(),        k.typed_data(),        v.typed_data(),         dh.typed_data(),
                   tok.typed_data(),      tokb.typed_data(),     decay.typed_data(),     c_before.typed_data(),
                   n_before.typed_data(), dc_final.typed_data(), dn_final.typed_data(),  dq->typed_data(),
                   dk->typed_data(),      dv->typed_data(),      gates->typed_data(),    dlog_decay->typed_data(),
                   dc0->typed_data(),     dn0->typed_data()};
  parallel_for(pool, D.bh, scratch_floats(D), [D, o](int64_t head, float* scratch) { run_head(D, o, head, scratch); });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(XlstmMlstmChunkwiseBwd, ChunkwiseBwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // q
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k
                                  .Arg<ffi::Buffer<ffi::F32>>()  // v
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dh
                                  .Arg<ffi::Buffer<ffi::F32>>()  // tok
                                  .Arg<ffi::Buffer<ffi::F32>>()  // tokb
                                  .Arg<ffi::Buffer<ffi::F32>>()  // decay
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c_before
                                  .Arg<ffi::Buffer<ffi::F32>>()  // n_before
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dc_final
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dn_final
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dq
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dk
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dv
                                  .Ret<ffi::Buffer<ffi::F32>>()  // gates
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dlog_decay
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dc0
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dn0
                                  .Attr<int64_t>("chunk_size"));
