// The per-element and per-row math of every fused op, written once as host+device functions and
// functors. The CPU loops (csrc/cpu) and the CUDA kernels (csrc/cuda) both instantiate these, so the
// two backends cannot drift apart. No torch header here: this compiles with g++ alone or nvcc alone.
//
// Tensor layout seen by a functor: B rows ("samples") of D contiguous elements; element i of row b
// is at b*D + i. Values are loaded as T (float, double, half, bfloat16) and computed in A, the
// accumulation type (double for double, float otherwise).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "diffalign/dtypes.h"

namespace diffalign {

constexpr double kLogSqrt2Pi = 0.91893853320467274178;  // log(sqrt(2*pi))

// ---- scalar helpers (float/double overloads, usable on host and device) ----
DA_HD float dlog(float v) { return logf(v); }
DA_HD double dlog(double v) { return log(v); }
DA_HD float dexp(float v) { return expf(v); }
DA_HD double dexp(double v) { return exp(v); }
DA_HD float dsqrt(float v) { return sqrtf(v > 0.f ? v : 0.f); }
DA_HD double dsqrt(double v) { return sqrt(v > 0.0 ? v : 0.0); }
DA_HD float dlog1p(float v) { return log1pf(v); }
DA_HD double dlog1p(double v) { return log1p(v); }

template <class A> DA_HD A sigmoid(A x) {
  if (x >= A(0)) { A e = dexp(-x); return A(1) / (A(1) + e); }
  A e = dexp(x);
  return e / (A(1) + e);
}
// -log(sigmoid(x)) = softplus(-x), stable for large |x|
template <class A> DA_HD A neg_log_sigmoid(A x) {
  return dlog1p(dexp(-(x >= A(0) ? x : -x))) + (x < A(0) ? -x : A(0));
}

// ---- enums shared with the torch binding and Python (diffalign/ops/__init__.py) ----
enum Reduction : int { kMean = 0, kSum = 1 };
enum PairReduction : int { kPairMean = 0, kPairNone = 1 };
enum DpoLoss : int { kSigmoid = 0, kHinge = 1, kIpo = 2 };
// Step rules: DDIM with the three prediction types, then the flow-matching SDE step.
enum StepMode : int { kDdimEpsilon = 0, kDdimV = 1, kDdimSample = 2, kFlowSde = 3 };

// A std (or any per-element scale) given as one value, one per row, or one per element.
enum StdLayout : int { kScalar = 0, kPerRow = 1, kFull = 2 };
template <class A> struct StdArg {
  const A* p = nullptr;
  int layout = kScalar;
  DA_HD A at(int64_t b, int64_t idx) const { return layout == kScalar ? p[0] : (layout == kPerRow ? p[b] : p[idx]); }
};

// A masked element's contribution m * v, exactly 0 where m = 0 (a padded element may hold anything,
// inf or NaN included: 0 * NaN would poison the row). On the CPU the zeroing is a bit-and, not a select:
// GCC (trapping math) kept `m != 0 ? m * v : 0` as a branch, and the loops went scalar and mispredicted
// (25x slower on a random mask); the GPU predicates the select.
template <class A> DA_HD A masked(A m, A v) {
  A p = m * v;
#if defined(__CUDA_ARCH__)
  return m != A(0) ? p : A(0);
#else
  using U = typename std::conditional<sizeof(A) == 8, uint64_t, uint32_t>::type;
  U bits;
  std::memcpy(&bits, &p, sizeof(A));
  bits &= U(0) - U(m != A(0));
  std::memcpy(&p, &bits, sizeof(A));
  return p;
#endif
}
// Masked "mean" over a row: sum m*l / sum m, 0 for a row whose mask sums to 0 (never NaN).
template <class A> DA_HD A masked_mean(A sum, A msum) { return msum > A(0) ? sum / msum : A(0); }
template <class A> DA_HD A inv_or_zero(A msum) { return msum > A(0) ? A(1) / msum : A(0); }

// ---- per-element formulas ----
// log N(x; m, s^2)
template <class A> DA_HD A gaussian_logprob_elem(A x, A m, A s) {
  A d = x - m;
  return -d * d / (A(2) * s * s) - dlog(s) - A(kLogSqrt2Pi);
}
// KL(N(m1, s1^2) || N(m2, s2^2))
template <class A> DA_HD A gaussian_kl_elem(A m1, A m2, A s1, A s2) {
  A d = m1 - m2;
  return dlog(s2 / s1) + (s1 * s1 + d * d) / (A(2) * s2 * s2) - A(0.5);
}

// ---- per-row coefficients of the linear-Gaussian step rules ----
// mean = cx * x_t + cm * model_output, std: see docs/design.md, "Formulas" (DDIM with eta as in DDPO; Flow-GRPO SDE).
template <class A> struct StepCoef { A cx, cm, std; };

template <class A> DA_HD StepCoef<A> step_coefficients(int mode, A p0, A p1, A param) {
  StepCoef<A> c;
  if (mode == kFlowSde) {
    // p0 = sigma, p1 = sigma_next, param = noise level a. sigma_t = a sqrt(s/(1-s)); at s = 1 the
    // 1/(1-s) factor uses sigma_next (the reference trainer substitutes the schedule's 2nd sigma).
    A s = p0, dt = p1 - p0;
    A ds = s >= A(1) ? p1 : s;
    A inv = A(1) / (A(1) - ds);
    A a2 = param * param;
    c.cx = A(1) + A(0.5) * a2 * inv * dt;                  // 1 + sigma_t^2 dt / (2 s)
    c.cm = (A(1) + A(0.5) * a2 * (A(1) - s) * inv) * dt;   // (1 + sigma_t^2 (1-s) / (2 s)) dt
    c.std = param * dsqrt(s * inv) * dsqrt(-dt);
    return c;
  }
  // DDIM: p0 = alpha_prod_t, p1 = alpha_prod_prev, param = eta
  A at = p0, ap = p1;
  A var = (A(1) - ap) / (A(1) - at) * (A(1) - at / ap);
  A sigma = param * dsqrt(var);
  A k = dsqrt(A(1) - ap - sigma * sigma);  // coefficient of the "direction pointing to x_t"
  A sa = dsqrt(at), s1a = dsqrt(A(1) - at), sap = dsqrt(ap);
  if (mode == kDdimEpsilon) {        // x0 = (x - s1a eps) / sa
    c.cx = sap / sa;
    c.cm = k - sap * s1a / sa;
  } else if (mode == kDdimV) {       // x0 = sa x - s1a v, eps = sa v + s1a x
    c.cx = sap * sa + k * s1a;
    c.cm = k * sa - sap * s1a;
  } else {                           // sample: eps = (x - sa x0) / s1a
    c.cx = k / s1a;
    c.cm = sap - k * sa / s1a;
  }
  c.std = sigma;
  return c;
}

// ---- per-pair DPO losses on the scaled margin u = beta * h ----
template <class A> DA_HD A dpo_pair_loss(A u, A beta, int loss_type) {
  if (loss_type == kSigmoid) return neg_log_sigmoid(u);
  if (loss_type == kHinge) return u < A(1) ? A(1) - u : A(0);
  A d = u / beta - A(1) / (A(2) * beta);  // IPO: (h - 1/(2 beta))^2
  return d * d;
}
// d loss / d h (not d u)
template <class A> DA_HD A dpo_pair_dloss_dh(A u, A beta, int loss_type) {
  if (loss_type == kSigmoid) return -beta * sigmoid(-u);
  if (loss_type == kHinge) return u < A(1) ? -beta : A(0);
  return A(2) * (u / beta - A(1) / (A(2) * beta));
}

// ---- per-pair / per-sample epilogues of the loss ops ----
// Diffusion-DPO on per-row mean squared errors; returns the pair's loss and writes beta*h.
template <class A> DA_HD A dpo_pair(A em_w, A em_l, A er_w, A er_l, A beta, int loss_type, A* margin) {
  A u = -A(0.5) * beta * ((em_w - em_l) - (er_w - er_l));
  *margin = u;
  return dpo_pair_loss<A>(u, beta, loss_type);
}
// Diffusion-KTO per-sample loss lambda_y (1 - sigmoid(s_y beta (g - z))).
template <class A> DA_HD A kto_sample_loss(A g, A z, bool desirable, A beta, A ld, A lu) {
  A sgn = desirable ? A(1) : A(-1);
  return (desirable ? ld : lu) * (A(1) - sigmoid(sgn * beta * (g - z)));
}

// ====================================================================================
// Functors. Each one describes an element-wise pass over B rows of D elements:
//   row(b)          per-row context, computed once per row chunk;
//   in(i), out(i)   its NI element-data inputs and NO outputs (dtype T; nullptr: absent, read as 0 /
//                   not written), so a backend may load and store them one element or one 16-byte
//                   vector at a time (csrc/cuda vectorises 16-bit and 32-bit data this way);
//   compute(r, b, idx, v, o, acc)
//                   the math of one element from its loaded inputs v[NI] into o[NO]; NOUT values are
//                   summed per row into acc, and reduces() says whether those sums are wanted.
// elem() (below) is the scalar load -> compute -> store that the CPU loops and the CUDA tails use.
//
// Masks: M (a template parameter, so the unmasked instantiations hold no mask code and stay bit-identical)
// adds one element input, the per-element weight m in the element dtype T, last among the inputs. A
// masked forward sums m * l and, as its last accumulator, m itself (the row's weight, for "mean" =
// sum m*l / sum m); a masked backward multiplies each element's gradient by m and takes its per-row
// scale (1 / sum m, or 0 for an all-zero row) from row_scale instead of 1/D.
// kMaskedForward (a masked forward says so; absent: false): its element outputs do not depend on the
// mask, its accumulators but the last sum masked(m, v), and the last sums m. A CPU loop may then run a
// 0/1 run of weights as the unmasked element work and keep or zero its sums by a bit-and (run_segments
// in csrc/cpu/kernels.cpp); a functor that does not say so is still run right, by its weights.
// ====================================================================================

template <class T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

// Which optional inputs / outputs a functor type is known, at compile time, to have (bit i: in(i) or
// out(i) is not null). A backend that has looked at the pointers may wrap the functor in KnownPresence,
// so that its element loop holds no null test (the CPU loops vectorise only without them).
template <class F> struct PresenceKnown {
  static constexpr bool value = false;
  static constexpr unsigned in = 0u, out = 0u;
};
template <class F, unsigned In, unsigned Out> struct KnownPresence : F {
  DA_HD explicit KnownPresence(const F& f) : F(f) {}
};
template <class F, unsigned In, unsigned Out> struct PresenceKnown<KnownPresence<F, In, Out>> {
  static constexpr bool value = true;
  static constexpr unsigned in = In, out = Out;
};

// One element, scalar loads and stores. Only the inputs / outputs a functor marks optional (bits of
// kOptIn / kOptOut) are tested for nullptr, at compile time per index (unless their presence is known):
// a test of a required pointer inside the element loop kept the CPU loops from vectorising.
template <int I, class F, class A> DA_HD A load_in(const F& f, int64_t idx) {
  const typename F::Elem* p = f.in(I);
  if constexpr (!((F::kOptIn >> I) & 1u)) return to_acc<A>(p[idx]);
  else if constexpr (!PresenceKnown<F>::value) return p ? to_acc<A>(p[idx]) : A(0);
  else if constexpr ((PresenceKnown<F>::in >> I) & 1u) return to_acc<A>(p[idx]);
  else return A(0);
}
template <int I, class F, class A> DA_HD void store_out(const F& f, int64_t idx, A v) {
  typename F::Elem* p = f.out(I);
  if constexpr (!((F::kOptOut >> I) & 1u)) p[idx] = from_acc<typename F::Elem>(v);
  else if constexpr (!PresenceKnown<F>::value) { if (p) p[idx] = from_acc<typename F::Elem>(v); }
  else if constexpr ((PresenceKnown<F>::out >> I) & 1u) p[idx] = from_acc<typename F::Elem>(v);
}
template <class F, class A, int... I> DA_HD void load_all(const F& f, int64_t idx, A* v, std::integer_sequence<int, I...>) {
  ((v[I] = load_in<I, F, A>(f, idx)), ...);
}
template <class F, class A, int... I> DA_HD void store_all(const F& f, [[maybe_unused]] int64_t idx,
                                                           [[maybe_unused]] const A* o, std::integer_sequence<int, I...>) {
  (store_out<I, F, A>(f, idx, o[I]), ...);
}
template <class F, class A>
DA_HD void elem(const F& f, const typename F::Row& r, int64_t b, int64_t idx, A* acc) {
  A v[F::NI > 0 ? F::NI : 1];
  A o[F::NO > 0 ? F::NO : 1];
  load_all(f, idx, v, std::make_integer_sequence<int, F::NI>{});
  f.compute(r, b, idx, v, o, acc);
  store_all(f, idx, o, std::make_integer_sequence<int, F::NO>{});
}

// G: the std has the full layout (read per element); otherwise the per-element work is a multiply-add
// with row constants. G is a template parameter (as in KlFwd / KlBwd) so that the common instantiation
// holds no per-element std code: with both paths in one loop the CPU compiler vectorised neither.
template <class T, class A, bool G, bool M = false> struct LogprobFwd {
  using Elem = T;
  static constexpr unsigned kOptIn = 0u, kOptOut = 0u;  // optional (nullable) in / out
  static constexpr int NOUT = M ? 2 : 1, NI = M ? 3 : 2, NO = 0;
  static constexpr bool kMaskedForward = M;  // see "Masks" above
  DA_HD bool reduces() const { return true; }
  const T* x; const T* mean; StdArg<A> std; const T* mask;
  DA_HD const T* in(int i) const { return i == 0 ? x : (i == 1 ? mean : mask); }
  DA_HD T* out(int) const { return nullptr; }
  // with a scalar or per-row std: no division and no log per element
  struct Row { A half_inv_var, log_norm; };  // log_norm = log(s) + log(sqrt(2 pi))
  DA_HD Row row(int64_t b) const {
    Row r{A(0), A(0)};
    if constexpr (!G) {
      const A s = std.at(b, 0);
      r.half_inv_var = A(0.5) / (s * s);
      r.log_norm = dlog(s) + A(kLogSqrt2Pi);
    }
    return r;
  }
  DA_HD void compute(const Row& r, int64_t b, int64_t idx, const A* v, A*, A* acc) const {
    if constexpr (M) {
      A l;
      if constexpr (G) {
        l = gaussian_logprob_elem<A>(v[0], v[1], std.at(b, idx));
      } else {
        A d = v[0] - v[1];
        l = -d * d * r.half_inv_var - r.log_norm;
      }
      acc[0] += masked(v[2], l);
      acc[1] += v[2];
    } else if constexpr (G) {
      acc[0] += gaussian_logprob_elem<A>(v[0], v[1], std.at(b, idx));
    } else {
      A d = v[0] - v[1];
      acc[0] += -d * d * r.half_inv_var - r.log_norm;
    }
  }
};

// Gradients of the reduced log-prob; gx, gm may be null. G: full std layout, its gradient written per
// element to gstd_full; otherwise the std gradient is summed per row into acc[0] (affine in d^2 there:
// gs = k + q d^2, so the element loop only multiplies).
template <class T, class A, bool G, bool M = false> struct LogprobBwd {
  using Elem = T;
  static constexpr unsigned kOptIn = 0u, kOptOut = 3u;  // optional (nullable) in / out
  static constexpr int NOUT = 1, NI = M ? 3 : 2, NO = 2;
  const A* grad; int64_t grad_stride; A scale; const T* x; const T* mean; StdArg<A> std;
  T* gx; T* gm; A* gstd_full; bool want_std; const T* mask; const A* row_scale;  // row_scale: null = scale
  DA_HD const T* in(int i) const { return i == 0 ? x : (i == 1 ? mean : mask); }
  DA_HD T* out(int i) const { return i == 0 ? gx : gm; }
  struct Row { A g, inv_var, k, q; };
  DA_HD bool reduces() const { return want_std && !G; }
  DA_HD Row row(int64_t b) const {
    Row r{grad[b * grad_stride] * (M && row_scale ? row_scale[b] : scale), A(0), A(0), A(0)};
    if constexpr (!G) {
      const A s = std.at(b, 0);
      r.inv_var = A(1) / (s * s);
      r.k = want_std ? -r.g / s : A(0);               // d/ds of -log s
      r.q = want_std ? r.g * r.inv_var / s : A(0);     // d/ds of -d^2 / (2 s^2)
    }
    return r;
  }
  DA_HD void compute(const Row& r, int64_t b, int64_t idx, const A* v, A* o, A* acc) const {
    const A d = v[0] - v[1];
    if constexpr (M) {
      const A m = v[2];
      if constexpr (G) {
        const A s = std.at(b, idx), inv_s2 = A(1) / (s * s);
        const A gdx = masked(m, -d * inv_s2 * r.g);
        o[0] = gdx;
        o[1] = -gdx;
        if (gstd_full) gstd_full[idx] = masked(m, (d * d * inv_s2 - A(1)) / s * r.g);
      } else {
        const A gdx = masked(m, -d * r.inv_var * r.g);
        o[0] = gdx;
        o[1] = -gdx;
        acc[0] += masked(m, r.k + r.q * d * d);
      }
    } else if constexpr (G) {
      const A s = std.at(b, idx), inv_s2 = A(1) / (s * s);
      const A gdx = -d * inv_s2 * r.g;
      o[0] = gdx;
      o[1] = -gdx;
      if (gstd_full) gstd_full[idx] = (d * d * inv_s2 - A(1)) / s * r.g;
    } else {
      const A gdx = -d * r.inv_var * r.g;
      o[0] = gdx;
      o[1] = -gdx;
      acc[0] += r.k + r.q * d * d;
    }
  }
};

// G: some std has the full layout (read per element). Otherwise, with per-row stds,
// KL = c0 + d^2 / (2 s2^2), c0 = log(s2/s1) + s1^2/(2 s2^2) - 1/2, and the element loop is a multiply-add.
// G is a template parameter, as in KlBwd: with both paths in one loop the CPU compiler vectorised
// neither (this forward was 10% slower than the log-prob's on 2 CPU cores; now they match).
template <class T, class A, bool G, bool M = false> struct KlFwd {
  using Elem = T;
  static constexpr unsigned kOptIn = 0u, kOptOut = 0u;  // optional (nullable) in / out
  static constexpr int NOUT = M ? 2 : 1, NI = M ? 3 : 2, NO = 0;
  static constexpr bool kMaskedForward = M;  // see "Masks" above
  DA_HD bool reduces() const { return true; }
  const T* m1; const T* m2; StdArg<A> s1; StdArg<A> s2; bool same_std; const T* mask;
  DA_HD const T* in(int i) const { return i == 0 ? m1 : (i == 1 ? m2 : mask); }
  DA_HD T* out(int) const { return nullptr; }
  struct Row { A c0, half_inv_var2; };
  DA_HD Row row(int64_t b) const {
    Row r{A(0), A(0)};
    if constexpr (!G) {
      A a = s1.at(b, 0), c = same_std ? a : s2.at(b, 0);
      r.half_inv_var2 = A(0.5) / (c * c);
      r.c0 = same_std ? A(0) : dlog(c / a) + a * a * r.half_inv_var2 - A(0.5);
    }
    return r;
  }
  DA_HD void compute(const Row& r, int64_t b, int64_t idx, const A* v, A*, A* acc) const {
    A d = v[0] - v[1];
    if constexpr (M) {
      A kl;
      if constexpr (!G) {
        kl = r.c0 + d * d * r.half_inv_var2;
      } else {
        A a = s1.at(b, idx);
        kl = same_std ? d * d / (A(2) * a * a) : gaussian_kl_elem<A>(v[0], v[1], a, s2.at(b, idx));
      }
      acc[0] += masked(v[2], kl);
      acc[1] += v[2];
    } else if constexpr (!G) {
      acc[0] += r.c0 + d * d * r.half_inv_var2;
    } else {
      A a = s1.at(b, idx);
      if (same_std) acc[0] += d * d / (A(2) * a * a);
      else acc[0] += gaussian_kl_elem<A>(v[0], v[1], a, s2.at(b, idx));
    }
  }
};

// acc[0] sums the s1 gradient, acc[1] the s2 gradient (scalar / per-row layouts). G: some std has
// the full layout (read per element); otherwise everything but d is per-row and the std gradients are
// affine in d^2 (g1 = k1 + q1 d^2, g2 = k2 + q2 d^2), so the element loop only multiplies. G is a
// template parameter so that the common per-row instantiation holds no per-element std code at all
// (with both paths in one loop the CPU compiler vectorised neither).
template <class T, class A, bool G, bool M = false> struct KlBwd {
  using Elem = T;
  static constexpr unsigned kOptIn = 0u, kOptOut = 3u;  // optional (nullable) in / out
  static constexpr int NOUT = 2, NI = M ? 3 : 2, NO = 2;
  const A* grad; int64_t grad_stride; A scale; const T* m1; const T* m2; StdArg<A> s1; StdArg<A> s2;
  bool same_std; T* gm1; T* gm2; A* gs1_full; A* gs2_full; bool want_s1, want_s2;
  const T* mask; const A* row_scale;  // row_scale: null = scale
  DA_HD const T* in(int i) const { return i == 0 ? m1 : (i == 1 ? m2 : mask); }
  DA_HD T* out(int i) const { return i == 0 ? gm1 : gm2; }
  struct Row { A g, inv_c2, k1, q1, k2, q2; };
  DA_HD bool reduces() const { return (want_s1 && !gs1_full) || (want_s2 && !gs2_full); }
  DA_HD Row row(int64_t b) const {
    Row r{grad[b * grad_stride] * (M && row_scale ? row_scale[b] : scale), A(0), A(0), A(0), A(0), A(0)};
    if constexpr (!G) {
      const A a = s1.at(b, 0), c = same_std ? a : s2.at(b, 0);
      r.inv_c2 = A(1) / (c * c);
      if (same_std) { r.k1 = A(0); r.q1 = -r.inv_c2 / a * r.g; }
      else { r.k1 = (-A(1) / a + a * r.inv_c2) * r.g; r.q1 = A(0); }
      r.k2 = (A(1) / c - a * a * r.inv_c2 / c) * r.g;
      r.q2 = -r.inv_c2 / c * r.g;
    }
    return r;
  }
  DA_HD void compute(const Row& r, int64_t b, int64_t idx, const A* v, A* o, A* acc) const {
    const A d = v[0] - v[1];
    A inv_c2, g1, g2;
    if constexpr (!G) {
      inv_c2 = r.inv_c2;
      g1 = r.k1 + r.q1 * d * d;
      g2 = r.k2 + r.q2 * d * d;
    } else {
      const A a = s1.at(b, idx), c = same_std ? a : s2.at(b, idx);
      inv_c2 = A(1) / (c * c);
      g1 = same_std ? -d * d * inv_c2 / a * r.g : (-A(1) / a + a * inv_c2) * r.g;
      g2 = (A(1) / c - (a * a + d * d) * inv_c2 / c) * r.g;
    }
    if constexpr (M) {  // every term of this element is scaled by its weight
      const A m = v[2];
      g1 = masked(m, g1);
      g2 = masked(m, g2);
      const A gd = masked(m, d * inv_c2 * r.g);
      o[0] = gd;
      o[1] = -gd;
    } else {
      const A gd = d * inv_c2 * r.g;
      o[0] = gd;
      o[1] = -gd;
    }
    if constexpr (G) {
      if (want_s1) { if (gs1_full) gs1_full[idx] = g1; else acc[0] += g1; }
      if (want_s2) { if (gs2_full) gs2_full[idx] = g2; else acc[1] += g2; }
    } else {  // no full layout: both sums, unconditionally (branch-free; unwanted ones are not read)
      acc[0] += g1;
      acc[1] += g2;
    }
  }
};

// Sum of squared errors of model and reference against the target: acc[0], acc[1].
// Masked (M): acc[0], acc[1] sum m * err^2 and acc[2] sums m.
template <class T, class A, bool M = false> struct PairSqErr {
  using Elem = T;
  static constexpr unsigned kOptIn = 0u, kOptOut = 0u;  // optional (nullable) in / out
  static constexpr int NOUT = M ? 3 : 2, NI = M ? 4 : 3, NO = 0;
  static constexpr bool kMaskedForward = M;  // see "Masks" above
  DA_HD bool reduces() const { return true; }
  const T* model; const T* ref; const T* target; const T* mask;
  DA_HD const T* in(int i) const { return i == 0 ? model : (i == 1 ? ref : (i == 2 ? target : mask)); }
  DA_HD T* out(int) const { return nullptr; }
  struct Row {};
  DA_HD Row row(int64_t) const { return {}; }
  DA_HD void compute(const Row&, int64_t, int64_t, const A* v, A*, A* acc) const {
    A dm = v[0] - v[2], dr = v[1] - v[2];
    if constexpr (M) {
      acc[0] += masked(v[3], dm * dm);
      acc[1] += masked(v[3], dr * dr);
      acc[2] += v[3];
    } else {
      acc[0] += dm * dm;
      acc[1] += dr * dr;
    }
  }
};

// grad model_pred = coef[b] * 2 (model - target) / D, coef from the pair's margin.
// Masked (M): de/dpred = 2 m (pred - target) / sum m, row_scale[b] = 1 / sum m (0 for an all-zero row).
template <class T, class A, bool M = false> struct DpoBwd {
  using Elem = T;
  static constexpr unsigned kOptIn = 0u, kOptOut = 0u;  // optional (nullable) in / out
  static constexpr int NOUT = 0, NI = M ? 3 : 2, NO = 1;
  DA_HD bool reduces() const { return false; }
  const A* grad_loss; const A* margin; A beta; int loss_type; int reduction; int64_t pairs; A inv_d;
  const T* model; const T* target; T* gmodel; const T* mask; const A* row_scale;
  DA_HD const T* in(int i) const { return i == 0 ? model : (i == 1 ? target : mask); }
  DA_HD T* out(int) const { return gmodel; }
  struct Row { A coef; };
  DA_HD Row row(int64_t b) const {
    int64_t p = b < pairs ? b : b - pairs;
    A g = reduction == kPairMean ? grad_loss[0] / A(pairs) : grad_loss[p];
    A dh_de = b < pairs ? A(-0.5) : A(0.5);  // h = -((e_w - e_l)_model - ...)/2
    return {g * dpo_pair_dloss_dh<A>(margin[p], beta, loss_type) * dh_de * A(2) * (M ? row_scale[b] : inv_d)};
  }
  DA_HD void compute(const Row& r, int64_t, int64_t, const A* v, A* o, A*) const {
    if constexpr (M) o[0] = masked(v[2], r.coef * (v[0] - v[1]));
    else o[0] = r.coef * (v[0] - v[1]);
  }
};

template <class A> DA_HD A kto_dloss_dg(A g, A z, bool desirable, A beta, A ld, A lu, A grad_over_b) {
  A sgn = desirable ? A(1) : A(-1);
  A lam = desirable ? ld : lu;
  A s = sigmoid(sgn * beta * (g - z));
  return -lam * s * (A(1) - s) * sgn * beta * grad_over_b;
}
template <class T, class A, bool M = false> struct KtoBwd {
  using Elem = T;
  static constexpr unsigned kOptIn = 0u, kOptOut = 0u;  // optional (nullable) in / out
  static constexpr int NOUT = 0, NI = M ? 3 : 2, NO = 1;
  DA_HD bool reduces() const { return false; }
  const A* grad_loss; const A* g; const A* z; const bool* desirable; A beta, ld, lu; int64_t rows; A inv_d;
  const T* model; const T* target; T* gmodel; const T* mask; const A* row_scale;  // as in DpoBwd
  DA_HD const T* in(int i) const { return i == 0 ? model : (i == 1 ? target : mask); }
  DA_HD T* out(int) const { return gmodel; }
  struct Row { A coef; };
  DA_HD Row row(int64_t b) const {
    A dldg = kto_dloss_dg<A>(g[b], z[0], desirable[b], beta, ld, lu, grad_loss[0] / A(rows));
    return {-dldg * A(2) * (M ? row_scale[b] : inv_d)};  // g = e_ref - e_model, de_model/dpred = 2 (pred - target) / D
  }
  DA_HD void compute(const Row& r, int64_t, int64_t, const A* v, A* o, A*) const {
    if constexpr (M) o[0] = masked(v[2], r.coef * (v[0] - v[1]));
    else o[0] = r.coef * (v[0] - v[1]);
  }
};

// One step x_t -> x_{t-1}: writes mean (and prev_sample unless scoring a given one), sums the log-prob.
// The log-prob is taken at the prev_sample as stored (rounded to T), so rescoring it later gives
// exactly the same value. S (scoring): inputs model, sample, prev_in; output mean. Otherwise
// (drawing): inputs model, sample, noise; outputs prev_sample, mean. The two cases are separate
// instantiations with nothing optional, so neither backend tests a pointer per element.
// Masked (M): only the log-prob is weighted (acc[0] sums m * l, acc[1] sums m); mean and prev_sample
// are written for every element.
template <class T, class A, bool S, bool M = false> struct StepFwd {
  using Elem = T;
  static constexpr unsigned kOptIn = 0u, kOptOut = 0u;  // optional (nullable) in / out
  static constexpr int NOUT = M ? 2 : 1, NI = M ? 4 : 3, NO = S ? 1 : 2;
  static constexpr bool kMaskedForward = M;  // see "Masks" above
  DA_HD bool reduces() const { return true; }
  int mode; const A* p0; const A* p1; int per_sample; A param;
  const T* model; const T* sample; const T* prev_or_noise; T* mean_out; T* prev_out; const T* mask;
  DA_HD const T* in(int i) const {
    return i == 0 ? model : (i == 1 ? sample : (i == 2 ? prev_or_noise : mask));
  }
  DA_HD T* out(int i) const { return i == 0 ? mean_out : prev_out; }
  struct Row { StepCoef<A> c; A half_inv_var, log_norm; };
  DA_HD Row row(int64_t b) const {
    int64_t j = per_sample ? b : 0;
    Row r{step_coefficients<A>(mode, p0[j], p1[j], param), A(0), A(0)};
    if (r.c.std > A(0)) {
      r.half_inv_var = A(0.5) / (r.c.std * r.c.std);
      r.log_norm = dlog(r.c.std) + A(kLogSqrt2Pi);
    }
    return r;
  }
  DA_HD void compute(const Row& r, int64_t, int64_t, const A* v, A* o, A* acc) const {
    const A mu = r.c.cx * v[1] + r.c.cm * v[0];
    o[0] = mu;
    A prev;
    if constexpr (S) {
      prev = v[2];
    } else {  // rounding the drawn sample to T here (and storing that exact value) keeps rescoring exact
      prev = to_acc<A>(from_acc<T>(mu + r.c.std * v[2]));
      o[NO - 1] = prev;
    }
    const A d = prev - mu;
    if constexpr (M) {
      acc[0] += masked(v[3], -d * d * r.half_inv_var - r.log_norm);
      acc[1] += v[3];
    } else {
      acc[0] += -d * d * r.half_inv_var - r.log_norm;  // both 0 when std = 0: the log-prob is defined as 0
    }
  }
};

// Backward of a step. S (scoring a given prev_sample): the log-prob's gradient reaches model output,
// sample and prev_sample; inputs grad_mean (optional), model, sample, prev_in; outputs gmodel, gsample,
// gprev_in. Drawing: prev - mean = std * noise does not depend on the inputs, so the log-prob has no
// gradient and prev_sample's flows straight to the mean; inputs grad_prev, grad_mean (both optional:
// absent reads as 0); outputs gmodel, gsample. Outputs are optional (not wanted: null).
// Masked (M, scoring only: a drawn step's log-prob has no gradient): d lp / d prev is weighted by m and
// scaled per row by row_scale[b] = 1 / sum m instead of 1/D; the mean's own gradient is not masked.
template <class T, class A, bool S, bool M = false> struct StepBwd {
  static_assert(S || !M, "a drawn step's backward takes no mask");
  using Elem = T;
  static constexpr unsigned kOptIn = S ? 0b0001u : 0b11u, kOptOut = S ? 0b111u : 0b11u;
  static constexpr int NOUT = 0, NI = S ? (M ? 5 : 4) : 2, NO = S ? 3 : 2;
  DA_HD bool reduces() const { return false; }
  int mode; const A* p0; const A* p1; int per_sample; A param; A inv_d;
  const T* grad_prev; const A* grad_lp; int64_t grad_lp_stride; const T* grad_mean;
  const T* model; const T* sample; const T* prev_in;
  T* gmodel; T* gsample; T* gprev_in; const T* mask; const A* row_scale;
  DA_HD const T* in(int i) const {
    if constexpr (S) return i == 0 ? grad_mean : (i == 1 ? model : (i == 2 ? sample : (i == 3 ? prev_in : mask)));
    else return i == 0 ? grad_prev : grad_mean;
  }
  DA_HD T* out(int i) const { return i == 0 ? gmodel : (i == 1 ? gsample : gprev_in); }
  struct Row { StepCoef<A> c; A glp_over_var; };  // d lp / d prev = -(prev - mu) / var * glp
  DA_HD Row row(int64_t b) const {
    int64_t j = per_sample ? b : 0;
    Row r{step_coefficients<A>(mode, p0[j], p1[j], param), A(0)};
    if (S && grad_lp && r.c.std > A(0))
      r.glp_over_var = grad_lp[b * grad_lp_stride] * (M ? row_scale[b] : inv_d) / (r.c.std * r.c.std);
    return r;
  }
  DA_HD void compute(const Row& r, int64_t, int64_t, const A* v, A* o, A*) const {
    A gmu;  // gradient reaching the mean
    if constexpr (S) {
      const A mu = r.c.cx * v[2] + r.c.cm * v[1];
      A gp = -(v[3] - mu) * r.glp_over_var;  // d lp / d prev
      if constexpr (M) gp = masked(v[4], gp);
      gmu = v[0] - gp;
      o[2] = gp;
    } else {
      gmu = v[0] + v[1];
    }
    o[0] = r.c.cm * gmu;
    o[1] = r.c.cx * gmu;
  }
};

}  // namespace diffalign
