// The kernel API both backends implement: plain structs of raw pointers, no torch types, so the CPU
// library, the CUDA objects and their C++ tests build without torch. Pointers to element data have
// the tensor's dtype; pointers named as "acc" data (std, per-sample outputs, grads of std) are
// double for float64 tensors and float otherwise. Null output pointers mean "not wanted".
// Masks (the last members, so that positional initialisers without them stay valid): `mask` is the
// per-element weight, B*D elements of the tensor's dtype (null: unmasked); `row_scale` (backward passes,
// acc [B]) is the per-row factor of the masked reduction, 1 / sum of the row's mask (0 for an all-zero
// row), or null where the reduction is a plain sum. `mask_kind` says how `mask` is stored (MaskKind);
// `mask_inner` is the run length of a kMaskSegments mask.
#pragma once

#include <cstddef>
#include <cstdint>

#include "diffalign/dtypes.h"

namespace diffalign {

// How a mask is stored. kMaskElem: B*D weights of the tensor's dtype. kMaskBytes: B*D bytes (a bool
// mask read in place, 0 or 1). kMaskSegments: B*D/inner weights of the tensor's dtype, one per run of
// `inner` contiguous elements (a per-position mask such as (B, N, 1) over (B, N, F): inner = F).
// The CPU kernels read all three; the CUDA kernels read kMaskElem only (their dispatcher expands).
enum MaskKind : int { kMaskElem = 0, kMaskBytes = 1, kMaskSegments = 2 };

struct StdView { const void* p = nullptr; int layout = 0; };  // acc data, layout: StdLayout

struct LogprobArgs {
  DType dtype; int64_t B, D; const void* x; const void* mean; StdView std; int reduction;
  void* out;  // acc [B]
  const void* mask = nullptr;
  int mask_kind = kMaskElem; int64_t mask_inner = 1;
};
struct LogprobBwdArgs {
  DType dtype; int64_t B, D; const void* grad; int64_t grad_stride; const void* x; const void* mean; StdView std; int reduction;
  void* gx; void* gm; void* gstd;  // gstd: acc, shaped like std
  const void* mask = nullptr; const void* row_scale = nullptr;
  int mask_kind = kMaskElem; int64_t mask_inner = 1;
};
struct KlArgs {
  DType dtype; int64_t B, D; const void* m1; const void* m2; StdView s1; StdView s2;  // s2.p null: s2 = s1
  int reduction; void* out;
  const void* mask = nullptr;
  int mask_kind = kMaskElem; int64_t mask_inner = 1;
};
struct KlBwdArgs {
  DType dtype; int64_t B, D; const void* grad; int64_t grad_stride; const void* m1; const void* m2; StdView s1; StdView s2; int reduction;
  void* gm1; void* gm2; void* gs1; void* gs2;
  const void* mask = nullptr; const void* row_scale = nullptr;
  int mask_kind = kMaskElem; int64_t mask_inner = 1;
};
struct DpoArgs {
  DType dtype; int64_t B, D; const void* model; const void* ref; const void* target; double beta; int loss_type;
  int reduction; void* loss; void* margin;  // loss: acc [1] or [B/2]; margin: acc [B/2]
  const void* mask = nullptr;
  int mask_kind = kMaskElem; int64_t mask_inner = 1;
};
struct DpoBwdArgs {
  DType dtype; int64_t B, D; const void* grad_loss; const void* margin; const void* model; const void* target;
  double beta; int loss_type; int reduction; void* gmodel;
  const void* mask = nullptr; const void* row_scale = nullptr;  // row_scale: required with a mask
  int mask_kind = kMaskElem; int64_t mask_inner = 1;
};
struct KtoArgs {
  DType dtype; int64_t B, D; const void* model; const void* ref; const void* target; const bool* desirable;
  double beta, lambda_d, lambda_u; const void* kl_ref;  // acc [1] or null
  void* loss; void* z; void* g;  // acc [1], [1], [B]
  const void* mask = nullptr;
  int mask_kind = kMaskElem; int64_t mask_inner = 1;
};
struct KtoBwdArgs {
  DType dtype; int64_t B, D; const void* grad_loss; const void* g; const void* z; const bool* desirable;
  double beta, lambda_d, lambda_u; const void* model; const void* target; void* gmodel;
  const void* mask = nullptr; const void* row_scale = nullptr;  // row_scale: required with a mask
  int mask_kind = kMaskElem; int64_t mask_inner = 1;
};
struct StepArgs {
  DType dtype; int64_t B, D; int mode; const void* p0; const void* p1; int per_sample; double param;
  const void* model; const void* sample; const void* prev_in; const void* noise;
  void* prev_out; void* mean_out; void* log_prob; void* std_out;  // log_prob, std_out: acc [B]
  const void* mask = nullptr;  // weights the log-prob only
  int mask_kind = kMaskElem; int64_t mask_inner = 1;
};
struct StepBwdArgs {
  DType dtype; int64_t B, D; int mode; const void* p0; const void* p1; int per_sample; double param;
  const void* grad_prev; const void* grad_lp; int64_t grad_lp_stride; const void* grad_mean;
  const void* model; const void* sample; const void* prev_in;
  void* gmodel; void* gsample; void* gprev_in;
  const void* mask = nullptr; const void* row_scale = nullptr;  // read when scoring; row_scale required then
  int mask_kind = kMaskElem; int64_t mask_inner = 1;
};

// The per-row factor of a masked reduction (row_scale above): out[b] = 1 / (sum of row b's mask), 0 for
// an all-zero row; out: acc [B]. D counts the row's elements of x (a kMaskSegments mask holds D / inner per row).
struct MaskRowArgs {
  DType dtype; int64_t B, D; const void* mask; int mask_kind; int64_t mask_inner; void* out;
};

namespace cpu {
void mask_row_scale(const MaskRowArgs& a);
void gaussian_logprob(const LogprobArgs& a);
void gaussian_logprob_backward(const LogprobBwdArgs& a);
void gaussian_kl(const KlArgs& a);
void gaussian_kl_backward(const KlBwdArgs& a);
void diffusion_dpo_loss(const DpoArgs& a);
void diffusion_dpo_loss_backward(const DpoBwdArgs& a);
void diffusion_kto_loss(const KtoArgs& a);
void diffusion_kto_loss_backward(const KtoBwdArgs& a);
void gaussian_step(const StepArgs& a);
void gaussian_step_backward(const StepBwdArgs& a);
}  // namespace cpu

namespace cuda {
// Scratch space a launch needs (bytes), for B rows of D elements; the caller allocates it.
size_t workspace_bytes(DType dtype, int64_t B, int64_t D);
// Each launch is asynchronous on `stream` (a cudaStream_t), does no host sync and allocates nothing,
// so it can be captured in a CUDA graph.
void gaussian_logprob(const LogprobArgs& a, void* workspace, void* stream);
void gaussian_logprob_backward(const LogprobBwdArgs& a, void* workspace, void* stream);
void gaussian_kl(const KlArgs& a, void* workspace, void* stream);
void gaussian_kl_backward(const KlBwdArgs& a, void* workspace, void* stream);
void diffusion_dpo_loss(const DpoArgs& a, void* workspace, void* stream);
void diffusion_dpo_loss_backward(const DpoBwdArgs& a, void* workspace, void* stream);
void diffusion_kto_loss(const KtoArgs& a, void* workspace, void* stream);
void diffusion_kto_loss_backward(const KtoBwdArgs& a, void* workspace, void* stream);
void gaussian_step(const StepArgs& a, void* workspace, void* stream);
void gaussian_step_backward(const StepBwdArgs& a, void* workspace, void* stream);
}  // namespace cuda

}  // namespace diffalign
