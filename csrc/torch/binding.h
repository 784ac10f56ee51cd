// Tensor <-> kernel-argument glue shared by the CPU and CUDA registrations. Each op's device impl is
// one template over a Backend policy (CpuBackend in ops.cpp, CudaBackend in cuda/ops_cuda.cpp) that
// allocates outputs, fills the raw-pointer argument struct and launches.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "diffalign/kernels.h"
#include "diffalign/math.h"

namespace diffalign {
namespace binding {

inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK_VALUE(false, "diffalign ops take float32, float64, float16 or bfloat16 tensors, got ",
                               t.scalar_type());
  }
  return DType::kFloat32;
}

inline at::ScalarType acc_type(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

inline int64_t rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() >= 1, name, " must have a batch dimension, got a 0-d tensor");
  TORCH_CHECK_VALUE(t.size(0) > 0, name, " has an empty batch (shape ", t.sizes(), ")");
  return t.size(0);
}

inline void check_device(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ", ref.device());
}

// Value checks read the data, so they run on CPU tensors only: on a GPU they would cost a host sync
// per call and break CUDA-graph capture (diffalign.ops.set_value_checks adds them from Python there).
template <class V, class Pred> bool all_values_in(const V* p, int64_t n, Pred pred, double* lo, double* hi) {
  bool ok = true;
  *lo = double(p[0]), *hi = double(p[0]);
  for (int64_t i = 0; i < n; ++i) {
    const double v = double(p[i]);
    ok = ok && pred(v);
    *lo = std::min(*lo, v);
    *hi = std::max(*hi, v);
  }
  return ok;
}
// float32 / float64 data is read in place: a conversion to double costs a copy (a few us per call).
template <class Pred> bool all_values(const at::Tensor& t, Pred pred, double* lo, double* hi) {
  if (t.is_contiguous() && t.scalar_type() == at::kFloat)
    return all_values_in(t.const_data_ptr<float>(), t.numel(), pred, lo, hi);
  if (t.is_contiguous() && t.scalar_type() == at::kDouble)
    return all_values_in(t.const_data_ptr<double>(), t.numel(), pred, lo, hi);
  at::Tensor d = t.to(at::kDouble).contiguous();
  return all_values_in(d.const_data_ptr<double>(), d.numel(), pred, lo, hi);
}
inline void check_positive(const at::Tensor& t, const char* name) {
  double lo, hi;
  if (t.is_cpu() && t.numel() && !all_values(t, [](double v) { return v > 0; }, &lo, &hi))
    TORCH_CHECK_VALUE(false, name, " must be strictly positive (min ", lo, ")");
}
inline void check_unit_interval(const at::Tensor& t, const char* name, bool closed_low, bool closed_high) {
  double lo, hi;
  auto in = [&](double v) { return (closed_low ? v >= 0 : v > 0) && (closed_high ? v <= 1 : v < 1); };
  if (t.is_cpu() && t.numel() && !all_values(t, in, &lo, &hi))
    TORCH_CHECK_VALUE(false, name, " must lie in ", closed_low ? "[" : "(", "0, 1", closed_high ? "]" : ")",
                      "; got min ", lo, ", max ", hi);
}
inline int64_t cols(const at::Tensor& t) { return t.numel() / t.size(0); }

// A per-sample gradient (B,) in the accumulation dtype; a strided view (autograd hands the gradient
// of .sum() as a stride-0 expand) is read in place instead of being copied.
inline std::pair<at::Tensor, int64_t> per_sample_grad(const at::Tensor& g, const at::Tensor& like) {
  at::Tensor t = g.scalar_type() == acc_type(like) ? g : g.to(acc_type(like));
  if (t.dim() != 1) t = t.reshape({-1}).contiguous();
  return {t, t.stride(0)};
}

