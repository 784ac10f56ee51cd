// CUDA backend: raw-pointer kernels over (row, chunk) blocks that call the shared functors of
// math.h, plus one single-block epilogue per op that sums the chunk partials in a fixed order (no
// atomics: results are deterministic) and finishes the per-row / per-pair math. No torch header:
// nvcc compiles this alone. Every launch is stream-ordered, syncs nothing and allocates nothing
// (the caller passes the workspace), so it can be captured in a CUDA graph.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "diffalign/dtypes.h"

namespace diffalign {
// CUDA 16-bit types, converted with the hardware intrinsics (round to nearest even).
template <> struct Conv<__half> {
  template <class A> __host__ __device__ __forceinline__ static A to(__half v) { return A(__half2float(v)); }
  template <class A> __host__ __device__ __forceinline__ static __half from(A v) { return __float2half_rn(float(v)); }
};
template <> struct Conv<__nv_bfloat16> {
  template <class A> __host__ __device__ __forceinline__ static A to(__nv_bfloat16 v) { return A(__bfloat162float(v)); }
  template <class A> __host__ __device__ __forceinline__ static __nv_bfloat16 from(A v) { return __float2bfloat16_rn(float(v)); }
};
}  // namespace diffalign

#include "diffalign/functors.h"

namespace diffalign {
namespace cuda {
namespace {

constexpr int kThreads = 256;
// Elements per thread per chunk (loads in flight), per functor. 16-bit functors with at most three
// element inputs take 32 instead of 16, so that a block moves about as many bytes as in float32: with 16
// items their blocks moved half the bytes for the same fixed cost (row set-up, block reduction, partial
// write), and on an H100 the bfloat16 log-prob and KL passes sat at 1.3-1.7x of the memory roofline at
// XL while float32 reached 1.03-1.06x. The steps (3-4 inputs, up to 3 outputs) already move enough and
// keep 16 (doubling theirs doubled their registers to ~125 a thread).
constexpr int kMinItems = 16;
// (variable templates, not constexpr functions: device code may read these without --expt-relaxed-constexpr)
template <class F> struct IsStep : std::false_type {};
template <class T, class A, bool S, bool M> struct IsStep<StepFwd<T, A, S, M>> : std::true_type {};
template <class T, class A, bool S, bool M> struct IsStep<StepBwd<T, A, S, M>> : std::true_type {};
template <class F>
constexpr int kItemsOf = sizeof(typename F::Elem) == 2 && F::NI <= 3 && !IsStep<F>::value ? 32 : kMinItems;
template <class F> constexpr int64_t kChunkOf = int64_t(kThreads) * kItemsOf<F>;  // elements per block
constexpr int kEpiThreads = 1024;                 // the single-block epilogue

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("diffalign CUDA ") + what + ": " + cudaGetErrorString(e));
}

inline int64_t num_chunks(int64_t D, int64_t chunk) { return std::max<int64_t>(1, (D + chunk - 1) / chunk); }

template <class A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block; every thread must call it; the result is valid in thread 0.
template <class A> __device__ A block_sum(A v, A* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // smem may still be read from a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = threadIdx.x < nwarps ? smem[threadIdx.x] : A(0);
  if (warp == 0) v = warp_sum(v);
  return v;
}

// 16-byte packs: V elements of T moved by one vector load or store (LDG/STG.128). With 16-bit data a
// scalar load moves only 2 bytes per thread, and the same number of loads in flight then moves half
// the bytes of fp32: the kernels ran no faster in bf16 than in fp32 before this.
template <class T> struct Pack {
  static constexpr int V = 16 / int(sizeof(T));
  union { uint4 raw; T v[V]; };
};

// Block-sums each of the functor's NOUT per-thread accumulators into partial[k * tasks + t].
template <class A, class F> __device__ __forceinline__ void write_partials(const F& f, A* acc, int64_t tasks,
                                                                          int64_t t, A* partial) {
  constexpr int N = F::NOUT;
  if constexpr (N > 0) {
    if (!f.reduces()) return;  // uniform across the block: no thread reaches a barrier alone
    __shared__ A smem[32];
#pragma unroll
    for (int k = 0; k < N; ++k) {
      A s = block_sum(acc[k], smem);
      if (threadIdx.x == 0) partial[k * tasks + t] = s;
    }
  }
}

// One block per (row, chunk): applies f to the chunk's elements and writes NOUT partial sums.
// Scalar version: any D and alignment (element i0 + k * kThreads + threadIdx.x per item).
template <class A, class F>
__global__ void __launch_bounds__(kThreads) chunk_kernel(F f, int64_t D, int64_t nchunks, int64_t tasks, A* partial) {
  constexpr int N = F::NOUT, kItems = kItemsOf<F>;
  constexpr int64_t kChunk = kChunkOf<F>;
  const int64_t t = blockIdx.x;
  const int64_t b = t / nchunks, c = t % nchunks;
  const auto row = f.row(b);
  const int64_t base = b * D;
  const int64_t i0 = c * kChunk, i1 = min(D, i0 + kChunk);
  A acc[N > 0 ? N : 1] = {};
  if (i1 - i0 == kChunk) {  // full chunk: fixed trip count, loads can be issued together
#pragma unroll
    for (int k = 0; k < kItems; ++k) elem(f, row, b, base + i0 + k * kThreads + threadIdx.x, acc);
  } else {
    for (int64_t i = i0 + threadIdx.x; i < i1; i += kThreads) elem(f, row, b, base + i, acc);
  }
  write_partials(f, acc, tasks, t, partial);
}

// Vector version, for D % V == 0 and 16-byte aligned data: a full chunk is kItems / V packs per
// thread, all loaded before any is computed (loads in flight), then computed and stored as packs.
template <class A, class F>
__global__ void __launch_bounds__(kThreads) chunk_kernel_vec(F f, int64_t D, int64_t nchunks, int64_t tasks,
                                                             A* partial) {
  using T = typename F::Elem;
  constexpr int N = F::NOUT, kItems = kItemsOf<F>, V = Pack<T>::V, P = kItems / V;
  constexpr int64_t kChunk = kChunkOf<F>;
  constexpr int NI = F::NI > 0 ? F::NI : 1, NO = F::NO > 0 ? F::NO : 1;
  static_assert(kItems % V == 0, "kItems must be a multiple of the pack size");
  const int64_t t = blockIdx.x;
  const int64_t b = t / nchunks, c = t % nchunks;
  const auto row = f.row(b);
  const int64_t base = b * D;
  const int64_t i0 = c * kChunk, i1 = min(D, i0 + kChunk);
  A acc[N > 0 ? N : 1] = {};
  if (i1 - i0 == kChunk) {
    Pack<T> in[P][NI];
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int64_t j = base + i0 + (int64_t(p) * kThreads + threadIdx.x) * V;
#pragma unroll
      for (int i = 0; i < F::NI; ++i) {
        const T* src = f.in(i);
        if (src) in[p][i].raw = __ldg(reinterpret_cast<const uint4*>(src + j));
      }
    }
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int64_t j = base + i0 + (int64_t(p) * kThreads + threadIdx.x) * V;
      Pack<T> out[NO];
#pragma unroll
      for (int e = 0; e < V; ++e) {
        A v[NI], o[NO];
#pragma unroll
        for (int i = 0; i < F::NI; ++i) v[i] = f.in(i) ? to_acc<A>(in[p][i].v[e]) : A(0);
        f.compute(row, b, j + e, v, o, acc);
#pragma unroll
        for (int i = 0; i < F::NO; ++i) out[i].v[e] = from_acc<T>(o[i]);
      }
#pragma unroll
      for (int i = 0; i < F::NO; ++i) {
        T* dst = f.out(i);
        if (dst) *reinterpret_cast<uint4*>(dst + j) = out[i].raw;
      }
    }
  } else {
    for (int64_t i = i0 + threadIdx.x; i < i1; i += kThreads) elem(f, row, b, base + i, acc);
  }
  write_partials(f, acc, tasks, t, partial);
}

