// CPU backend: OpenMP loops over (row, chunk) tasks that call the shared functors of math.h.
// Partial sums are combined in a fixed order, so results do not depend on the thread count.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "diffalign/functors.h"

namespace diffalign {
namespace cpu {
namespace {

// The element loops are compiled twice, for AVX2 and for the baseline x86-64 (SSE2), and picked at load
// time by the CPU (GCC function multiversioning): a source build for the build machine's -march would
// not run on an older cluster node, and on SSE2 alone the 16-bit conversions cost up to 3x. No "fma" in
// the target: both versions do the same float operations in the same order, so they give the same bits
// (the per-row log / exp come from libm, which picks its own variant by CPU).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define DA_CPU_CLONES __attribute__((target_clones("avx2", "default"), noinline))
#else
#define DA_CPU_CLONES
#endif

constexpr int64_t kChunk = 1 << 14;  // elements per task: big enough to amortise, small to balance
constexpr int kLanes = 16;          // partial sums per accumulator (run_range)

template <class A> A sum_lanes(const A (&lane)[kLanes]) {
  A s = 0;
  for (int l = 0; l < kLanes; ++l) s += lane[l];
  return s;
}

// Per-range sums of a functor's NOUT accumulators (at most three: a masked pair loss sums its two
// squared errors and the mask).
template <class A> using Sums = std::array<A, 3>;

// Runs f over elements [i0, i1) of row b; returns the sums of its NOUT (at most three) accumulators.
// Each accumulator is kept as kLanes partial sums, element idx going to lane (idx - i0) % kLanes, and
// the lanes are added in a fixed order, so the result depends on neither the thread count nor the
// machine. One running sum per accumulator was a chain of dependent adds (one add latency, ~4 cycles,
// per element); `omp simd reduction` did not help: GCC privatises the functor's accumulator array per
// simd lane and then leaves the loop scalar. This plain lane loop GCC vectorises. (What else keeps a
// loop here scalar: a per-element branch on a runtime flag or on a nullable pointer. So the functors
// take such choices as template parameters: G for a full std layout, S for scoring a step.)
// The row is copied here (as in run_segments): read through the reference, GCC reloaded its fields per
// lane group (the float32 log-prob / KL backward took 1.25x the time, the steps up to 1.14x). The functor is
// not: a copy of it made the float32 log-prob / KL forwards 6x slower under the extension's -fwrapv.
template <class A, class F>
DA_CPU_CLONES Sums<A> run_range(const F& f, const typename F::Row& row_in, int64_t b, int64_t i0, int64_t i1) {
  static_assert(F::NOUT <= 3, "run_rows sums at most three accumulators");
  const typename F::Row row = row_in;
  if constexpr (F::NOUT == 0) {  // element-wise only: `omp simd` vectorises this one
    A none[1] = {A(0)};
#pragma omp simd
    for (int64_t idx = i0; idx < i1; ++idx) elem(f, row, b, idx, none);
    return {A(0), A(0), A(0)};
  } else if constexpr (F::NOUT == 3) {  // the masked pair losses: the same lane scheme, three sums
    A lane0[kLanes] = {}, lane1[kLanes] = {}, lane2[kLanes] = {};
    int64_t idx = i0;
    for (; idx + kLanes <= i1; idx += kLanes)
#pragma GCC ivdep
      for (int l = 0; l < kLanes; ++l) {
        A one[3] = {A(0), A(0), A(0)};
        elem(f, row, b, idx + l, one);
        lane0[l] += one[0];
        lane1[l] += one[1];
        lane2[l] += one[2];
      }
    for (int l = 0; idx < i1; ++idx, ++l) {
      A one[3] = {A(0), A(0), A(0)};
      elem(f, row, b, idx, one);
      lane0[l] += one[0];
      lane1[l] += one[1];
      lane2[l] += one[2];
    }
    return {sum_lanes(lane0), sum_lanes(lane1), sum_lanes(lane2)};
  } else {
    A lane0[kLanes] = {}, lane1[kLanes] = {};
    int64_t idx = i0;
    // ivdep: outputs never alias inputs (the binding allocates them); without it GCC guarded the lane
    // loop with a run-time alias check per lane group, and the 16-bit loops stayed scalar
    for (; idx + kLanes <= i1; idx += kLanes)
#pragma GCC ivdep
      for (int l = 0; l < kLanes; ++l) {
        A one[2] = {A(0), A(0)};
        elem(f, row, b, idx + l, one);
        lane0[l] += one[0];
        lane1[l] += one[1];
      }
    for (int l = 0; idx < i1; ++idx, ++l) {
      A one[2] = {A(0), A(0)};
      elem(f, row, b, idx, one);
      lane0[l] += one[0];
      lane1[l] += one[1];
    }
    return {sum_lanes(lane0), sum_lanes(lane1), A(0)};
  }
}

// How a masked functor's mask is stored (kernels.h, MaskKind); run_rows reads kMaskElem as the
// functor's last input, the compact forms through run_range_masked.
struct MaskRead { const void* p = nullptr; int kind = kMaskElem; int64_t inner = 1; };
template <class Args> MaskRead mask_read(const Args& a) { return {a.mask, a.mask_kind, a.mask_inner}; }

// One element of a masked functor (its mask is the last input) with the mask value m given by the caller.
template <class F, class A>
__attribute__((always_inline)) inline void elem_with_mask(const F& f, const typename F::Row& r, int64_t b, int64_t idx, A m, A* acc) {
  A v[F::NI];
  A o[F::NO > 0 ? F::NO : 1];
  load_all(f, idx, v, std::make_integer_sequence<int, F::NI - 1>{});
  v[F::NI - 1] = m;
  f.compute(r, b, idx, v, o, acc);
  store_all(f, idx, o, std::make_integer_sequence<int, F::NO>{});
}

// The lane loop of run_range over [j0, j1) for one(idx, acc): element j0 + j goes to lane j % kLanes.
template <class A, int N, class One>
inline void lane_loop(A (&l0)[kLanes], A (&l1)[kLanes], A (&l2)[kLanes], int64_t j0, int64_t j1, const One& one) {
  if constexpr (N == 0) {
    A none[1] = {A(0)};
#pragma omp simd
    for (int64_t idx = j0; idx < j1; ++idx) one(idx, none);
  } else {
    // local copies of the lanes: the caller's arrays live across its outer loop, and GCC kept them in
    // memory there (a store-to-load round trip per lane group, 3x slower)
    A a0[kLanes], a1[kLanes], a2[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      a0[l] = l0[l];
      a1[l] = l1[l];
      a2[l] = l2[l];
    }
    int64_t idx = j0;
    for (; idx + kLanes <= j1; idx += kLanes)
#pragma GCC ivdep
      for (int l = 0; l < kLanes; ++l) {
        A acc[3] = {A(0), A(0), A(0)};
        one(idx + l, acc);
        a0[l] += acc[0];
        if constexpr (N >= 2) a1[l] += acc[1];
        if constexpr (N >= 3) a2[l] += acc[2];
      }
    for (int l = 0; idx < j1; ++idx, ++l) {
      A acc[3] = {A(0), A(0), A(0)};
      one(idx, acc);
      a0[l] += acc[0];
      if constexpr (N >= 2) a1[l] += acc[1];
      if constexpr (N >= 3) a2[l] += acc[2];
    }
    for (int l = 0; l < kLanes; ++l) {
      l0[l] = a0[l];
      l1[l] = a1[l];
      l2[l] = a2[l];
    }
  }
}

// A segment mask whose runs do not hold whole lane groups, run by run (own function: lanes whose address
// is passed on stay in memory, and run_range_masked's must not)
template <class A, class F>
DA_CPU_CLONES Sums<A> run_runs(const F& f, const typename F::Row& row, int64_t b, int64_t i0, int64_t i1,
                               const typename F::Elem* ms, int64_t inner) {
  constexpr int N = F::NOUT;
  A l0[kLanes] = {}, l1[kLanes] = {}, l2[kLanes] = {};
  for (int64_t s = i0 / inner, j0 = i0; j0 < i1; ++s) {
    const int64_t j1 = std::min(i1, (s + 1) * inner);
    const A m = to_acc<A>(ms[s]);
    lane_loop<A, N>(l0, l1, l2, j0, j1, [&](int64_t idx, A* acc) { elem_with_mask(f, row, b, idx, m, acc); });
    j0 = j1;
  }
  return {N >= 1 ? sum_lanes(l0) : A(0), N >= 2 ? sum_lanes(l1) : A(0), N >= 3 ? sum_lanes(l2) : A(0)};
}

// Whether a masked functor is a forward pass (math.h, "Masks": kMaskedForward): its 0/1 runs then go
// through the same code (see run_segments). A functor without the flag is still right: its runs of
// weight 0 and 1 take the branches that a backward takes. (KnownPresence<F> inherits F's flag.)
template <class F, class = void> struct MaskedForward : std::false_type {};
template <class F>
struct MaskedForward<F, std::void_t<decltype(F::kMaskedForward)>> : std::bool_constant<F::kMaskedForward> {};
// A backward flagged here would lose its per-row sums (one fewer lane, the mask's count added).
static_assert(MaskedForward<LogprobFwd<float, float, false, true>>::value &&
                  MaskedForward<KlFwd<float, float, true, true>>::value &&
                  MaskedForward<PairSqErr<bf16_t, float, true>>::value &&
                  MaskedForward<KnownPresence<StepFwd<float, float, true, true>, 0u, 0u>>::value,
              "the masked forwards are flagged kMaskedForward");
static_assert(!MaskedForward<LogprobFwd<float, float, false>>::value &&
                  !MaskedForward<LogprobBwd<float, float, false, true>>::value &&
                  !MaskedForward<KlBwd<float, float, false, true>>::value &&
                  !MaskedForward<DpoBwd<float, float, true>>::value &&
                  !MaskedForward<KtoBwd<float, float, true>>::value &&
                  !MaskedForward<KnownPresence<StepBwd<float, float, true, true>, 1u, 1u>>::value,
              "unmasked functors and backwards are not");

// The bits of an accumulator type; keep_bits(v, k): v where k is all ones, +0.0 where k is 0.
template <class A> using BitsOf = typename std::conditional<sizeof(A) == 8, uint64_t, uint32_t>::type;
template <class A> inline A keep_bits(A v, BitsOf<A> k) {
  BitsOf<A> u;
  std::memcpy(&u, &v, sizeof(A));
  u &= k;
  std::memcpy(&v, &u, sizeof(A));
  return v;
}

// The lane groups [idx, end) of one run of a masked functor, every element with the same weight: W = 1
// or 0 a compile-time weight, W = -1 the run-time weight m. With a constant weight the functor's
// weighting folds away (1 * v is v; the zeroing bit-and keeps all bits or none), so a run of ones is
// the unmasked functor's element work with the masked row factor, and a run of zeros only writes the
// element outputs (0 for a gradient). NL: how many accumulators go to the lanes (a run of zeros adds
// none: each would add +0.0, which leaves a lane as it is, since a lane starts at +0.0 and a sum is
// -0.0 only when both terms are). keep: each of those NL sums is bit-and-ed with it (all ones: kept;
// 0: +0.0; the forwards' 0/1 runs, without a branch per run). The element's sums start at -0.0, not
// +0.0: -0.0 + v is v for every v, so GCC drops that add (it must keep +0.0 + v, which is +0.0 for
// v = -0.0), and a lane gets the same bits either way. always_inline: called from a target_clones loop,
// an outlined copy would be the baseline (SSE2) code.
template <int W, int NL, class A, class F>
__attribute__((always_inline)) inline void run_groups(const F& f, const typename F::Row& row, int64_t b, int64_t idx,
                                                      int64_t end, A m, BitsOf<A> keep, A (&l0)[kLanes],
                                                      A (&l1)[kLanes], A (&l2)[kLanes]) {
  for (; idx < end; idx += kLanes)
#pragma GCC ivdep
    for (int l = 0; l < kLanes; ++l) {
      A one[3] = {A(-0.0), A(-0.0), A(-0.0)};
      elem_with_mask(f, row, b, idx + l, W < 0 ? m : A(W), one);
      if constexpr (NL >= 1) l0[l] += keep_bits(one[0], keep);
      if constexpr (NL >= 2) l1[l] += keep_bits(one[1], keep);
      if constexpr (NL >= 3) l2[l] += keep_bits(one[2], keep);
    }
}

// run_range for a masked functor with a segment mask (kMaskSegments: one weight per run of `inner`
// elements) whose runs hold whole lane groups (the ranges start at multiples of the lane count). Run by
// run, by its weight: a forward's 0/1 run is the unmasked element work, its sums kept or zeroed by a
// bit-and and the mask's sum counted per run (an integer); no branch on the weight, so a random 0/1
// mask costs no mispredictions. A backward's run of ones or zeros goes through run_groups' constant-
// weight code. Any other weight: the weighted code (the mask as the functor's last input). Element idx
// goes to lane (idx - i0) % kLanes as in run_range, so the same 0/1 weights of x's shape give the same
// bits. The functor and row are copied here (their fields then live in registers, not reloaded per
// group), and the lanes are local, touched only by the inlined run_groups: GCC keeps them in registers.
template <class A, class F>
DA_CPU_CLONES Sums<A> run_segments(const F& f_in, const typename F::Row& row_in, int64_t b, int64_t i0, int64_t i1,
                                   const typename F::Elem* ms, int64_t inner) {
  constexpr int N = F::NOUT;
  constexpr BitsOf<A> kAll = ~BitsOf<A>(0);
  const F f = f_in;
  const typename F::Row row = row_in;
  int64_t ones = 0;  // a forward's elements of weight 1
  A lane0[kLanes] = {}, lane1[kLanes] = {}, lane2[kLanes] = {};
  for (int64_t seg = i0 / inner, idx = i0; idx < i1; ++seg) {
    const int64_t end = std::min(i1, (seg + 1) * inner);
    const A m = to_acc<A>(ms[seg]);
    if constexpr (MaskedForward<F>::value) {
      if (m == A(0) || m == A(1)) {
        const BitsOf<A> keep = BitsOf<A>(0) - BitsOf<A>(m == A(1));
        ones += int64_t(keep & 1u) * (end - idx);
        run_groups<1, N - 1>(f, row, b, idx, end, m, keep, lane0, lane1, lane2);
      } else {
        run_groups<-1, N>(f, row, b, idx, end, m, kAll, lane0, lane1, lane2);
      }
    } else {
      if (m == A(1)) run_groups<1, N>(f, row, b, idx, end, m, kAll, lane0, lane1, lane2);
      else if (m == A(0)) run_groups<0, 0>(f, row, b, idx, end, m, kAll, lane0, lane1, lane2);
      else run_groups<-1, N>(f, row, b, idx, end, m, kAll, lane0, lane1, lane2);
    }
    idx = end;
  }
  Sums<A> s = {N >= 1 ? sum_lanes(lane0) : A(0), N >= 2 ? sum_lanes(lane1) : A(0), N >= 3 ? sum_lanes(lane2) : A(0)};
  if constexpr (MaskedForward<F>::value) s[N - 1] += A(ones);  // an integer: exact, as the lanes' 0/1 sums are
  return s;
}

// run_range for a masked functor with a bool mask of x's shape read in place (kMaskBytes), one byte
// per element. Written as run_range is (lanes local to this function, one lane group per step: GCC then
// keeps the lanes in registers and vectorises the group), with the group's 16 mask values converted
// first, a block at a time. Element idx goes to lane (idx - i0) % kLanes as in run_range.
template <class A, class F>
DA_CPU_CLONES Sums<A> run_bytes(const F& f, const typename F::Row& row, int64_t b, int64_t i0, int64_t i1,
                                const uint8_t* m8) {
  constexpr int N = F::NOUT;
  // Bytes are converted to A a block at a time in a loop of their own (vpmovzxbd + vcvtdq2ps): inside
  // the element loop GCC converted them one byte at a time (a load and a cvtsi2ss each).
  constexpr int64_t kBlock = 32 * kLanes;
  alignas(64) A buf[kBlock];
  A lane0[kLanes] = {}, lane1[kLanes] = {}, lane2[kLanes] = {};
  int64_t idx = i0;
  for (int64_t j0 = i0; j0 < i1; j0 += kBlock) {
    const int64_t j1 = std::min(i1, j0 + kBlock);
    for (int64_t k = 0; k < j1 - j0; ++k) buf[k] = A(m8[j0 + k]);
    for (; idx + kLanes <= j1; idx += kLanes) {
      A mv[kLanes];
      for (int l = 0; l < kLanes; ++l) mv[l] = buf[idx - j0 + l];
#pragma GCC ivdep
      for (int l = 0; l < kLanes; ++l) {
        A one[3] = {A(0), A(0), A(0)};
        elem_with_mask(f, row, b, idx + l, mv[l], one);
        if constexpr (N >= 1) lane0[l] += one[0];
        if constexpr (N >= 2) lane1[l] += one[1];
        if constexpr (N >= 3) lane2[l] += one[2];
      }
    }
  }
  // the last partial group in its own sums: a lane picked by a run-time index kept every lane in
  // memory, a store and a load per group
  A tail[3] = {A(0), A(0), A(0)};
  for (; idx < i1; ++idx) elem_with_mask(f, row, b, idx, A(m8[idx]), tail);
  return {N >= 1 ? sum_lanes(lane0) + tail[0] : A(0), N >= 2 ? sum_lanes(lane1) + tail[1] : A(0),
          N >= 3 ? sum_lanes(lane2) + tail[2] : A(0)};
}

// run_range for a masked functor whose mask is compact (K): bytes, or a segment mask by its run length
// (runs that do not hold whole lane groups go run by run)
template <int K, class A, class F>
Sums<A> run_range_masked(const F& f, const typename F::Row& row, int64_t b, int64_t i0, int64_t i1,
                         const void* mp, int64_t inner) {
  static_assert(K == kMaskBytes || K == kMaskSegments, "compact mask kinds: bytes, segments");
  if constexpr (K == kMaskBytes) {
    return run_bytes<A>(f, row, b, i0, i1, static_cast<const uint8_t*>(mp));
  } else {
    const auto* ms = static_cast<const typename F::Elem*>(mp);
    if (inner % kLanes != 0) return run_runs<A>(f, row, b, i0, i1, ms, inner);
    return run_segments<A>(f, row, b, i0, i1, ms, inner);
  }
}

// run_range for mask kind K (kMaskElem: the mask, if any, is an ordinary input of f)
template <int K, class A, class F>
Sums<A> run_any(const F& f, const typename F::Row& row, int64_t b, int64_t i0, int64_t i1, const MaskRead& mr) {
  if constexpr (K == kMaskElem) return run_range<A>(f, row, b, i0, i1);
  else return run_range_masked<K, A>(f, row, b, i0, i1, mr.p, mr.inner);
}

// Bit i: optional input i; bit NI + k: optional output k. presence_mask: those present in f.
template <class F> constexpr unsigned kOptionalMask = F::kOptIn | (F::kOptOut << F::NI);
template <class F> unsigned presence_mask(const F& f) {
  unsigned m = 0u;
  for (int i = 0; i < F::NI; ++i)
    if (((F::kOptIn >> i) & 1u) && f.in(i)) m |= 1u << i;
  for (int k = 0; k < F::NO; ++k)
    if (((F::kOptOut >> k) & 1u) && f.out(k)) m |= 1u << (F::NI + k);
  return m;
}

// Runs f over a range with the presence of its optional data fixed at compile time (one instantiation
// per combination; M counts down through the combinations' masks): GCC unswitches a per-element null
// test only for small loop bodies, and the 16-bit loops stayed scalar.
template <int K, class A, class F, unsigned M>
Sums<A> run_known(const F& f, const typename F::Row& row, int64_t b, int64_t i0, int64_t i1, unsigned mask,
                  const MaskRead& mr) {
  if constexpr ((M & ~kOptionalMask<F>) == 0u) {
    if (mask == M)
      return run_any<K, A>(KnownPresence<F, M & ((1u << F::NI) - 1u), (M >> F::NI)>(f), row, b, i0, i1, mr);
  }
  if constexpr (M == 0u) return run_any<K, A>(f, row, b, i0, i1, mr);  // not reached: mask is a valid mask
  else return run_known<K, A, F, M - 1u>(f, row, b, i0, i1, mask, mr);
}

template <int K, class A, class F>
Sums<A> run_range_dispatch(const F& f, const typename F::Row& row, int64_t b, int64_t i0, int64_t i1,
                           const MaskRead& mr) {
  if constexpr (kOptionalMask<F> == 0u) return run_any<K, A>(f, row, b, i0, i1, mr);
  else return run_known<K, A, F, kOptionalMask<F>>(f, row, b, i0, i1, presence_mask(f), mr);
}

// Runs f over every element; returns the per-row sums of its NOUT accumulators as sums[k * B + b].
// K: how a masked f's mask is stored (kMaskElem for an unmasked f).
template <class A, class F, int K = kMaskElem>
std::vector<A> run_rows(const F& f, int64_t B, int64_t D, const MaskRead& mr = {}) {
  constexpr int N = F::NOUT;
  const int64_t nchunks = std::max<int64_t>(1, (D + kChunk - 1) / kChunk);
  const int64_t tasks = B * nchunks;
  std::vector<A> partial(size_t(N > 0 ? N : 1) * tasks, A(0));
#pragma omp parallel for schedule(static) if (B * D > 4 * kChunk)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t b = t / nchunks, c = t % nchunks;
    const int64_t i0 = b * D + c * kChunk, i1 = b * D + std::min(D, (c + 1) * kChunk);
    const Sums<A> s = run_range_dispatch<K, A>(f, f.row(b), b, i0, i1, mr);
    for (int k = 0; k < N; ++k) partial[size_t(k) * tasks + t] = s[k];
  }
  std::vector<A> sums(size_t(N > 0 ? N : 1) * B, A(0));
  for (int k = 0; k < N; ++k)
    for (int64_t b = 0; b < B; ++b) {
      A s = 0;
      for (int64_t c = 0; c < nchunks; ++c) s += partial[size_t(k) * tasks + b * nchunks + c];
      sums[size_t(k) * B + b] = s;
    }
  return sums;
}

// run_rows for a masked functor, by how its mask is stored (one instantiation per kind: a kind is a
// different loop; the run length of a segment mask is a run-time count)
template <class A, class F>
std::vector<A> run_rows_masked(const F& f, int64_t B, int64_t D, const MaskRead& mr) {
  switch (mr.kind) {
    case kMaskBytes: return run_rows<A, F, kMaskBytes>(f, B, D, mr);
    case kMaskSegments: return run_rows<A, F, kMaskSegments>(f, B, D, mr);
    default: return run_rows<A, F, kMaskElem>(f, B, D, mr);
  }
}

// Writes per-row sums into a std gradient of scalar or per-row layout (full layouts were written
// element-wise by the functor).
template <class A> void store_std_grad(const A* row_sums, int64_t B, int layout, void* dest) {
  if (!dest || layout == kFull) return;
  A* d = static_cast<A*>(dest);
  if (layout == kPerRow) { std::copy(row_sums, row_sums + B, d); return; }
  A s = 0;
  for (int64_t b = 0; b < B; ++b) s += row_sums[b];
  d[0] = s;
}

#define DA_CPU_DISPATCH(DTYPE, ...)                                   \
  switch (DTYPE) {                                                    \
    case DType::kFloat32: { using T = float; __VA_ARGS__; break; }    \
    case DType::kFloat64: { using T = double; __VA_ARGS__; break; }   \
    case DType::kFloat16: { using T = half_t; __VA_ARGS__; break; }   \
    case DType::kBFloat16: { using T = bf16_t; __VA_ARGS__; break; }  \
  }

// The reduced output of a forward pass: sums[b] * (1/D or 1); masked, sums[b] is sum m*l and
// sums[B + b] the row's mask sum, and "mean" divides by it (0 for an all-zero row).
template <class A> void store_reduced(const std::vector<A>& sums, bool masked, int reduction, int64_t B, int64_t D,
                                      void* dest) {
  A* out = static_cast<A*>(dest);
  if (masked) {
    for (int64_t b = 0; b < B; ++b) out[b] = reduction == kMean ? masked_mean(sums[b], sums[B + b]) : sums[b];
    return;
  }
  const A scale = reduction_scale<A>(reduction, D);
  for (int64_t b = 0; b < B; ++b) out[b] = sums[b] * scale;
}

template <class T> void logprob_impl(const LogprobArgs& a) {
  using A = typename AccOf<T>::type;
  const bool g = logprob_generic(a), m = has_mask(a);
  auto sums = m ? (g ? run_rows_masked<A>(make_logprob_forward<T, true, true>(a), a.B, a.D, mask_read(a))
                     : run_rows_masked<A>(make_logprob_forward<T, false, true>(a), a.B, a.D, mask_read(a)))
                : (g ? run_rows<A>(make_logprob_forward<T, true>(a), a.B, a.D)
                     : run_rows<A>(make_logprob_forward<T, false>(a), a.B, a.D));
  store_reduced<A>(sums, m, a.reduction, a.B, a.D, a.out);
}

template <class T> void logprob_bwd_impl(const LogprobBwdArgs& a) {
  using A = typename AccOf<T>::type;
  const bool g = logprob_generic(a);
  auto sums = has_mask(a) ? (g ? run_rows_masked<A>(make_logprob_backward<T, true, true>(a), a.B, a.D, mask_read(a))
                               : run_rows_masked<A>(make_logprob_backward<T, false, true>(a), a.B, a.D, mask_read(a)))
                          : (g ? run_rows<A>(make_logprob_backward<T, true>(a), a.B, a.D)
                               : run_rows<A>(make_logprob_backward<T, false>(a), a.B, a.D));
  store_std_grad<A>(sums.data(), a.B, a.std.layout, a.gstd);
}

template <class T> void kl_impl(const KlArgs& a) {
  using A = typename AccOf<T>::type;
  const bool g = kl_generic(a), m = has_mask(a);
  auto sums = m ? (g ? run_rows_masked<A>(make_kl_forward<T, true, true>(a), a.B, a.D, mask_read(a))
                     : run_rows_masked<A>(make_kl_forward<T, false, true>(a), a.B, a.D, mask_read(a)))
                : (g ? run_rows<A>(make_kl_forward<T, true>(a), a.B, a.D)
                     : run_rows<A>(make_kl_forward<T, false>(a), a.B, a.D));
  store_reduced<A>(sums, m, a.reduction, a.B, a.D, a.out);
}

template <class T> void kl_bwd_impl(const KlBwdArgs& a) {
  using A = typename AccOf<T>::type;
  const bool same = a.s2.p == nullptr, g = kl_generic(a);
  auto sums = has_mask(a) ? (g ? run_rows_masked<A>(make_kl_backward<T, true, true>(a), a.B, a.D, mask_read(a))
                               : run_rows_masked<A>(make_kl_backward<T, false, true>(a), a.B, a.D, mask_read(a)))
                          : (g ? run_rows<A>(make_kl_backward<T, true>(a), a.B, a.D)
                               : run_rows<A>(make_kl_backward<T, false>(a), a.B, a.D));
  store_std_grad<A>(sums.data(), a.B, a.s1.layout, a.gs1);
  if (!same) store_std_grad<A>(sums.data() + a.B, a.B, a.s2.layout, a.gs2);
}

// Per-row mean squared errors of model (e[b]) and reference (e[B + b]) from a PairSqErr pass: the sums
// over D, or masked, sum m*err^2 / sum m (0 for an all-zero row).
template <class A> void row_errors(std::vector<A>& sums, bool masked, int64_t B, int64_t D) {
  const A inv_d = A(1) / A(D);
  for (int64_t b = 0; b < B; ++b) {
    const A w = masked ? inv_or_zero(sums[2 * B + b]) : inv_d;
    sums[b] *= w;
    sums[B + b] *= w;
  }
}

template <class T> void dpo_impl(const DpoArgs& a) {
  using A = typename AccOf<T>::type;
  const bool m = has_mask(a);
  auto sums = m ? run_rows_masked<A>(make_sq_err<T, true>(a), a.B, a.D, mask_read(a)) : run_rows<A>(make_sq_err<T>(a), a.B, a.D);
  row_errors(sums, m, a.B, a.D);
  const int64_t P = a.B / 2;
  const A beta = A(a.beta);
  A* loss = static_cast<A*>(a.loss);
  A* margin = static_cast<A*>(a.margin);
  A total = 0;
  for (int64_t p = 0; p < P; ++p) {
    const A* em = sums.data();
    const A* er = sums.data() + a.B;
    A l = dpo_pair<A>(em[p], em[p + P], er[p], er[p + P], beta, a.loss_type, margin + p);
    if (a.reduction == kPairNone) loss[p] = l; else total += l;
  }
  if (a.reduction == kPairMean) loss[0] = total / A(P);
}

template <class T> void dpo_bwd_impl(const DpoBwdArgs& a) {
  using A = typename AccOf<T>::type;
  if (has_mask(a)) run_rows_masked<A>(make_functor<T, true>(a), a.B, a.D, mask_read(a));
  else run_rows<A>(make_functor<T>(a), a.B, a.D);
}

template <class T> void kto_impl(const KtoArgs& a) {
  using A = typename AccOf<T>::type;
  const bool m = has_mask(a);
  auto sums = m ? run_rows_masked<A>(make_sq_err<T, true>(a), a.B, a.D, mask_read(a)) : run_rows<A>(make_sq_err<T>(a), a.B, a.D);
  A* g = static_cast<A*>(a.g);
  A mean_g = 0;
  for (int64_t b = 0; b < a.B; ++b) {
    const A w = m ? inv_or_zero(sums[2 * a.B + b]) : A(1) / A(a.D);
    g[b] = (sums[a.B + b] - sums[b]) * w;  // e_ref - e_model
    mean_g += g[b];
  }
  mean_g /= A(a.B);
  const A z = a.kl_ref ? static_cast<const A*>(a.kl_ref)[0] : (mean_g > A(0) ? mean_g : A(0));
  A total = 0;
  for (int64_t b = 0; b < a.B; ++b)
    total += kto_sample_loss<A>(g[b], z, a.desirable[b], A(a.beta), A(a.lambda_d), A(a.lambda_u));
  static_cast<A*>(a.loss)[0] = total / A(a.B);
  static_cast<A*>(a.z)[0] = z;
}

template <class T> void kto_bwd_impl(const KtoBwdArgs& a) {
  using A = typename AccOf<T>::type;
  if (has_mask(a)) run_rows_masked<A>(make_functor<T, true>(a), a.B, a.D, mask_read(a));
  else run_rows<A>(make_functor<T>(a), a.B, a.D);
}

template <class T> void step_impl(const StepArgs& a) {
  using A = typename AccOf<T>::type;
  const bool m = has_mask(a);
  auto run = [&](const auto& f, auto masked) {  // masked: std::bool_constant
    std::vector<A> sums;
    if constexpr (decltype(masked)::value) sums = run_rows_masked<A>(f, a.B, a.D, mask_read(a));
    else sums = run_rows<A>(f, a.B, a.D);
    A* lp = static_cast<A*>(a.log_prob);
    A* std_out = static_cast<A*>(a.std_out);
    for (int64_t b = 0; b < a.B; ++b) {
      const A s = f.row(b).c.std;
      std_out[b] = s;
      if (m) lp[b] = s > A(0) ? masked_mean(sums[b], sums[a.B + b]) : A(0);
      else lp[b] = s > A(0) ? sums[b] / A(a.D) : A(0);
    }
  };
  const bool scoring = step_scoring(a);
  if (m) {
    if (scoring) run(make_step_forward<T, true, true>(a), std::true_type{});
    else run(make_step_forward<T, false, true>(a), std::true_type{});
  } else {
    if (scoring) run(make_step_forward<T, true>(a), std::false_type{});
    else run(make_step_forward<T, false>(a), std::false_type{});
  }
}

template <class T> void step_bwd_impl(const StepBwdArgs& a) {
  using A = typename AccOf<T>::type;
  // a drawn step's log-prob has no gradient, so only the scoring pass reads the mask
  if (step_scoring(a) && has_mask(a)) run_rows_masked<A>(make_step_backward<T, true, true>(a), a.B, a.D, mask_read(a));
  else if (step_scoring(a)) run_rows<A>(make_step_backward<T, true>(a), a.B, a.D);
  else run_rows<A>(make_step_backward<T, false>(a), a.B, a.D);
}

// Row sums of a weight mask in the lane scheme of run_range.
// A bool mask's row: a count, in integers (a plain widening sum GCC vectorises; exact), in blocks that
// cannot overflow 32 bits.
DA_CPU_CLONES int64_t count_row(const uint8_t* p, int64_t n) {
  int64_t total = 0;
  for (int64_t i0 = 0; i0 < n; i0 += (int64_t(1) << 24)) {
    const int64_t i1 = std::min(n, i0 + (int64_t(1) << 24));
    uint32_t c = 0;
    for (int64_t i = i0; i < i1; ++i) c += p[i];
    total += c;
  }
  return total;
}
template <class V, class A> DA_CPU_CLONES A sum_row(const V* p, int64_t n) {
  A lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] += to_acc<A>(p[i + l]);
  for (int l = 0; i < n; ++i, ++l) lane[l] += to_acc<A>(p[i]);
  return sum_lanes(lane);
}

template <class T> void mask_row_scale_impl(const MaskRowArgs& a) {
  using A = typename AccOf<T>::type;
  const bool seg = a.mask_kind == kMaskSegments;
  const int64_t n = seg ? a.D / a.mask_inner : a.D;  // mask values per row
  const A w = seg ? A(a.mask_inner) : A(1);             // elements each value covers
  A* out = static_cast<A*>(a.out);
#pragma omp parallel for schedule(static) if (a.B * n > 4 * kChunk)
  for (int64_t b = 0; b < a.B; ++b) {
    const A s = a.mask_kind == kMaskBytes ? A(count_row(static_cast<const uint8_t*>(a.mask) + b * n, n))
                                          : sum_row<T, A>(static_cast<const T*>(a.mask) + b * n, n);
    out[b] = inv_or_zero(s * w);
  }
}

}  // namespace

