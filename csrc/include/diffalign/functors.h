// Builds each op's element functor (math.h) from its raw-pointer argument struct (kernels.h), so the
// CPU and CUDA backends wire pointers, scales and layouts identically. T is the backend's element
// type (the CUDA build passes __half / __nv_bfloat16 where the CPU build passes half_t / bf16_t).
#pragma once

#include "diffalign/kernels.h"
#include "diffalign/math.h"

namespace diffalign {

template <class A> StdArg<A> std_arg(StdView v) { return {static_cast<const A*>(v.p), v.layout}; }
// Whether a pass is masked; the backends pick the make_*<..., M> instantiation by it.
template <class Args> bool has_mask(const Args& a) { return a.mask != nullptr; }
template <class A> A reduction_scale(int reduction, int64_t D) { return reduction == kMean ? A(1) / A(D) : A(1); }

// Whether a log-prob pass reads its std per element; the backends pick make_logprob_forward /
// make_logprob_backward<T, G> by it.
template <class Args> bool logprob_generic(const Args& a) { return a.std.layout == kFull; }

template <class T, bool G, bool M = false, class A = typename AccOf<T>::type>
LogprobFwd<T, A, G, M> make_logprob_forward(const LogprobArgs& a) {
  return {static_cast<const T*>(a.x), static_cast<const T*>(a.mean), std_arg<A>(a.std),
          static_cast<const T*>(a.mask)};
}

template <class T, bool G, bool M = false, class A = typename AccOf<T>::type>
LogprobBwd<T, A, G, M> make_logprob_backward(const LogprobBwdArgs& a) {
  return {static_cast<const A*>(a.grad), a.grad_stride, reduction_scale<A>(a.reduction, a.D),
          static_cast<const T*>(a.x), static_cast<const T*>(a.mean), std_arg<A>(a.std),
          static_cast<T*>(a.gx), static_cast<T*>(a.gm), G ? static_cast<A*>(a.gstd) : nullptr,
          a.gstd != nullptr, static_cast<const T*>(a.mask), static_cast<const A*>(a.row_scale)};
}

// Whether a KL pass (KlArgs or KlBwdArgs) needs its per-element std instantiation (some std has the
// full layout); the backends pick make_kl_forward / make_kl_backward<T, G> by it.
template <class Args> bool kl_generic(const Args& a) {
  const bool same = a.s2.p == nullptr;  // no ref_std: both distributions share std
  return a.s1.layout == kFull || (!same && a.s2.layout == kFull);
}

template <class T, bool G, bool M = false, class A = typename AccOf<T>::type>
KlFwd<T, A, G, M> make_kl_forward(const KlArgs& a) {
  const bool same = a.s2.p == nullptr;
  return {static_cast<const T*>(a.m1), static_cast<const T*>(a.m2), std_arg<A>(a.s1),
          same ? std_arg<A>(a.s1) : std_arg<A>(a.s2), same, static_cast<const T*>(a.mask)};
}
template <class T, bool G, bool M = false, class A = typename AccOf<T>::type>
KlBwd<T, A, G, M> make_kl_backward(const KlBwdArgs& a) {
  const bool same = a.s2.p == nullptr;
  return {static_cast<const A*>(a.grad), a.grad_stride, reduction_scale<A>(a.reduction, a.D),
          static_cast<const T*>(a.m1), static_cast<const T*>(a.m2), std_arg<A>(a.s1),
          same ? std_arg<A>(a.s1) : std_arg<A>(a.s2), same, static_cast<T*>(a.gm1), static_cast<T*>(a.gm2),
          a.gs1 && a.s1.layout == kFull ? static_cast<A*>(a.gs1) : nullptr,
          a.gs2 && a.s2.layout == kFull ? static_cast<A*>(a.gs2) : nullptr, a.gs1 != nullptr,
          a.gs2 != nullptr && !same, static_cast<const T*>(a.mask), static_cast<const A*>(a.row_scale)};
}

// DPO and KTO share the forward pass: per-row squared errors of model and reference.
template <class T, bool M = false, class A = typename AccOf<T>::type, class Args>
PairSqErr<T, A, M> make_sq_err(const Args& a) {
  return {static_cast<const T*>(a.model), static_cast<const T*>(a.ref), static_cast<const T*>(a.target),
          static_cast<const T*>(a.mask)};
}

template <class T, bool M = false, class A = typename AccOf<T>::type> DpoBwd<T, A, M> make_functor(const DpoBwdArgs& a) {
  return {static_cast<const A*>(a.grad_loss), static_cast<const A*>(a.margin), A(a.beta), a.loss_type, a.reduction,
          a.B / 2, A(1) / A(a.D), static_cast<const T*>(a.model), static_cast<const T*>(a.target),
          static_cast<T*>(a.gmodel), static_cast<const T*>(a.mask), static_cast<const A*>(a.row_scale)};
}

template <class T, bool M = false, class A = typename AccOf<T>::type> KtoBwd<T, A, M> make_functor(const KtoBwdArgs& a) {
  return {static_cast<const A*>(a.grad_loss), static_cast<const A*>(a.g), static_cast<const A*>(a.z), a.desirable,
          A(a.beta), A(a.lambda_d), A(a.lambda_u), a.B, A(1) / A(a.D), static_cast<const T*>(a.model),
          static_cast<const T*>(a.target), static_cast<T*>(a.gmodel), static_cast<const T*>(a.mask),
          static_cast<const A*>(a.row_scale)};
}

// Whether a step pass scores a given prev_sample (rather than drawing one); the backends pick
// make_step_forward / make_step_backward<T, S> by it.
template <class Args> bool step_scoring(const Args& a) { return a.prev_in != nullptr; }

template <class T, bool S, bool M = false, class A = typename AccOf<T>::type>
StepFwd<T, A, S, M> make_step_forward(const StepArgs& a) {
  return {a.mode, static_cast<const A*>(a.p0), static_cast<const A*>(a.p1), a.per_sample, A(a.param),
          static_cast<const T*>(a.model), static_cast<const T*>(a.sample),
          static_cast<const T*>(S ? a.prev_in : a.noise), static_cast<T*>(a.mean_out), static_cast<T*>(a.prev_out),
          static_cast<const T*>(a.mask)};
}

template <class T, bool S, bool M = false, class A = typename AccOf<T>::type>
StepBwd<T, A, S, M> make_step_backward(const StepBwdArgs& a) {
  return {a.mode, static_cast<const A*>(a.p0), static_cast<const A*>(a.p1), a.per_sample, A(a.param), A(1) / A(a.D),
          static_cast<const T*>(a.grad_prev), static_cast<const A*>(a.grad_lp), a.grad_lp_stride,
          static_cast<const T*>(a.grad_mean),
          static_cast<const T*>(a.model), static_cast<const T*>(a.sample), static_cast<const T*>(a.prev_in),
          static_cast<T*>(a.gmodel), static_cast<T*>(a.gsample), static_cast<T*>(a.gprev_in),
          static_cast<const T*>(a.mask), static_cast<const A*>(a.row_scale)};
}

}  // namespace diffalign
