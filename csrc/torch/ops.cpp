// torch.library registration of the diffalign ops: schemas, CPU kernels, and the Autograd-key
// kernels holding each backward (registered here in C++ rather than from Python, which measured
// 200-280 us of extra host overhead per call on an H200; see docs/design.md, section 5). Fake (meta) impls for
// torch.compile live in diffalign/ops/_fake.py; CUDA kernels register in cuda/ops_cuda.cpp.
#include <torch/autograd.h>
#include <torch/extension.h>
#include <torch/library.h>

#include "binding.h"

namespace diffalign {
namespace {

struct CpuBackend {
  static void launch(const LogprobArgs& a, const at::Tensor&) { cpu::gaussian_logprob(a); }
  static void launch(const LogprobBwdArgs& a, const at::Tensor&) { cpu::gaussian_logprob_backward(a); }
  static void launch(const KlArgs& a, const at::Tensor&) { cpu::gaussian_kl(a); }
  static void launch(const KlBwdArgs& a, const at::Tensor&) { cpu::gaussian_kl_backward(a); }
  static void launch(const DpoArgs& a, const at::Tensor&) { cpu::diffusion_dpo_loss(a); }
  static void launch(const DpoBwdArgs& a, const at::Tensor&) { cpu::diffusion_dpo_loss_backward(a); }
  static void launch(const KtoArgs& a, const at::Tensor&) { cpu::diffusion_kto_loss(a); }
  static void launch(const KtoBwdArgs& a, const at::Tensor&) { cpu::diffusion_kto_loss_backward(a); }
  static void launch(const StepArgs& a, const at::Tensor&) { cpu::gaussian_step(a); }
  static void launch(const StepBwdArgs& a, const at::Tensor&) { cpu::gaussian_step_backward(a); }
};

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;

template <class Sig> c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}
// masked-off gradients come back from the backward ops as empty placeholders
inline at::Tensor grad_if(bool wanted, const at::Tensor& g) { return wanted ? g : at::Tensor(); }
inline OptTensor opt(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }
// Under torch.compile's tracing shapes may be symbolic: the device impl checks those later.
inline bool concrete(const at::Tensor& t) { return !t.unsafeGetTensorImpl()->has_symbolic_sizes_strides(); }

// ---- gaussian_logprob ----
struct LogprobFn : public torch::autograd::Function<LogprobFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& std,
                            int64_t reduction, const OptTensor& mask) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({x, mean, std, mask.has_value() ? *mask : at::Tensor()});
    ctx->saved_data["reduction"] = reduction;
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto f = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, const OptTensor&)>(
        "diffalign::gaussian_logprob");
    return f.call(x, mean, std, reduction, mask);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(5);
    auto s = ctx->get_saved_variables();
    static auto f = op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, std::array<bool, 3>,
        const OptTensor&)>("diffalign::gaussian_logprob_backward");
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)};
    auto [gx, gm, gs] = f.call(grads[0], s[0], s[1], s[2], ctx->saved_data["reduction"].toInt(), mask, opt(s[3]));
    return {grad_if(mask[0], gx), grad_if(mask[1], gm), grad_if(mask[2], gs), at::Tensor(), at::Tensor()};
  }
};
at::Tensor logprob_autograd(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& std, int64_t reduction,
                            const OptTensor& mask) {
  if (concrete(x)) {
    binding::check_logprob_args(x, mean, std);
    binding::check_mask(mask, x, "x");
  }
  return LogprobFn::apply(x, mean, std, reduction, mask);
}

// ---- gaussian_kl ----
struct KlFn : public torch::autograd::Function<KlFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& m1, const at::Tensor& m2, const at::Tensor& s1,
                            const OptTensor& s2, int64_t reduction, const OptTensor& mask) {
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({m1, m2, s1, s2.has_value() ? *s2 : at::Tensor(), mask.has_value() ? *mask : at::Tensor()});
    ctx->saved_data["reduction"] = reduction;
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto f = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, int64_t,
                                  const OptTensor&)>("diffalign::gaussian_kl");
    return f.call(m1, m2, s1, s2, reduction, mask);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(6);
    auto s = ctx->get_saved_variables();
    static auto f = op<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, int64_t,
        std::array<bool, 4>, const OptTensor&)>("diffalign::gaussian_kl_backward");
    const std::array<bool, 4> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2),
                                   s[3].defined() && ctx->needs_input_grad(3)};
    auto [g1, g2, gs1, gs2] =
        f.call(grads[0], s[0], s[1], s[2], opt(s[3]), ctx->saved_data["reduction"].toInt(), mask, opt(s[4]));
    return {grad_if(mask[0], g1), grad_if(mask[1], g2), grad_if(mask[2], gs1), grad_if(mask[3], gs2), at::Tensor(),
            at::Tensor()};
  }
};
at::Tensor kl_autograd(const at::Tensor& m1, const at::Tensor& m2, const at::Tensor& s1, const OptTensor& s2,
                       int64_t reduction, const OptTensor& mask) {
  if (concrete(m1)) {
    binding::check_kl_args(m1, m2, s1, s2);
    binding::check_mask(mask, m1, "mean");
  }
  return KlFn::apply(m1, m2, s1, s2, reduction, mask);
}