// Whether every element array of f is 16-byte aligned and rows start on a pack boundary.
template <class F> bool vectorizable(const F& f, int64_t D) {
  constexpr int V = Pack<typename F::Elem>::V;
  if (D % V != 0) return false;
  auto aligned = [](const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  for (int i = 0; i < F::NI; ++i)
    if (!aligned(f.in(i))) return false;
  for (int i = 0; i < F::NO; ++i)
    if (!aligned(f.out(i))) return false;
  return true;
}

// Epilogue, step 1 (inside the single block): warp w sums the chunk partials of rows w, w+32, ...
template <class A, int N>
__device__ void sum_rows(const A* partial, int64_t B, int64_t nchunks, A* rows) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int64_t tasks = B * nchunks;
  for (int64_t b = warp; b < B; b += nwarps) {
#pragma unroll
    for (int k = 0; k < N; ++k) {
      A s = 0;
      for (int64_t c = lane; c < nchunks; c += 32) s += partial[k * tasks + b * nchunks + c];
      s = warp_sum(s);
      if (lane == 0) rows[k * B + b] = s;
    }
  }
  __syncthreads();  // global writes of this block are visible to it after the barrier
}

template <class A> __device__ void store_std_grad(const A* rows, int64_t B, int layout, A* dest, A* smem) {
  if (dest == nullptr || layout == kFull) return;
  if (layout == kPerRow) {
    for (int64_t b = threadIdx.x; b < B; b += blockDim.x) dest[b] = rows[b];
    return;
  }
  A s = 0;
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) s += rows[b];
  s = block_sum(s, smem);
  if (threadIdx.x == 0) dest[0] = s;
}