inline void check_like(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), name, " has shape ", t.sizes(), " but ", ref_name, " has shape ",
                    ref.sizes());
  check_device(t, name, ref, ref_name);
  TORCH_CHECK_VALUE(t.scalar_type() == ref.scalar_type(), name, " has dtype ", t.scalar_type(), " but ", ref_name,
                    " has dtype ", ref.scalar_type());
}

// ---- argument checks: run by the device impls and, before any autograd node exists, by the
// Autograd-key wrappers in ops.cpp (so a bad argument never unwinds through a half-built node) ----
inline int std_layout(const at::Tensor& s, const at::Tensor& x, const char* name) {
  const int64_t B = x.size(0);
  check_device(s, name, x, "x");
  if (s.numel() == 1) return kScalar;
  if (s.numel() == B && s.dim() >= 1 && s.size(0) == B) return kPerRow;
  TORCH_CHECK_VALUE(s.sizes() == x.sizes(), name, " has shape ", s.sizes(), "; expected 0-d, (", B, "), (", B,
                    ",1,..,1) or ", x.sizes());
  return kFull;
}
inline void check_logprob_args(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& std) {
  rows(x, "x");
  check_like(mean, "mean", x, "x");
  std_layout(std, x, "std");
}
inline void check_kl_args(const at::Tensor& m1, const at::Tensor& m2, const at::Tensor& s1,
                          const std::optional<at::Tensor>& s2) {
  rows(m1, "mean");
  check_like(m2, "ref_mean", m1, "mean");
  std_layout(s1, m1, "std");
  if (s2.has_value() && s2->defined()) std_layout(*s2, m1, "ref_std");
}
inline void check_loss_args(const at::Tensor& model, const at::Tensor& ref, const at::Tensor& target, bool pairs) {
  const int64_t B = rows(model, "model_pred");
  TORCH_CHECK_VALUE(!pairs || B % 2 == 0, "model_pred must hold [winners; losers] with an even number of rows, got ", B);
  check_like(ref, "ref_pred", model, "model_pred");
  check_like(target, "target", model, "model_pred");
}
inline void check_desirable(const at::Tensor& desirable, const at::Tensor& model) {
  TORCH_CHECK_VALUE(desirable.scalar_type() == at::kBool && desirable.dim() == 1 && desirable.numel() == model.size(0),
                    "desirable must be a bool tensor of shape (", model.size(0), "), got ", desirable.scalar_type(),
                    " ", desirable.sizes());
  check_device(desirable, "desirable", model, "model_pred");
}
inline void check_kl_ref(const std::optional<at::Tensor>& kl_ref, const at::Tensor& model) {
  if (!kl_ref.has_value() || !kl_ref->defined()) return;
  TORCH_CHECK_VALUE(kl_ref->numel() == 1, "kl_ref must be a one-element tensor (the reference point z), got shape ",
                    kl_ref->sizes());
  check_device(*kl_ref, "kl_ref", model, "model_pred");
}
// names of a step rule's two schedule values, for error messages
inline std::pair<const char*, const char*> schedule_names(int64_t mode) {
  return mode == kFlowSde ? std::make_pair("sigma", "sigma_next") : std::make_pair("alpha_prod_t", "alpha_prod_prev");
}
inline void check_schedule_values(const at::Tensor& p0, const at::Tensor& p1, int64_t mode) {
  auto [n0, n1] = schedule_names(mode);
  if (mode == kFlowSde) {
    check_unit_interval(p0, n0, /*closed_low=*/true, /*closed_high=*/true);
    check_unit_interval(p1, n1, true, false);
  } else {
    check_unit_interval(p0, n0, false, false);
    check_unit_interval(p1, n1, false, true);
  }
}
inline void check_step_args(const at::Tensor& model, const at::Tensor& sample, const at::Tensor& p0,
                            const at::Tensor& p1, const std::optional<at::Tensor>& prev,
                            const std::optional<at::Tensor>& noise, int64_t mode) {
  const int64_t B = rows(sample, "sample");
  check_like(model, "model_output", sample, "sample");
  auto [n0, n1] = schedule_names(mode);
  for (auto [t, n] : {std::make_pair(&p0, n0), std::make_pair(&p1, n1)}) {
    TORCH_CHECK_VALUE(t->numel() == 1 || (t->dim() == 1 && t->numel() == B), n, " has shape ", t->sizes(),
                      "; expected 0-d or (", B, ") for sample");
    check_device(*t, n, sample, "sample");
  }
  const bool has_prev = prev.has_value() && prev->defined(), has_noise = noise.has_value() && noise->defined();
  TORCH_CHECK_VALUE(has_prev != has_noise, "give exactly one of prev_sample (to score) and noise");
  if (has_prev) check_like(*prev, "prev_sample", sample, "sample");
  if (has_noise) check_like(*noise, "noise", sample, "sample");
}