// ---- diffusion_dpo_loss: gradient for model_pred only ----
struct DpoFn : public torch::autograd::Function<DpoFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& model, const at::Tensor& ref,
                               const at::Tensor& target, double beta, int64_t loss_type, int64_t reduction,
                               const OptTensor& mask) {
    ctx->set_materialize_grads(false);
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto f = op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                          double, int64_t, int64_t, const OptTensor&)>(
        "diffalign::diffusion_dpo_loss");
    auto [loss, margin] = f.call(model, ref, target, beta, loss_type, reduction, mask);
    ctx->mark_non_differentiable({margin});
    ctx->save_for_backward({model, target, margin, mask.has_value() ? *mask : at::Tensor()});
    ctx->saved_data["beta"] = beta;
    ctx->saved_data["loss_type"] = loss_type;
    ctx->saved_data["reduction"] = reduction;
    return {loss, margin};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(7);
    if (!grads[0].defined() || !ctx->needs_input_grad(0)) return out;
    auto s = ctx->get_saved_variables();
    static auto f = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                                  int64_t, int64_t, const OptTensor&)>("diffalign::diffusion_dpo_loss_backward");
    out[0] = f.call(grads[0], s[0], s[1], s[2], ctx->saved_data["beta"].toDouble(),
                    ctx->saved_data["loss_type"].toInt(), ctx->saved_data["reduction"].toInt(), opt(s[3]));
    return out;
  }
};
std::tuple<at::Tensor, at::Tensor> dpo_autograd(const at::Tensor& model, const at::Tensor& ref,
                                                const at::Tensor& target, double beta, int64_t loss_type,
                                                int64_t reduction, const OptTensor& mask) {
  if (concrete(model)) {
    binding::check_loss_args(model, ref, target, /*pairs=*/true);
    binding::check_mask(mask, model, "model_pred");
  }
  auto r = DpoFn::apply(model, ref, target, beta, loss_type, reduction, mask);
  return {r[0], r[1]};
}

// ---- diffusion_kto_loss: gradient for model_pred only ----
struct KtoFn : public torch::autograd::Function<KtoFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& model, const at::Tensor& ref,
                               const at::Tensor& target, const at::Tensor& desirable, double beta, double ld,
                               double lu, const OptTensor& kl_ref, const OptTensor& mask) {
    ctx->set_materialize_grads(false);
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto f = op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double, double,
        const OptTensor&, const OptTensor&)>("diffalign::diffusion_kto_loss");
    auto [loss, z, g] = f.call(model, ref, target, desirable, beta, ld, lu, kl_ref, mask);
    ctx->mark_non_differentiable({z, g});
    ctx->save_for_backward({model, target, desirable, g, z, mask.has_value() ? *mask : at::Tensor()});
    ctx->saved_data["beta"] = beta;
    ctx->saved_data["ld"] = ld;
    ctx->saved_data["lu"] = lu;
    return {loss, z, g};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(9);
    if (!grads[0].defined() || !ctx->needs_input_grad(0)) return out;
    auto s = ctx->get_saved_variables();
    static auto f = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  const at::Tensor&, const at::Tensor&, double, double, double, const OptTensor&)>(
        "diffalign::diffusion_kto_loss_backward");
    out[0] = f.call(grads[0], s[0], s[1], s[2], s[3], s[4], ctx->saved_data["beta"].toDouble(),
                    ctx->saved_data["ld"].toDouble(), ctx->saved_data["lu"].toDouble(), opt(s[5]));
    return out;
  }
};
std::tuple<at::Tensor, at::Tensor, at::Tensor> kto_autograd(const at::Tensor& model, const at::Tensor& ref,
                                                            const at::Tensor& target, const at::Tensor& desirable,
                                                            double beta, double ld, double lu,
                                                            const OptTensor& kl_ref, const OptTensor& mask) {
  if (concrete(model)) {
    binding::check_loss_args(model, ref, target, /*pairs=*/false);
    binding::check_desirable(desirable, model);
    binding::check_kl_ref(kl_ref, model);
    binding::check_mask(mask, model, "model_pred");
  }
  auto r = KtoFn::apply(model, ref, target, desirable, beta, ld, lu, kl_ref, mask);
  return {r[0], r[1], r[2]};
}