// ---- epilogues ----
template <class A> __global__ void scale_rows_epilogue(const A* partial, int64_t B, int64_t nchunks, A* rows, A scale,
                                                       A* out) {
  sum_rows<A, 1>(partial, B, nchunks, rows);
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) out[b] = rows[b] * scale;
}

// Masked forward: rows[b] = sum m*l, rows[B + b] = sum m; "mean" divides (0 for an all-zero row).
template <class A> __global__ void masked_rows_epilogue(const A* partial, int64_t B, int64_t nchunks, A* rows,
                                                        int reduction, A* out) {
  sum_rows<A, 2>(partial, B, nchunks, rows);
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x)
    out[b] = reduction == kMean ? masked_mean(rows[b], rows[B + b]) : rows[b];
}

// Per-row mean squared errors of model (rows[b]) and reference (rows[B + b]) in place: the sums times
// 1/D, or masked (rows[2B + b] = sum m) divided by the mask's sum. Ends with a barrier.
template <class A> __device__ void row_errors(A* rows, int64_t B, A inv_d, bool masked) {
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) {
    const A w = masked ? inv_or_zero(rows[2 * B + b]) : inv_d;
    rows[b] *= w;
    rows[B + b] *= w;
  }
  __syncthreads();
}

template <class A> __global__ void std_grad_epilogue(const A* partial, int64_t B, int64_t nchunks, A* rows,
                                                     int layout0, A* dest0, int layout1, A* dest1) {
  __shared__ A smem[32];
  if (dest1 != nullptr) sum_rows<A, 2>(partial, B, nchunks, rows); else sum_rows<A, 1>(partial, B, nchunks, rows);
  store_std_grad<A>(rows, B, layout0, dest0, smem);
  store_std_grad<A>(rows + B, B, layout1, dest1, smem);
}