// ---- masks: a per-element weight of x's shape, or one broadcastable to it with the same batch size
// (trailing dims it lacks count as 1, as for a (B,) std) ----
inline void check_mask(const std::optional<at::Tensor>& mask, const at::Tensor& x, const char* x_name) {
  if (!mask.has_value() || !mask->defined()) return;
  const at::Tensor& m = *mask;
  bool ok = m.dim() >= 1 && m.dim() <= x.dim() && m.size(0) == x.size(0);
  for (int64_t k = 1; ok && k < m.dim(); ++k) ok = m.size(k) == x.size(k) || m.size(k) == 1;
  TORCH_CHECK_VALUE(ok, "mask has shape ", m.sizes(), "; expected ", x_name, "'s shape ", x.sizes(),
                    " or one broadcastable to it with the same batch size ", x.size(0));
  TORCH_CHECK_VALUE(m.scalar_type() == at::kBool || at::isFloatingType(m.scalar_type()),
                    "mask must be a bool or floating-point tensor, got ", m.scalar_type());
  check_device(m, "mask", x, x_name);
}
// The mask as the kernels read it (kernels.h, MaskKind), in place where its form allows:
// - on the CPU, a bool mask of x's shape is read as bytes (no float copy);
// - on the CPU, a per-position mask whose trailing dims are all 1 after some leading dims equal to x's
//   ((B, N, 1) over (B, N, F); (B,) over anything) is read as one weight per run of `inner` contiguous
//   elements of x, from a copy in x's dtype of the small mask (B*N values) when it is not one already;
//   runs shorter than kMinSegment elements are expanded instead (a run that short is no cheaper);
// - otherwise (a float mask of x's shape; other broadcast patterns such as (B, 1, F); every mask on the
//   GPU, whose kernels read this form only) the weights of x's shape and dtype (rounded to it: 0/1 stay
//   exact), contiguous: a mask that already is so is passed through at no cost, others are expanded.
struct PreparedMask {
  at::Tensor t;  // undefined: unmasked
  int kind = kMaskElem;
  int64_t inner = 1;
  const void* ptr() const { return t.defined() ? t.data_ptr() : nullptr; }
  bool defined() const { return t.defined(); }
};
constexpr int64_t kMinSegment = 16;
inline const void* ptr_or_null_t(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }
inline PreparedMask prepare_mask(const std::optional<at::Tensor>& mask, const at::Tensor& x, const char* x_name) {
  if (!mask.has_value() || !mask->defined()) return {};
  check_mask(mask, x, x_name);
  at::Tensor m = *mask;
  if (m.dim() < x.dim()) {
    std::vector<int64_t> shape(m.sizes().begin(), m.sizes().end());
    shape.resize(size_t(x.dim()), 1);
    m = m.reshape(shape);
  }
  const bool is_bool = m.scalar_type() == at::kBool;
  if (x.is_cpu()) {
    if (is_bool && m.sizes() == x.sizes()) return {m.contiguous(), kMaskBytes, 1};
    int64_t j = m.dim() - 1;  // the last dim the mask does not broadcast over
    while (j > 0 && m.size(j) == 1) --j;
    bool leading = true;
    for (int64_t k = 0; k <= j; ++k) leading = leading && m.size(k) == x.size(k);
    int64_t inner = 1;
    for (int64_t k = j + 1; k < x.dim(); ++k) inner *= x.size(k);
    if (leading && inner >= kMinSegment) return {m.to(x.scalar_type()).contiguous(), kMaskSegments, inner};
    if (is_bool) return {m.expand(x.sizes()).contiguous(), kMaskBytes, 1};  // 1 byte per element, not 2-8
  }
  if (m.scalar_type() != x.scalar_type()) m = m.to(x.scalar_type());
  if (m.sizes() != x.sizes()) m = m.expand(x.sizes());
  return {m.contiguous(), kMaskElem, 1};
}
// The per-row factor of a masked "mean" for the backward passes: 1 / (sum of the row's mask), 0 for a
// row whose mask sums to 0; acc dtype, (B,). (The forward passes sum the mask in their own loop.) On the
// CPU one kernel pass over the mask in its stored form (a compact mask: B*N values); on the GPU torch ops.
inline at::Tensor mask_row_scale(const PreparedMask& pm, const at::Tensor& x) {
  const int64_t B = x.size(0);
  if (x.is_cpu()) {
    at::Tensor out = at::empty({B}, x.options().dtype(acc_type(x)));
    cpu::mask_row_scale({dtype_of(x), B, cols(x), pm.ptr(), pm.kind, pm.inner, out.data_ptr()});
    return out;
  }
  at::Tensor s = pm.t.reshape({B, -1}).sum(1, false, acc_type(x));
  return at::where(s > 0, s.reciprocal(), at::zeros_like(s)).contiguous();
}

