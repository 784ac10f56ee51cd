// C++ unit tests of the CPU kernels against closed forms computed here in double, with no torch.
// Run by ctest (twice: with the default thread count and with OMP_NUM_THREADS=1).
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "diffalign/kernels.h"
#include "diffalign/math.h"

using namespace diffalign;

static int g_failures = 0;
static int g_checks = 0;

#define EXPECT_NEAR(a, b, tol)                                                                           \
  do {                                                                                                   \
    ++g_checks;                                                                                          \
    double _a = (a), _b = (b);                                                                           \
    if (!(std::fabs(_a - _b) <= (tol) * (1.0 + std::fabs(_b)))) {                                        \
      ++g_failures;                                                                                      \
      std::printf("  FAIL %s:%d: %s = %.12g, expected %.12g\n", __FILE__, __LINE__, #a, _a, _b);          \
    }                                                                                                    \
  } while (0)

static std::vector<double> randn(size_t n, unsigned seed, double scale = 1.0, double offset = 0.0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> d(0.0, 1.0);
  std::vector<double> v(n);
  for (auto& x : v) x = offset + scale * d(gen);
  return v;
}
static std::vector<float> to_f(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

static double normal_logpdf(double x, double m, double s) {
  return -0.5 * (x - m) * (x - m) / (s * s) - std::log(s) - 0.5 * std::log(2 * M_PI);
}

static void test_logprob_closed_form() {
  const int64_t B = 3, D = 40000;  // longer than one CPU chunk
  auto x = randn(B * D, 1), m = randn(B * D, 2);
  std::vector<double> s = {0.5, 1.0, 2.0};
  for (int red : {int(kMean), int(kSum)}) {
    std::vector<double> out(B);
    cpu::gaussian_logprob({DType::kFloat64, B, D, x.data(), m.data(), {s.data(), kPerRow}, red, out.data()});
    for (int64_t b = 0; b < B; ++b) {
      double e = 0;
      for (int64_t i = 0; i < D; ++i) e += normal_logpdf(x[b * D + i], m[b * D + i], s[b]);
      if (red == kMean) e /= D;
      EXPECT_NEAR(out[b], e, 1e-12);
    }
  }
  // float32 inputs accumulate in float32 but stay close to the double result
  auto xf = to_f(x), mf = to_f(m);
  std::vector<float> sf = {0.5f, 1.0f, 2.0f}, outf(B);
  cpu::gaussian_logprob({DType::kFloat32, B, D, xf.data(), mf.data(), {sf.data(), kPerRow}, kMean, outf.data()});
  for (int64_t b = 0; b < B; ++b) {
    double e = 0;
    for (int64_t i = 0; i < D; ++i) e += normal_logpdf(xf[b * D + i], mf[b * D + i], sf[b]);
    EXPECT_NEAR(outf[b], e / D, 1e-5);
  }
}

static void test_logprob_gradients_by_finite_differences() {
  const int64_t B = 2, D = 5;
  auto x = randn(B * D, 3), m = randn(B * D, 4);
  std::vector<double> s = {0.7};
  auto f = [&](const std::vector<double>& xx, const std::vector<double>& mm, double ss) {
    std::vector<double> out(B), sv = {ss};
    cpu::gaussian_logprob({DType::kFloat64, B, D, xx.data(), mm.data(), {sv.data(), kScalar}, kSum, out.data()});
    return out[0] + 2 * out[1];  // weights 1, 2 per row
  };
  std::vector<double> grad = {1.0, 2.0}, gx(B * D), gm(B * D), gs(1);
  cpu::gaussian_logprob_backward({DType::kFloat64, B, D, grad.data(), 1, x.data(), m.data(), {s.data(), kScalar}, kSum,
                                  gx.data(), gm.data(), gs.data()});
  const double h = 1e-6;
  for (int64_t i = 0; i < B * D; ++i) {
    auto xp = x, xm = x;
    xp[i] += h; xm[i] -= h;
    EXPECT_NEAR(gx[i], (f(xp, m, s[0]) - f(xm, m, s[0])) / (2 * h), 1e-6);
    EXPECT_NEAR(gm[i], -gx[i], 1e-15);
  }
  EXPECT_NEAR(gs[0], (f(x, m, s[0] + h) - f(x, m, s[0] - h)) / (2 * h), 1e-6);
}

static void test_kl_closed_form() {
  const int64_t B = 2, D = 7;
  auto m1 = randn(B * D, 5), m2 = randn(B * D, 6);
  auto s1 = randn(B * D, 7, 0.1, 1.0), s2 = std::vector<double>{0.8, 1.3};
  std::vector<double> out(B);
  cpu::gaussian_kl({DType::kFloat64, B, D, m1.data(), m2.data(), {s1.data(), kFull}, {s2.data(), kPerRow}, kSum,
                    out.data()});
  for (int64_t b = 0; b < B; ++b) {
    double e = 0;
    for (int64_t i = 0; i < D; ++i) {
      double a = s1[b * D + i], c = s2[b], d = m1[b * D + i] - m2[b * D + i];
      e += std::log(c / a) + (a * a + d * d) / (2 * c * c) - 0.5;
    }
    EXPECT_NEAR(out[b], e, 1e-12);
  }
}

static void test_dpo_and_kto_closed_form() {
  const int64_t B = 4, D = 6, P = 2;
  auto mp = randn(B * D, 8), rp = randn(B * D, 9), t = randn(B * D, 10);
  auto mse = [&](const std::vector<double>& p, int64_t b) {
    double e = 0;
    for (int64_t i = 0; i < D; ++i) e += (p[b * D + i] - t[b * D + i]) * (p[b * D + i] - t[b * D + i]);
    return e / D;
  };
  const double beta = 3.0;
  std::vector<double> loss(1), margin(P);
  cpu::diffusion_dpo_loss({DType::kFloat64, B, D, mp.data(), rp.data(), t.data(), beta, kSigmoid, kPairMean,
                           loss.data(), margin.data()});
  double expected = 0;
  for (int64_t p = 0; p < P; ++p) {
    double u = -0.5 * beta * ((mse(mp, p) - mse(mp, p + P)) - (mse(rp, p) - mse(rp, p + P)));
    EXPECT_NEAR(margin[p], u, 1e-12);
    expected += -std::log(1.0 / (1.0 + std::exp(-u)));
  }
  EXPECT_NEAR(loss[0], expected / P, 1e-12);

  bool desirable[B] = {true, false, true, false};
  std::vector<double> kloss(1), z(1), g(B);
  cpu::diffusion_kto_loss({DType::kFloat64, B, D, mp.data(), rp.data(), t.data(), desirable, beta, 1.0, 2.0, nullptr,
                           kloss.data(), z.data(), g.data()});
  double gsum = 0, kexp = 0;
  for (int64_t b = 0; b < B; ++b) gsum += mse(rp, b) - mse(mp, b);
  const double zz = std::max(0.0, gsum / B);
  for (int64_t b = 0; b < B; ++b) {
    double gb = mse(rp, b) - mse(mp, b), sgn = desirable[b] ? 1 : -1;
    EXPECT_NEAR(g[b], gb, 1e-12);
    kexp += (desirable[b] ? 1.0 : 2.0) * (1 - 1 / (1 + std::exp(-sgn * beta * (gb - zz))));
  }
  EXPECT_NEAR(z[0], zz, 1e-12);
  EXPECT_NEAR(kloss[0], kexp / B, 1e-12);
}

static void test_ddim_step_closed_form() {
  const int64_t B = 2, D = 9;
  auto eps = randn(B * D, 11), x = randn(B * D, 12), noise = randn(B * D, 13);
  std::vector<double> at = {0.3, 0.6}, ap = {0.5, 0.8};
  const double eta = 0.9;
  std::vector<double> prev(B * D), mean(B * D), lp(B), sd(B);
  cpu::gaussian_step({DType::kFloat64, B, D, kDdimEpsilon, at.data(), ap.data(), 1, eta, eps.data(), x.data(),
                      nullptr, noise.data(), prev.data(), mean.data(), lp.data(), sd.data()});
  for (int64_t b = 0; b < B; ++b) {
    // docs/design.md, "Formulas": x0 = (x - sqrt(1-a) eps)/sqrt(a); sigma = eta sqrt((1-a')/(1-a)) sqrt(1 - a/a');
    // mu = sqrt(a') x0 + sqrt(1 - a' - sigma^2) eps
    double a = at[b], a2 = ap[b];
    double sigma = eta * std::sqrt((1 - a2) / (1 - a)) * std::sqrt(1 - a / a2);
    EXPECT_NEAR(sd[b], sigma, 1e-12);
    double l = 0;
    for (int64_t i = 0; i < D; ++i) {
      int64_t k = b * D + i;
      double x0 = (x[k] - std::sqrt(1 - a) * eps[k]) / std::sqrt(a);
      double mu = std::sqrt(a2) * x0 + std::sqrt(1 - a2 - sigma * sigma) * eps[k];
      EXPECT_NEAR(mean[k], mu, 1e-12);
      EXPECT_NEAR(prev[k], mu + sigma * noise[k], 1e-12);
      l += normal_logpdf(prev[k], mu, sigma);
    }
    EXPECT_NEAR(lp[b], l / D, 1e-12);
  }
  // scoring the drawn sample gives the same log-prob
  std::vector<double> lp2(B), mean2(B * D), sd2(B);
  cpu::gaussian_step({DType::kFloat64, B, D, kDdimEpsilon, at.data(), ap.data(), 1, eta, eps.data(), x.data(),
                      prev.data(), nullptr, nullptr, mean2.data(), lp2.data(), sd2.data()});
  for (int64_t b = 0; b < B; ++b) EXPECT_NEAR(lp2[b], lp[b], 1e-14);
}

static void test_flow_step_is_finite_at_sigma_one() {
  StepCoef<double> c = step_coefficients<double>(kFlowSde, 1.0, 0.9, 0.7);
  EXPECT_NEAR(c.std, 0.7 * std::sqrt(1.0 / 0.1) * std::sqrt(0.1), 1e-12);
  EXPECT_NEAR(std::isfinite(c.cx) && std::isfinite(c.cm) ? 1.0 : 0.0, 1.0, 0);
  // away from 1 it matches the flow SDE formula of docs/design.md ("Formulas") with the divisions by s written out
  double s = 0.6, sn = 0.4, a = 0.7, dt = sn - s, st = a * std::sqrt(s / (1 - s));
  c = step_coefficients<double>(kFlowSde, s, sn, a);
  EXPECT_NEAR(c.cx, 1 + st * st / (2 * s) * dt, 1e-12);
  EXPECT_NEAR(c.cm, (1 + st * st * (1 - s) / (2 * s)) * dt, 1e-12);
  EXPECT_NEAR(c.std, st * std::sqrt(-dt), 1e-12);
}

static void test_half_and_bfloat16_conversions() {
  // exact round trips and round-to-nearest-even ties
  for (float f : {0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f, 5.960464477539063e-08f}) {
    EXPECT_NEAR(half_to_float(float_to_half(f)), f, 0);
  }
  EXPECT_NEAR(half_to_float(float_to_half(1.0f + 1.0f / 2048)), 1.0f, 0);            // tie -> even
  EXPECT_NEAR(half_to_float(float_to_half(1.0f + 3.0f / 2048)), 1.0f + 2.0f / 1024, 0);  // tie -> even (up)
  EXPECT_NEAR(std::isinf(half_to_float(float_to_half(70000.0f))) ? 1.0 : 0.0, 1.0, 0);
  for (float f : {0.0f, 1.0f, -3.0f, 1.5e30f}) EXPECT_NEAR(bf16_to_float(float_to_bf16(f)), f, 1e-2);
  EXPECT_NEAR(bf16_to_float(float_to_bf16(1.0f + 1.0f / 256)), 1.0f, 0);              // tie -> even
  EXPECT_NEAR(bf16_to_float(float_to_bf16(1.0f + 3.0f / 256)), 1.0f + 1.0f / 64, 0);  // tie -> even (up)
}

static void test_bf16_inputs_accumulate_in_float() {
  const int64_t B = 1, D = 1 << 16;
  std::vector<bf16_t> x(D), m(D);
  for (int64_t i = 0; i < D; ++i) { x[i] = float_to_bf16(1.0f); m[i] = float_to_bf16(0.0f); }
  std::vector<float> s = {1.0f}, out(1);
  cpu::gaussian_logprob({DType::kBFloat16, B, D, x.data(), m.data(), {s.data(), kScalar}, kSum, out.data()});
  // float accumulation: within 5e-4 relative; a bf16 accumulator would stall far from this sum
  EXPECT_NEAR(out[0], D * normal_logpdf(1.0, 0.0, 1.0), 5e-4);
}

// Masks in each stored form (weights of x's shape, bytes, one weight per run of `inner` elements) against
// closed forms: the masked "mean" log-prob sum m*l / sum m, its gradient m * -(x - mean) / s^2 * (1 / sum m)
// with the row factor from mask_row_scale, and an all-zero row giving 0. Runs of 32 (whole lane groups)
// and of 40 (run by run), rows longer than a CPU chunk (runs crossing its boundary).
static void test_masked_forms_closed_form() {
  for (int64_t inner : {32, 40}) {
    const int64_t B = 3, N = 500, D = N * inner;  // D > 16384: several chunks per row
    auto x = randn(B * D, 11), m = randn(B * D, 12);
    std::vector<double> s = {0.7, 1.3, 2.0};
    std::vector<double> run_w(B * N);  // the per-run weights; row 1 all zero
    std::mt19937 gen(13);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t r = 0; r < N; ++r) run_w[b * N + r] = b == 1 ? 0.0 : double(gen() % 3 == 0 ? 0 : 1);
    std::vector<double> elem_w(B * D);
    std::vector<uint8_t> bytes(B * D);
    for (int64_t i = 0; i < B * D; ++i) {
      elem_w[i] = run_w[i / inner];
      bytes[i] = uint8_t(elem_w[i] != 0.0);
    }
    struct Form { const void* p; int kind; };
    for (Form form : {Form{elem_w.data(), kMaskElem}, Form{bytes.data(), kMaskBytes},
                      Form{run_w.data(), kMaskSegments}}) {
      std::vector<double> out(B), scale(B);
      LogprobArgs fa{DType::kFloat64, B, D, x.data(), m.data(), {s.data(), kPerRow}, kMean, out.data()};
      fa.mask = form.p;
      fa.mask_kind = form.kind;
      fa.mask_inner = inner;
      cpu::gaussian_logprob(fa);
      cpu::mask_row_scale({DType::kFloat64, B, D, form.p, form.kind, inner, scale.data()});
      std::vector<double> grad(B, 1.0), gx(B * D);
      LogprobBwdArgs ba{DType::kFloat64, B, D, grad.data(), 1, x.data(), m.data(), {s.data(), kPerRow}, kMean,
                        gx.data(), nullptr, nullptr};
      ba.mask = form.p;
      ba.row_scale = scale.data();
      ba.mask_kind = form.kind;
      ba.mask_inner = inner;
      cpu::gaussian_logprob_backward(ba);
      for (int64_t b = 0; b < B; ++b) {
        double num = 0, den = 0;
        for (int64_t i = 0; i < D; ++i) {
          const double w = elem_w[b * D + i];
          if (w != 0) num += w * normal_logpdf(x[b * D + i], m[b * D + i], s[b]);
          den += w;
        }
        EXPECT_NEAR(out[b], den > 0 ? num / den : 0.0, 1e-12);
        EXPECT_NEAR(scale[b], den > 0 ? 1.0 / den : 0.0, 1e-15);
        for (int64_t i = 0; i < D; i += 97) {
          const double w = elem_w[b * D + i];
          const double e = den > 0 ? w * -(x[b * D + i] - m[b * D + i]) / (s[b] * s[b]) / den : 0.0;
          EXPECT_NEAR(gx[b * D + i], e, 1e-12);
        }
      }
    }
  }
}

int main() {
  const std::vector<std::pair<const char*, std::function<void()>>> tests = {
      {"logprob_closed_form", test_logprob_closed_form},
      {"logprob_gradients_by_finite_differences", test_logprob_gradients_by_finite_differences},
      {"kl_closed_form", test_kl_closed_form},
      {"dpo_and_kto_closed_form", test_dpo_and_kto_closed_form},
      {"ddim_step_closed_form", test_ddim_step_closed_form},
      {"flow_step_is_finite_at_sigma_one", test_flow_step_is_finite_at_sigma_one},
      {"half_and_bfloat16_conversions", test_half_and_bfloat16_conversions},
      {"bf16_inputs_accumulate_in_float", test_bf16_inputs_accumulate_in_float},
      {"masked_forms_closed_form", test_masked_forms_closed_form},
  };
  int passed = 0, failed = 0;
  for (auto& [name, fn] : tests) {
    const int before = g_failures;
    fn();
    const bool ok = g_failures == before;
    std::printf("%s %s\n", ok ? "PASS" : "FAIL", name);
    (ok ? passed : failed)++;
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