template <class A> __global__ void dpo_epilogue(const A* partial, int64_t B, int64_t nchunks, A* rows, A inv_d, A beta,
                                                int loss_type, int reduction, A* loss, A* margin, bool masked) {
  __shared__ A smem[32];
  if (masked) sum_rows<A, 3>(partial, B, nchunks, rows); else sum_rows<A, 2>(partial, B, nchunks, rows);
  row_errors(rows, B, inv_d, masked);
  const int64_t P = B / 2;
  const A* em = rows;
  const A* er = rows + B;
  A total = 0;
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    A l = dpo_pair<A>(em[p], em[p + P], er[p], er[p + P], beta, loss_type, margin + p);
    if (reduction == kPairNone) loss[p] = l; else total += l;
  }
  if (reduction == kPairMean) {
    total = block_sum(total, smem);
    if (threadIdx.x == 0) loss[0] = total / A(P);
  }
}

template <class A> __global__ void kto_epilogue(const A* partial, int64_t B, int64_t nchunks, A* rows, A inv_d,
                                                const bool* desirable, A beta, A ld, A lu, const A* kl_ref, A* loss,
                                                A* z_out, A* g, bool masked) {
  __shared__ A smem[32];
  __shared__ A z_shared;
  if (masked) sum_rows<A, 3>(partial, B, nchunks, rows); else sum_rows<A, 2>(partial, B, nchunks, rows);
  A s = 0;
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) {
    const A w = masked ? inv_or_zero(rows[2 * B + b]) : inv_d;
    g[b] = (rows[B + b] - rows[b]) * w;  // e_ref - e_model
    s += g[b];
  }
  s = block_sum(s, smem);
  if (threadIdx.x == 0) {
    A mean_g = s / A(B);
    z_shared = kl_ref ? kl_ref[0] : (mean_g > A(0) ? mean_g : A(0));
    z_out[0] = z_shared;
  }
  __syncthreads();
  const A z = z_shared;
  A total = 0;
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) total += kto_sample_loss<A>(g[b], z, desirable[b], beta, ld, lu);
  total = block_sum(total, smem);
  if (threadIdx.x == 0) loss[0] = total / A(B);
}

template <class A> __global__ void step_epilogue(const A* partial, int64_t B, int64_t nchunks, A* rows, int mode,
                                                 const A* p0, const A* p1, int per_sample, A param, A inv_d, A* lp,
                                                 A* std_out, bool masked) {
  if (masked) sum_rows<A, 2>(partial, B, nchunks, rows); else sum_rows<A, 1>(partial, B, nchunks, rows);
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) {
    const int64_t j = per_sample ? b : 0;
    const A s = step_coefficients<A>(mode, p0[j], p1[j], param).std;
    std_out[b] = s;
    if (masked) lp[b] = s > A(0) ? masked_mean(rows[b], rows[B + b]) : A(0);
    else lp[b] = s > A(0) ? rows[b] * inv_d : A(0);
  }
}

// ---- launching ----
struct Work {  // carve the caller's workspace: partials [4][tasks], then row sums [4][B]
  template <class A> static A* partial(void* ws) { return static_cast<A*>(ws); }
  template <class A> static A* rows(void* ws, int64_t tasks) { return static_cast<A*>(ws) + 4 * tasks; }
};

// Launches f over B rows of D elements; returns the chunks per row, which the epilogue sums.
template <class A, class F> int64_t launch_chunks(const F& f, int64_t B, int64_t D, void* ws, cudaStream_t s) {
  const int64_t nchunks = num_chunks(D, kChunkOf<F>), tasks = B * nchunks;
  if (tasks > 0x7fffffffLL) throw std::runtime_error("diffalign CUDA: tensor too large for one launch");
  if (vectorizable(f, D))
    chunk_kernel_vec<A, F><<<dim3(unsigned(tasks)), kThreads, 0, s>>>(f, D, nchunks, tasks, Work::partial<A>(ws));
  else
    chunk_kernel<A, F><<<dim3(unsigned(tasks)), kThreads, 0, s>>>(f, D, nchunks, tasks, Work::partial<A>(ws));
  check(cudaGetLastError(), "chunk kernel launch");
  return nchunks;
}

