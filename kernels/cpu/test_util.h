// Test helpers for the kernel tests: random tensors, error measures and central finite
// differences.
#ifndef QTRAIN_KERNELS_CPU_TEST_UTIL_H_
#define QTRAIN_KERNELS_CPU_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernels/status.h"

// Asserts that an OpStatus expression is ok, printing its message otherwise.
#define ASSERT_OP_OK(expr)                                 \
  do {                                                     \
    const ::qtrain::kernels::OpStatus _op_status = (expr); \
    ASSERT_TRUE(_op_status.ok()) << _op_status.message();  \
  } while (0)

namespace qtrain::kernels::testing {

inline std::vector<float> RandomFloats(int64_t n, uint32_t seed, float lo = -1.0f,
                                       float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> out(n);
  for (float& x : out) x = dist(rng);
  return out;
}

inline std::vector<double> ToDouble(const std::vector<float>& x) {
  return std::vector<double>(x.begin(), x.end());
}

// max_i |a_i - b_i| / max(|a|_inf, |b|_inf, floor): the error relative to the tensor's scale, so
// entries near zero do not dominate.
template <typename A, typename B>
double MaxRelError(const std::vector<A>& a, const std::vector<B>& b, double floor = 1e-12) {
  double scale = floor, err = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    scale = std::max(
        {scale, std::fabs(static_cast<double>(a[i])), std::fabs(static_cast<double>(b[i]))});
    err = std::max(err, std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  }
  if (a.size() != b.size()) return INFINITY;
  return err / scale;
}

// Compares `analytic` (the gradient of loss at x) with central differences of `loss`, in
// double, on up to `max_checks` evenly spread entries. Returns the max error relative to the
// largest gradient entry checked. `x` is perturbed in place and restored.
inline double FiniteDifferenceError(const std::function<double()>& loss, std::vector<double>& x,
                                    const std::vector<double>& analytic, int64_t max_checks = 64,
                                    double step = 1e-6) {
  const int64_t n = static_cast<int64_t>(x.size());
  const int64_t stride = std::max<int64_t>(1, n / max_checks);
  std::vector<double> fd, an;
  for (int64_t i = 0; i < n; i += stride) {
    const double saved = x[i];
    x[i] = saved + step;
    const double up = loss();
    x[i] = saved - step;
    const double down = loss();
    x[i] = saved;
    fd.push_back((up - down) / (2 * step));
    an.push_back(analytic[i]);
  }
  return MaxRelError(fd, an, 1e-8);
}

// Checks an fp32 op directly: compares the directional derivative <grad, u> along a random
// direction u with the central difference (loss(x + eps u) - loss(x - eps u)) / 2 eps, where
// loss(x) runs the op in fp32 and sums its weighted outputs in double. Returns the relative
// error. `x` is restored on return.
inline double DirectionalFdError(const std::function<double()>& loss, std::vector<float>& x,
                                 const std::vector<float>& grad, uint32_t seed, double eps = 1e-3) {
  const std::vector<float> saved = x;
  const std::vector<float> u = RandomFloats(static_cast<int64_t>(x.size()), seed);
  std::vector<float> up_x(x.size()), down_x(x.size());
  double analytic = 0;  // along the step actually taken after fp32 rounding of x +- eps u
  for (size_t i = 0; i < x.size(); ++i) {
    up_x[i] = saved[i] + static_cast<float>(eps) * u[i];
    down_x[i] = saved[i] - static_cast<float>(eps) * u[i];
    analytic +=
        static_cast<double>(grad[i]) * ((static_cast<double>(up_x[i]) - down_x[i]) / (2 * eps));
  }
  x = up_x;
  const double up = loss();
  x = down_x;
  const double down = loss();
  x = saved;
  const double fd = (up - down) / (2 * eps);
  return std::fabs(fd - analytic) / std::max({std::fabs(fd), std::fabs(analytic), 1e-6});
}

// sum_i w_i * y_i in double.
template <typename T>
double WeightedSum(const std::vector<T>& y, const std::vector<float>& w) {
  double s = 0;
  for (size_t i = 0; i < y.size(); ++i) s += static_cast<double>(y[i]) * w[i];
  return s;
}

// Prints an error measure, so that test logs show how far each check is from its tolerance.
inline void ReportError(const std::string& name, double err) {
  std::printf("[ max-rel-error ] %-44s %.3e\n", name.c_str(), err);
}

}  // namespace qtrain::kernels::testing

#endif  // QTRAIN_KERNELS_CPU_TEST_UTIL_H_