// ---- the two step ops share one kernel family (mode picks the rule) and one backward ----
using StepResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using StepSig = StepResult(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                           const OptTensor&, const OptTensor&, int64_t, const OptTensor&);

struct StepFn : public torch::autograd::Function<StepFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& model, const at::Tensor& sample,
                               const at::Tensor& p0, const at::Tensor& p1, double param, const OptTensor& prev,
                               const OptTensor& noise, int64_t mode, const OptTensor& mask) {
    ctx->set_materialize_grads(false);
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto f = op<StepSig>("diffalign::gaussian_step");
    auto [prev_out, lp, mean, std] = f.call(model, sample, p0, p1, param, prev, noise, mode, mask);
    ctx->mark_non_differentiable({std});
    ctx->save_for_backward({model, sample, p0, p1, prev.has_value() ? *prev : at::Tensor(),
                            mask.has_value() ? *mask : at::Tensor()});
    ctx->saved_data["param"] = param;
    ctx->saved_data["mode"] = mode;
    return {prev_out, lp, mean, std};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(9);
    // needs_input_grad counts defined tensor inputs only: model, sample, p0, p1, then prev or noise
    auto s = ctx->get_saved_variables();
    const bool want[3] = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                          s[4].defined() && ctx->needs_input_grad(4)};
    if (!(want[0] || want[1] || want[2])) return out;
    static auto f = op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
        const OptTensor&, const OptTensor&, const OptTensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        const at::Tensor&, double, const OptTensor&, int64_t, std::array<bool, 3>, const OptTensor&)>(
        "diffalign::gaussian_step_backward");
    // with a given prev_sample the op's prev output is an empty placeholder: its gradient is not used
    auto gprev_out = s[4].defined() ? std::nullopt : opt(grads[0]);
    auto [gm, gs, gp] = f.call(gprev_out, opt(grads[1]), opt(grads[2]), s[0], s[1], s[2], s[3],
                               ctx->saved_data["param"].toDouble(), opt(s[4]), ctx->saved_data["mode"].toInt(),
                               {want[0], want[1], want[2]}, opt(s[5]));
    out[0] = grad_if(want[0], gm);
    out[1] = grad_if(want[1], gs);
    out[5] = grad_if(want[2], gp);
    return out;
  }
};
StepResult step_call(const at::Tensor& model, const at::Tensor& sample, const at::Tensor& p0, const at::Tensor& p1,
                     double param, const OptTensor& prev, const OptTensor& noise, int64_t mode,
                     const OptTensor& mask) {
  if (concrete(sample)) {
    binding::check_step_args(model, sample, p0, p1, prev, noise, mode);
    binding::check_mask(mask, sample, "sample");
  }
  auto r = StepFn::apply(model, sample, p0, p1, param, prev, noise, mode, mask);
  return {r[0], r[1], r[2], r[3]};
}
StepResult ddim_step(const at::Tensor& model, const at::Tensor& sample, const at::Tensor& alpha_t,
                     const at::Tensor& alpha_prev, double eta, const OptTensor& prev, const OptTensor& noise,
                     int64_t prediction_type, const OptTensor& mask) {
  TORCH_CHECK_VALUE(prediction_type >= kDdimEpsilon && prediction_type <= kDdimSample,
                    "prediction_type code must be 0 (epsilon), 1 (v_prediction) or 2 (sample), got ", prediction_type);
  static auto f = op<StepSig>("diffalign::gaussian_step");
  return f.call(model, sample, alpha_t, alpha_prev, eta, prev, noise, prediction_type, mask);
}
StepResult flow_step(const at::Tensor& model, const at::Tensor& sample, const at::Tensor& sigma,
                     const at::Tensor& sigma_next, double noise_level, const OptTensor& prev, const OptTensor& noise,
                     const OptTensor& mask) {
  static auto f = op<StepSig>("diffalign::gaussian_step");
  return f.call(model, sample, sigma, sigma_next, noise_level, prev, noise, kFlowSde, mask);
}