#define DA_CUDA_DISPATCH(DTYPE, ...)                                           \
  switch (DTYPE) {                                                             \
    case DType::kFloat32: { using T = float; __VA_ARGS__; break; }             \
    case DType::kFloat64: { using T = double; __VA_ARGS__; break; }            \
    case DType::kFloat16: { using T = __half; __VA_ARGS__; break; }            \
    case DType::kBFloat16: { using T = __nv_bfloat16; __VA_ARGS__; break; }    \
  }

// The reduced output of a forward pass (rows times 1/D or 1; masked: see masked_rows_epilogue).
template <class A> void reduce_rows(bool masked, int reduction, int64_t B, int64_t D, int64_t nchunks, void* ws,
                                    void* out, cudaStream_t s) {
  if (masked)
    masked_rows_epilogue<A><<<1, kEpiThreads, 0, s>>>(Work::partial<A>(ws), B, nchunks, Work::rows<A>(ws, B * nchunks),
                                                      reduction, static_cast<A*>(out));
  else
    scale_rows_epilogue<A><<<1, kEpiThreads, 0, s>>>(Work::partial<A>(ws), B, nchunks, Work::rows<A>(ws, B * nchunks),
                                                     reduction_scale<A>(reduction, D), static_cast<A*>(out));
}

template <class T> void logprob_impl(const LogprobArgs& a, void* ws, cudaStream_t s) {
  using A = typename AccOf<T>::type;
  const bool g = logprob_generic(a), m = has_mask(a);
  const int64_t nchunks =
      m ? (g ? launch_chunks<A>(make_logprob_forward<T, true, true>(a), a.B, a.D, ws, s)
             : launch_chunks<A>(make_logprob_forward<T, false, true>(a), a.B, a.D, ws, s))
        : (g ? launch_chunks<A>(make_logprob_forward<T, true>(a), a.B, a.D, ws, s)
             : launch_chunks<A>(make_logprob_forward<T, false>(a), a.B, a.D, ws, s));
  reduce_rows<A>(m, a.reduction, a.B, a.D, nchunks, ws, a.out, s);
  check(cudaGetLastError(), "logprob epilogue");
}

template <class T> void logprob_bwd_impl(const LogprobBwdArgs& a, void* ws, cudaStream_t s) {
  using A = typename AccOf<T>::type;
  const bool want_std = a.gstd != nullptr, g = logprob_generic(a);
  const int64_t nchunks =
      has_mask(a) ? (g ? launch_chunks<A>(make_logprob_backward<T, true, true>(a), a.B, a.D, ws, s)
                       : launch_chunks<A>(make_logprob_backward<T, false, true>(a), a.B, a.D, ws, s))
                  : (g ? launch_chunks<A>(make_logprob_backward<T, true>(a), a.B, a.D, ws, s)
                       : launch_chunks<A>(make_logprob_backward<T, false>(a), a.B, a.D, ws, s));
  if (want_std && a.std.layout != kFull) {
    std_grad_epilogue<A><<<1, kEpiThreads, 0, s>>>(Work::partial<A>(ws), a.B, nchunks, Work::rows<A>(ws, a.B * nchunks),
                                                   a.std.layout, static_cast<A*>(a.gstd), kFull, nullptr);
    check(cudaGetLastError(), "logprob backward epilogue");
  }
}

template <class T> void kl_impl(const KlArgs& a, void* ws, cudaStream_t s) {
  using A = typename AccOf<T>::type;
  const bool g = kl_generic(a), m = has_mask(a);
  const int64_t nchunks = m ? (g ? launch_chunks<A>(make_kl_forward<T, true, true>(a), a.B, a.D, ws, s)
                                 : launch_chunks<A>(make_kl_forward<T, false, true>(a), a.B, a.D, ws, s))
                            : (g ? launch_chunks<A>(make_kl_forward<T, true>(a), a.B, a.D, ws, s)
                                 : launch_chunks<A>(make_kl_forward<T, false>(a), a.B, a.D, ws, s));
  reduce_rows<A>(m, a.reduction, a.B, a.D, nchunks, ws, a.out, s);
  check(cudaGetLastError(), "kl epilogue");
}

