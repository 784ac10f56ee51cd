// CUDA registrations of the diffalign ops. Compiled by the host compiler (it includes torch), it
// only allocates outputs and workspace and calls the raw-pointer launchers of csrc/cuda/kernels.cu
// on the current stream.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../binding.h"

namespace diffalign {
namespace {

// Whether a launch sums anything per row (and so needs the workspace for its partial sums): the
// element-wise backward passes usually do not, and skipping the allocation saves host time per call.
template <class Args> bool needs_workspace(const Args&) { return true; }
inline bool needs_workspace(const LogprobBwdArgs& a) { return a.gstd != nullptr; }
inline bool needs_workspace(const KlBwdArgs& a) { return a.gs1 != nullptr || a.gs2 != nullptr; }
inline bool needs_workspace(const DpoBwdArgs&) { return false; }
inline bool needs_workspace(const KtoBwdArgs&) { return false; }
inline bool needs_workspace(const StepBwdArgs&) { return false; }

struct CudaBackend {
  template <class Args, class Fn> static void run(const Args& a, const at::Tensor& like, Fn fn) {
    c10::cuda::CUDAGuard guard(like.device());
    at::Tensor ws;
    if (needs_workspace(a))
      ws = at::empty({int64_t(cuda::workspace_bytes(a.dtype, a.B, a.D))}, like.options().dtype(at::kByte));
    fn(a, ws.defined() ? ws.data_ptr() : nullptr, at::cuda::getCurrentCUDAStream(like.device().index()).stream());
  }
  static void launch(const LogprobArgs& a, const at::Tensor& t) { run(a, t, cuda::gaussian_logprob); }
  static void launch(const LogprobBwdArgs& a, const at::Tensor& t) { run(a, t, cuda::gaussian_logprob_backward); }
  static void launch(const KlArgs& a, const at::Tensor& t) { run(a, t, cuda::gaussian_kl); }
  static void launch(const KlBwdArgs& a, const at::Tensor& t) { run(a, t, cuda::gaussian_kl_backward); }
  static void launch(const DpoArgs& a, const at::Tensor& t) { run(a, t, cuda::diffusion_dpo_loss); }
  static void launch(const DpoBwdArgs& a, const at::Tensor& t) { run(a, t, cuda::diffusion_dpo_loss_backward); }
  static void launch(const KtoArgs& a, const at::Tensor& t) { run(a, t, cuda::diffusion_kto_loss); }
  static void launch(const KtoBwdArgs& a, const at::Tensor& t) { run(a, t, cuda::diffusion_kto_loss_backward); }
  static void launch(const StepArgs& a, const at::Tensor& t) { run(a, t, cuda::gaussian_step); }
  static void launch(const StepBwdArgs& a, const at::Tensor& t) { run(a, t, cuda::gaussian_step_backward); }
};

}  // namespace
}  // namespace diffalign

TORCH_LIBRARY_IMPL(diffalign, CUDA, m) { diffalign::binding::register_device_impls<diffalign::CudaBackend>(m); }