void mask_row_scale(const MaskRowArgs& a) { DA_CPU_DISPATCH(a.dtype, mask_row_scale_impl<T>(a)); }
void gaussian_logprob(const LogprobArgs& a) { DA_CPU_DISPATCH(a.dtype, logprob_impl<T>(a)); }
void gaussian_logprob_backward(const LogprobBwdArgs& a) { DA_CPU_DISPATCH(a.dtype, logprob_bwd_impl<T>(a)); }
void gaussian_kl(const KlArgs& a) { DA_CPU_DISPATCH(a.dtype, kl_impl<T>(a)); }
void gaussian_kl_backward(const KlBwdArgs& a) { DA_CPU_DISPATCH(a.dtype, kl_bwd_impl<T>(a)); }
void diffusion_dpo_loss(const DpoArgs& a) { DA_CPU_DISPATCH(a.dtype, dpo_impl<T>(a)); }
void diffusion_dpo_loss_backward(const DpoBwdArgs& a) { DA_CPU_DISPATCH(a.dtype, dpo_bwd_impl<T>(a)); }
void diffusion_kto_loss(const KtoArgs& a) { DA_CPU_DISPATCH(a.dtype, kto_impl<T>(a)); }
void diffusion_kto_loss_backward(const KtoBwdArgs& a) { DA_CPU_DISPATCH(a.dtype, kto_bwd_impl<T>(a)); }
void gaussian_step(const StepArgs& a) { DA_CPU_DISPATCH(a.dtype, step_impl<T>(a)); }
void gaussian_step_backward(const StepBwdArgs& a) { DA_CPU_DISPATCH(a.dtype, step_bwd_impl<T>(a)); }

}  // namespace cpu
}  // namespace diffalign