template <class T> void kl_bwd_impl(const KlBwdArgs& a, void* ws, cudaStream_t s) {
  using A = typename AccOf<T>::type;
  const bool same = a.s2.p == nullptr, g = kl_generic(a);
  const bool w1 = a.gs1 != nullptr, w2 = a.gs2 != nullptr && !same;
  const int64_t nchunks = has_mask(a) ? (g ? launch_chunks<A>(make_kl_backward<T, true, true>(a), a.B, a.D, ws, s)
                                           : launch_chunks<A>(make_kl_backward<T, false, true>(a), a.B, a.D, ws, s))
                                      : (g ? launch_chunks<A>(make_kl_backward<T, true>(a), a.B, a.D, ws, s)
                                           : launch_chunks<A>(make_kl_backward<T, false>(a), a.B, a.D, ws, s));
  const bool r1 = w1 && a.s1.layout != kFull, r2 = w2 && a.s2.layout != kFull;
  if (r1 || r2) {
    std_grad_epilogue<A><<<1, kEpiThreads, 0, s>>>(Work::partial<A>(ws), a.B, nchunks, Work::rows<A>(ws, a.B * nchunks),
                                                   a.s1.layout, r1 ? static_cast<A*>(a.gs1) : nullptr, a.s2.layout,
                                                   r2 ? static_cast<A*>(a.gs2) : nullptr);
    check(cudaGetLastError(), "kl backward epilogue");
  }
}

template <class T> void dpo_impl(const DpoArgs& a, void* ws, cudaStream_t s) {
  using A = typename AccOf<T>::type;
  const bool m = has_mask(a);
  const int64_t nchunks = m ? launch_chunks<A>(make_sq_err<T, true>(a), a.B, a.D, ws, s)
                            : launch_chunks<A>(make_sq_err<T>(a), a.B, a.D, ws, s);
  dpo_epilogue<A><<<1, kEpiThreads, 0, s>>>(Work::partial<A>(ws), a.B, nchunks, Work::rows<A>(ws, a.B * nchunks),
                                            A(1) / A(a.D), A(a.beta), a.loss_type, a.reduction,
                                            static_cast<A*>(a.loss), static_cast<A*>(a.margin), m);
  check(cudaGetLastError(), "dpo epilogue");
}

template <class T> void dpo_bwd_impl(const DpoBwdArgs& a, void* ws, cudaStream_t s) {
  using A = typename AccOf<T>::type;
  if (has_mask(a)) launch_chunks<A>(make_functor<T, true>(a), a.B, a.D, ws, s);
  else launch_chunks<A>(make_functor<T>(a), a.B, a.D, ws, s);
}

template <class T> void kto_impl(const KtoArgs& a, void* ws, cudaStream_t s) {
  using A = typename AccOf<T>::type;
  const bool m = has_mask(a);
  const int64_t nchunks = m ? launch_chunks<A>(make_sq_err<T, true>(a), a.B, a.D, ws, s)
                            : launch_chunks<A>(make_sq_err<T>(a), a.B, a.D, ws, s);
  kto_epilogue<A><<<1, kEpiThreads, 0, s>>>(Work::partial<A>(ws), a.B, nchunks, Work::rows<A>(ws, a.B * nchunks),
                                            A(1) / A(a.D), a.desirable, A(a.beta), A(a.lambda_d), A(a.lambda_u),
                                            static_cast<const A*>(a.kl_ref), static_cast<A*>(a.loss),
                                            static_cast<A*>(a.z), static_cast<A*>(a.g), m);
  check(cudaGetLastError(), "kto epilogue");
}

