// SwiGLU: out = silu(gate) * up, with silu(a) = a * sigmoid(a).
//   gate, up, out, dout, dgate, dup [rows, dim]
//   backward: dup += dout * silu(gate);
//             dgate += dout * up * sigmoid(gate) * (1 + gate * (1 - sigmoid(gate)))
#include <cmath>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/validate.h"

namespace qtrain::kernels::cpu {
namespace {

inline float Sigmoid(float a) { return 1.0f / (1.0f + std::exp(-a)); }

OpStatus ValidateSwiglu(const char* op, const float* gate, const float* up, int64_t rows,
                        int64_t dim) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative(op, "rows", rows));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(op, "dim", dim));
  if (rows == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(op, "gate", gate));
  return CheckNotNull(op, "up", up);
}

}  // namespace

OpStatus CpuBackendImpl::SwigluForward(const float* gate, const float* up, float* out, int64_t rows,
                                       int64_t dim) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(ValidateSwiglu("SwigluForward", gate, up, rows, dim));
  if (rows == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("SwigluForward", "out", out));
  const int64_t n = rows * dim;
#pragma omp parallel for schedule(static) if (WorthParallel(n))
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] * Sigmoid(gate[i]) * up[i];
  return OpStatus::Ok();
}

OpStatus CpuBackendImpl::SwigluBackward(const float* dout, const float* gate, const float* up,
                                        float* dgate, float* dup, int64_t rows, int64_t dim) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(ValidateSwiglu("SwigluBackward", gate, up, rows, dim));
  if (rows == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("SwigluBackward", "dout", dout));
  const int64_t n = rows * dim;
#pragma omp parallel for schedule(static) if (WorthParallel(n))
  for (int64_t i = 0; i < n; ++i) {
    const float a = gate[i];
    const float sig = Sigmoid(a);
    if (dup != nullptr) dup[i] += dout[i] * a * sig;
    if (dgate != nullptr) dgate[i] += dout[i] * up[i] * sig * (1.0f + a * (1.0f - sig));
  }
  return OpStatus::Ok();
}

}  // namespace qtrain::kernels::cpu