bool cuda_built() {
#ifdef DIFFALIGN_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace diffalign

TORCH_LIBRARY(diffalign, m) {
  // `mask` (last, default None): a per-element weight of the input's shape or broadcastable to it with the
  // same batch size (bool or float >= 0); the backward ops take it as `elem_mask` (their `mask` says which
  // gradients are wanted). See docs/design.md, "The compiled ops".
  m.def("gaussian_logprob(Tensor x, Tensor mean, Tensor std, int reduction, Tensor? mask=None) -> Tensor");
  m.def("gaussian_logprob_backward(Tensor grad, Tensor x, Tensor mean, Tensor std, int reduction, bool[3] mask,"
        " Tensor? elem_mask=None) -> (Tensor, Tensor, Tensor)");
  m.def("gaussian_kl(Tensor mean, Tensor ref_mean, Tensor std, Tensor? ref_std, int reduction, Tensor? mask=None)"
        " -> Tensor");
  m.def("gaussian_kl_backward(Tensor grad, Tensor mean, Tensor ref_mean, Tensor std, Tensor? ref_std, int reduction,"
        " bool[4] mask, Tensor? elem_mask=None) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("diffusion_dpo_loss(Tensor model_pred, Tensor ref_pred, Tensor target, float beta, int loss_type,"
        " int reduction, Tensor? mask=None) -> (Tensor loss, Tensor margin)");
  m.def("diffusion_dpo_loss_backward(Tensor grad, Tensor model_pred, Tensor target, Tensor margin, float beta,"
        " int loss_type, int reduction, Tensor? elem_mask=None) -> Tensor");
  m.def("diffusion_kto_loss(Tensor model_pred, Tensor ref_pred, Tensor target, Tensor desirable, float beta,"
        " float lambda_desirable, float lambda_undesirable, Tensor? kl_ref, Tensor? mask=None)"
        " -> (Tensor loss, Tensor z, Tensor g)");
  m.def("diffusion_kto_loss_backward(Tensor grad, Tensor model_pred, Tensor target, Tensor desirable, Tensor g,"
        " Tensor z, float beta, float lambda_desirable, float lambda_undesirable, Tensor? elem_mask=None) -> Tensor");
  // The public step ops; both run gaussian_step, whose mode argument selects the rule. The mask weights
  // the log-prob only.
  m.def("ddim_step_with_logprob(Tensor model_output, Tensor sample, Tensor alpha_prod_t, Tensor alpha_prod_prev,"
        " float eta, Tensor? prev_sample, Tensor? noise, int prediction_type, Tensor? mask=None)"
        " -> (Tensor prev_sample, Tensor log_prob, Tensor mean, Tensor std)",
        &diffalign::ddim_step);
  m.def("flow_sde_step_with_logprob(Tensor model_output, Tensor sample, Tensor sigma, Tensor sigma_next,"
        " float noise_level, Tensor? prev_sample, Tensor? noise, Tensor? mask=None)"
        " -> (Tensor prev_sample, Tensor log_prob, Tensor mean, Tensor std)",
        &diffalign::flow_step);
  m.def("gaussian_step(Tensor model_output, Tensor sample, Tensor p0, Tensor p1, float param, Tensor? prev_sample,"
        " Tensor? noise, int mode, Tensor? mask=None) -> (Tensor prev_sample, Tensor log_prob, Tensor mean, Tensor std)");
  m.def("gaussian_step_backward(Tensor? grad_prev, Tensor? grad_log_prob, Tensor? grad_mean, Tensor model_output,"
        " Tensor sample, Tensor p0, Tensor p1, float param, Tensor? prev_sample, int mode, bool[3] mask,"
        " Tensor? elem_mask=None) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(diffalign, CPU, m) { diffalign::binding::register_device_impls<diffalign::CpuBackend>(m); }

TORCH_LIBRARY_IMPL(diffalign, Autograd, m) {
  m.impl("gaussian_logprob", &diffalign::logprob_autograd);
  m.impl("gaussian_kl", &diffalign::kl_autograd);
  m.impl("diffusion_dpo_loss", &diffalign::dpo_autograd);
  m.impl("diffusion_kto_loss", &diffalign::kto_autograd);
  m.impl("gaussian_step", &diffalign::step_call);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "diffalign compiled ops; use them through diffalign.ops";
  m.def("cuda_built", &diffalign::cuda_built, "whether the CUDA kernels were compiled in");
}