template <class T> void kto_bwd_impl(const KtoBwdArgs& a, void* ws, cudaStream_t s) {
  using A = typename AccOf<T>::type;
  if (has_mask(a)) launch_chunks<A>(make_functor<T, true>(a), a.B, a.D, ws, s);
  else launch_chunks<A>(make_functor<T>(a), a.B, a.D, ws, s);
}

template <class T> void step_impl(const StepArgs& a, void* ws, cudaStream_t s) {
  using A = typename AccOf<T>::type;
  const bool m = has_mask(a), scoring = step_scoring(a);
  const int64_t nchunks = m ? (scoring ? launch_chunks<A>(make_step_forward<T, true, true>(a), a.B, a.D, ws, s)
                                       : launch_chunks<A>(make_step_forward<T, false, true>(a), a.B, a.D, ws, s))
                            : (scoring ? launch_chunks<A>(make_step_forward<T, true>(a), a.B, a.D, ws, s)
                                       : launch_chunks<A>(make_step_forward<T, false>(a), a.B, a.D, ws, s));
  step_epilogue<A><<<1, kEpiThreads, 0, s>>>(Work::partial<A>(ws), a.B, nchunks, Work::rows<A>(ws, a.B * nchunks),
                                             a.mode, static_cast<const A*>(a.p0), static_cast<const A*>(a.p1),
                                             a.per_sample, A(a.param), A(1) / A(a.D), static_cast<A*>(a.log_prob),
                                             static_cast<A*>(a.std_out), m);
  check(cudaGetLastError(), "step epilogue");
}

template <class T> void step_bwd_impl(const StepBwdArgs& a, void* ws, cudaStream_t s) {
  using A = typename AccOf<T>::type;
  // a drawn step's log-prob has no gradient, so only the scoring pass reads the mask
  if (step_scoring(a) && has_mask(a)) launch_chunks<A>(make_step_backward<T, true, true>(a), a.B, a.D, ws, s);
  else if (step_scoring(a)) launch_chunks<A>(make_step_backward<T, true>(a), a.B, a.D, ws, s);
  else launch_chunks<A>(make_step_backward<T, false>(a), a.B, a.D, ws, s);
}

}  // namespace

size_t workspace_bytes(DType dtype, int64_t B, int64_t D) {
  const size_t acc = dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
  const int64_t nchunks = num_chunks(D, int64_t(kThreads) * kMinItems);  // the most chunks any functor splits D into
  return acc * (4 * size_t(B * nchunks) + 4 * size_t(B));
}

#define DA_DEFINE(NAME, ARGS, IMPL)                                              \
  void NAME(const ARGS& a, void* ws, void* stream) {                             \
    DA_CUDA_DISPATCH(a.dtype, IMPL<T>(a, ws, static_cast<cudaStream_t>(stream))) \
  }
DA_DEFINE(gaussian_logprob, LogprobArgs, logprob_impl)
DA_DEFINE(gaussian_logprob_backward, LogprobBwdArgs, logprob_bwd_impl)
DA_DEFINE(gaussian_kl, KlArgs, kl_impl)
DA_DEFINE(gaussian_kl_backward, KlBwdArgs, kl_bwd_impl)
DA_DEFINE(diffusion_dpo_loss, DpoArgs, dpo_impl)
DA_DEFINE(diffusion_dpo_loss_backward, DpoBwdArgs, dpo_bwd_impl)
DA_DEFINE(diffusion_kto_loss, KtoArgs, kto_impl)
DA_DEFINE(diffusion_kto_loss_backward, KtoBwdArgs, kto_bwd_impl)
DA_DEFINE(gaussian_step, StepArgs, step_impl)
DA_DEFINE(gaussian_step_backward, StepBwdArgs, step_bwd_impl)
#undef DA_DEFINE

}  // namespace cuda
}  // namespace diffalign