// A std argument: contiguous, in the accumulation dtype, with its layout against x.
struct PreparedStd {
  at::Tensor t;
  int layout;
  StdView view() const { return {t.data_ptr(), layout}; }
};
inline PreparedStd prepare_std(const at::Tensor& s, const at::Tensor& x, const char* name) {
  const int layout = std_layout(s, x, name);
  check_positive(s, name);
  return {s.to(acc_type(x)).contiguous(), layout};
}

inline at::Tensor empty_like_masked(bool wanted, const at::Tensor& like) {
  return wanted ? at::empty_like(like, at::MemoryFormat::Contiguous) : at::empty({0}, like.options());
}
inline void* ptr_or_null(const at::Tensor& t) { return t.numel() ? t.data_ptr() : nullptr; }
inline const void* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() && t->numel() ? t->data_ptr() : nullptr;
}
inline std::optional<at::Tensor> contiguous_opt(const std::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) return std::nullopt;
  return t->contiguous();
}

// ------------------------------------------------------------------------------------------------
template <class Backend>
at::Tensor gaussian_logprob(const at::Tensor& x_, const at::Tensor& mean_, const at::Tensor& std_, int64_t reduction,
                            const std::optional<at::Tensor>& mask_) {
  check_logprob_args(x_, mean_, std_);
  const int64_t B = x_.size(0);
  auto x = x_.contiguous(), mean = mean_.contiguous();
  auto s = prepare_std(std_, x, "std");
  auto mask = prepare_mask(mask_, x, "x");
  auto out = at::empty({B}, x.options().dtype(acc_type(x)));
  LogprobArgs a{dtype_of(x), B, cols(x), x.data_ptr(), mean.data_ptr(), s.view(), int(reduction), out.data_ptr(),
                mask.ptr(), mask.kind, mask.inner};
  Backend::launch(a, x);
  return out;
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_logprob_backward(
    const at::Tensor& grad_, const at::Tensor& x_, const at::Tensor& mean_, const at::Tensor& std_, int64_t reduction,
    std::array<bool, 3> mask, const std::optional<at::Tensor>& elem_mask) {
  const int64_t B = rows(x_, "x");
  auto x = x_.contiguous(), mean = mean_.contiguous();
  auto [grad, grad_stride] = per_sample_grad(grad_, x);
  auto s = prepare_std(std_, x, "std");
  auto m = prepare_mask(elem_mask, x, "x");
  auto row_scale = m.defined() && reduction == kMean ? mask_row_scale(m, x) : at::Tensor();
  auto gx = empty_like_masked(mask[0], x), gm = empty_like_masked(mask[1], x);
  auto gs = mask[2] ? at::empty_like(s.t) : at::empty({0}, s.t.options());
  LogprobBwdArgs a{dtype_of(x), B, cols(x), grad.data_ptr(), grad_stride, x.data_ptr(), mean.data_ptr(), s.view(), int(reduction),
                   ptr_or_null(gx), ptr_or_null(gm), ptr_or_null(gs), m.ptr(), ptr_or_null_t(row_scale), m.kind, m.inner};
  Backend::launch(a, x);
  if (mask[2]) gs = gs.view(std_.sizes());
  return {gx, gm, gs};
}

template <class Backend>
at::Tensor gaussian_kl(const at::Tensor& m1_, const at::Tensor& m2_, const at::Tensor& s1_,
                       const std::optional<at::Tensor>& s2_, int64_t reduction, const std::optional<at::Tensor>& mask_) {
  check_kl_args(m1_, m2_, s1_, s2_);
  const int64_t B = m1_.size(0);
  auto m1 = m1_.contiguous(), m2 = m2_.contiguous();
  auto s1 = prepare_std(s1_, m1, "std");
  PreparedStd s2{at::Tensor(), kScalar};
  if (s2_.has_value() && s2_->defined()) s2 = prepare_std(*s2_, m1, "ref_std");
  auto mask = prepare_mask(mask_, m1, "mean");
  auto out = at::empty({B}, m1.options().dtype(acc_type(m1)));
  KlArgs a{dtype_of(m1), B, cols(m1), m1.data_ptr(), m2.data_ptr(), s1.view(),
           s2.t.defined() ? s2.view() : StdView{}, int(reduction), out.data_ptr(), mask.ptr(), mask.kind, mask.inner};
  Backend::launch(a, m1);
  return out;
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gaussian_kl_backward(
    const at::Tensor& grad_, const at::Tensor& m1_, const at::Tensor& m2_, const at::Tensor& s1_,
    const std::optional<at::Tensor>& s2_, int64_t reduction, std::array<bool, 4> mask,
    const std::optional<at::Tensor>& elem_mask) {
  const int64_t B = rows(m1_, "mean");
  auto m1 = m1_.contiguous(), m2 = m2_.contiguous();
  auto [grad, grad_stride] = per_sample_grad(grad_, m1);
  auto s1 = prepare_std(s1_, m1, "std");
  const bool has_s2 = s2_.has_value() && s2_->defined();
  PreparedStd s2{at::Tensor(), kScalar};
  if (has_s2) s2 = prepare_std(*s2_, m1, "ref_std");
  auto g1 = empty_like_masked(mask[0], m1), g2 = empty_like_masked(mask[1], m1);
  auto gs1 = mask[2] ? at::empty_like(s1.t) : at::empty({0}, s1.t.options());
  auto gs2 = (mask[3] && has_s2) ? at::empty_like(s2.t) : at::empty({0}, s1.t.options());
  auto m = prepare_mask(elem_mask, m1, "mean");
  auto row_scale = m.defined() && reduction == kMean ? mask_row_scale(m, m1) : at::Tensor();
  KlBwdArgs a{dtype_of(m1), B, cols(m1), grad.data_ptr(), grad_stride, m1.data_ptr(), m2.data_ptr(), s1.view(),
              has_s2 ? s2.view() : StdView{}, int(reduction), ptr_or_null(g1), ptr_or_null(g2), ptr_or_null(gs1),
              ptr_or_null(gs2), m.ptr(), ptr_or_null_t(row_scale), m.kind, m.inner};
  Backend::launch(a, m1);
  if (gs1.numel()) gs1 = gs1.view(s1_.sizes());
  if (gs2.numel()) gs2 = gs2.view(s2_->sizes());
  return {g1, g2, gs1, gs2};
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor> diffusion_dpo_loss(const at::Tensor& model_, const at::Tensor& ref_,
                                                      const at::Tensor& target_, double beta, int64_t loss_type,
                                                      int64_t reduction, const std::optional<at::Tensor>& mask_) {
  check_loss_args(model_, ref_, target_, /*pairs=*/true);
  const int64_t B = model_.size(0);
  auto model = model_.contiguous(), ref = ref_.contiguous(), target = target_.contiguous();
  auto mask = prepare_mask(mask_, model, "model_pred");
  auto opts = model.options().dtype(acc_type(model));
  auto loss = reduction == kPairNone ? at::empty({B / 2}, opts) : at::empty({}, opts);
  auto margin = at::empty({B / 2}, opts);
  DpoArgs a{dtype_of(model), B, cols(model), model.data_ptr(), ref.data_ptr(), target.data_ptr(), beta,
            int(loss_type), int(reduction), loss.data_ptr(), margin.data_ptr(), mask.ptr(), mask.kind, mask.inner};
  Backend::launch(a, model);
  return {loss, margin};
}

template <class Backend>
at::Tensor diffusion_dpo_loss_backward(const at::Tensor& grad_, const at::Tensor& model_, const at::Tensor& target_,
                                       const at::Tensor& margin_, double beta, int64_t loss_type, int64_t reduction,
                                       const std::optional<at::Tensor>& elem_mask) {
  const int64_t B = rows(model_, "model_pred");
  auto model = model_.contiguous(), target = target_.contiguous();
  auto grad = grad_.to(acc_type(model)).contiguous(), margin = margin_.contiguous();
  auto m = prepare_mask(elem_mask, model, "model_pred");
  auto row_scale = m.defined() ? mask_row_scale(m, model) : at::Tensor();
  auto gmodel = at::empty_like(model, at::MemoryFormat::Contiguous);
  DpoBwdArgs a{dtype_of(model), B, cols(model), grad.data_ptr(), margin.data_ptr(), model.data_ptr(),
               target.data_ptr(), beta, int(loss_type), int(reduction), gmodel.data_ptr(), m.ptr(),
               ptr_or_null_t(row_scale), m.kind, m.inner};
  Backend::launch(a, model);
  return gmodel;
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> diffusion_kto_loss(
    const at::Tensor& model_, const at::Tensor& ref_, const at::Tensor& target_, const at::Tensor& desirable_,
    double beta, double lambda_d, double lambda_u, const std::optional<at::Tensor>& kl_ref_,
    const std::optional<at::Tensor>& mask_) {
  check_loss_args(model_, ref_, target_, /*pairs=*/false);
  const int64_t B = model_.size(0);
  check_desirable(desirable_, model_);
  check_kl_ref(kl_ref_, model_);
  auto model = model_.contiguous(), ref = ref_.contiguous(), target = target_.contiguous();
  auto desirable = desirable_.contiguous();
  auto mask = prepare_mask(mask_, model, "model_pred");
  auto opts = model.options().dtype(acc_type(model));
  std::optional<at::Tensor> kl_ref;
  if (kl_ref_.has_value() && kl_ref_->defined()) kl_ref = kl_ref_->to(acc_type(model)).contiguous();
  auto loss = at::empty({}, opts), z = at::empty({}, opts), g = at::empty({B}, opts);
  KtoArgs a{dtype_of(model), B, cols(model), model.data_ptr(), ref.data_ptr(), target.data_ptr(),
            desirable.data_ptr<bool>(), beta, lambda_d, lambda_u, ptr_or_null(kl_ref), loss.data_ptr(), z.data_ptr(),
            g.data_ptr(), mask.ptr(), mask.kind, mask.inner};
  Backend::launch(a, model);
  return {loss, z, g};
}

template <class Backend>
at::Tensor diffusion_kto_loss_backward(const at::Tensor& grad_, const at::Tensor& model_, const at::Tensor& target_,
                                       const at::Tensor& desirable_, const at::Tensor& g_, const at::Tensor& z_,
                                       double beta, double lambda_d, double lambda_u,
                                       const std::optional<at::Tensor>& elem_mask) {
  const int64_t B = rows(model_, "model_pred");
  auto model = model_.contiguous(), target = target_.contiguous(), desirable = desirable_.contiguous();
  auto grad = grad_.to(acc_type(model)).contiguous(), g = g_.contiguous(), z = z_.contiguous();
  auto m = prepare_mask(elem_mask, model, "model_pred");
  auto row_scale = m.defined() ? mask_row_scale(m, model) : at::Tensor();
  auto gmodel = at::empty_like(model, at::MemoryFormat::Contiguous);
  KtoBwdArgs a{dtype_of(model), B, cols(model), grad.data_ptr(), g.data_ptr(), z.data_ptr(),
               desirable.data_ptr<bool>(), beta, lambda_d, lambda_u, model.data_ptr(), target.data_ptr(),
               gmodel.data_ptr(), m.ptr(), ptr_or_null_t(row_scale), m.kind, m.inner};
  Backend::launch(a, model);
  return gmodel;
}

// p0/p1: per-sample schedule values (alphas or sigmas), 0-d or (B,), in the accumulation dtype.
inline int per_sample(const at::Tensor& p0, const at::Tensor& p1, int64_t B) {
  TORCH_CHECK_VALUE(p0.numel() == 1 || p0.numel() == B, "schedule values must be 0-d or (", B, "), got ", p0.sizes());
  TORCH_CHECK_VALUE(p1.numel() == p0.numel() || p1.numel() == 1 || p1.numel() == B,
                    "schedule values must be 0-d or (", B, "), got ", p1.sizes());
  return (p0.numel() == B && B > 1) || (p1.numel() == B && B > 1) ? 1 : 0;
}

// A schedule value as the kernels read it: ps ? (B,) : one element, contiguous, in acc dtype. The
// common case (already so) is passed through: the expand / to / contiguous calls cost host time
// on every step, and the step ops are host-bound at the shapes of a sampling loop.
inline at::Tensor schedule_arg(const at::Tensor& p, int ps, int64_t B, at::ScalarType acc) {
  if (p.scalar_type() == acc && p.is_contiguous() && p.numel() == (ps ? B : 1)) return p;
  return (ps ? p.expand({B}) : p.reshape({1})).to(acc).contiguous();
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gaussian_step(
    const at::Tensor& model_, const at::Tensor& sample_, const at::Tensor& p0_, const at::Tensor& p1_, double param,
    const std::optional<at::Tensor>& prev_, const std::optional<at::Tensor>& noise_, int64_t mode,
    const std::optional<at::Tensor>& mask_) {
  check_step_args(model_, sample_, p0_, p1_, prev_, noise_, mode);
  check_schedule_values(p0_, p1_, mode);
  const int64_t B = sample_.size(0);
  auto model = model_.contiguous(), sample = sample_.contiguous();
  auto mask = prepare_mask(mask_, sample, "sample");
  auto prev = contiguous_opt(prev_), noise = contiguous_opt(noise_);
  const int ps = per_sample(p0_, p1_, B);
  auto p0 = schedule_arg(p0_, ps, B, acc_type(sample)), p1 = schedule_arg(p1_, ps, B, acc_type(sample));
  auto prev_out = prev ? at::empty({0}, sample.options()) : at::empty_like(sample, at::MemoryFormat::Contiguous);
  auto mean = at::empty_like(sample, at::MemoryFormat::Contiguous);
  auto opts = sample.options().dtype(acc_type(sample));
  auto lp = at::empty({B}, opts);
  std::vector<int64_t> std_shape(sample.dim(), 1);
  std_shape[0] = B;
  auto std_out = at::empty(std_shape, opts);
  StepArgs a{dtype_of(sample), B, cols(sample), int(mode), p0.data_ptr(), p1.data_ptr(), ps, param, model.data_ptr(),
             sample.data_ptr(), ptr_or_null(prev), ptr_or_null(noise), ptr_or_null(prev_out), mean.data_ptr(),
             lp.data_ptr(), std_out.data_ptr(), mask.ptr(), mask.kind, mask.inner};
  Backend::launch(a, sample);
  return {prev_out, lp, mean, std_out};
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_step_backward(
    const std::optional<at::Tensor>& grad_prev_, const std::optional<at::Tensor>& grad_lp_,
    const std::optional<at::Tensor>& grad_mean_, const at::Tensor& model_, const at::Tensor& sample_,
    const at::Tensor& p0_, const at::Tensor& p1_, double param, const std::optional<at::Tensor>& prev_, int64_t mode,
    std::array<bool, 3> mask, const std::optional<at::Tensor>& elem_mask) {
  const int64_t B = rows(sample_, "sample");
  auto model = model_.contiguous(), sample = sample_.contiguous();
  auto prev = contiguous_opt(prev_);
  // only a scored step's log-prob has a gradient, and only it reads the mask
  auto m = prev.has_value() ? prepare_mask(elem_mask, sample, "sample") : PreparedMask{};
  auto row_scale = m.defined() ? mask_row_scale(m, sample) : at::Tensor();
  auto grad_prev = contiguous_opt(grad_prev_), grad_mean = contiguous_opt(grad_mean_);
  at::Tensor grad_lp;  // read in place, strided (the gradient of .sum() is a stride-0 expand)
  int64_t grad_lp_stride = 0;
  if (grad_lp_.has_value() && grad_lp_->defined()) std::tie(grad_lp, grad_lp_stride) = per_sample_grad(*grad_lp_, sample);
  const int ps = per_sample(p0_, p1_, B);
  auto p0 = schedule_arg(p0_, ps, B, acc_type(sample)), p1 = schedule_arg(p1_, ps, B, acc_type(sample));
  auto gmodel = empty_like_masked(mask[0], sample), gsample = empty_like_masked(mask[1], sample);
  auto gprev = empty_like_masked(mask[2] && prev.has_value(), sample);
  StepBwdArgs a{dtype_of(sample), B, cols(sample), int(mode), p0.data_ptr(), p1.data_ptr(), ps, param,
                ptr_or_null(grad_prev), grad_lp.defined() ? grad_lp.data_ptr() : nullptr, grad_lp_stride,
                ptr_or_null(grad_mean), model.data_ptr(), sample.data_ptr(), ptr_or_null(prev), ptr_or_null(gmodel),
                ptr_or_null(gsample), ptr_or_null(gprev), m.ptr(), ptr_or_null_t(row_scale), m.kind, m.inner};
  Backend::launch(a, sample);
  return {gmodel, gsample, gprev};
}

// The device kernels of every op for one backend (CPU or CUDA dispatch key).
template <class Backend> void register_device_impls(torch::Library& m) {
  m.impl("gaussian_logprob", &gaussian_logprob<Backend>);
  m.impl("gaussian_logprob_backward", &gaussian_logprob_backward<Backend>);
  m.impl("gaussian_kl", &gaussian_kl<Backend>);
  m.impl("gaussian_kl_backward", &gaussian_kl_backward<Backend>);
  m.impl("diffusion_dpo_loss", &diffusion_dpo_loss<Backend>);
  m.impl("diffusion_dpo_loss_backward", &diffusion_dpo_loss_backward<Backend>);
  m.impl("diffusion_kto_loss", &diffusion_kto_loss<Backend>);
  m.impl("diffusion_kto_loss_backward", &diffusion_kto_loss_backward<Backend>);
  m.impl("gaussian_step", &gaussian_step<Backend>);
  m.impl("gaussian_step_backward", &gaussian_step_backward<Backend>);
}

}  // namespace binding
}  // namespace diffalign
