// Residual add: out = a + b; backward da += dout, db += dout.   All [n].
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/validate.h"

namespace qtrain::kernels::cpu {

OpStatus CpuBackendImpl::ResidualForwardF32(const float* a, const float* b, float* out, int64_t n) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative("ResidualForward", "n", n));
  if (n == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("ResidualForward", "a", a));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("ResidualForward", "b", b));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("ResidualForward", "out", out));
#pragma omp parallel for schedule(static) if (WorthParallel(n))
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
  return OpStatus::Ok();
}

OpStatus CpuBackendImpl::ResidualBackwardF32(const float* dout, float* da, float* db, int64_t n) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative("ResidualBackward", "n", n));
  if (n == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("ResidualBackward", "dout", dout));
  if (da == dout || db == dout) {
    return OpStatus::Error("ResidualBackward: da/db must not alias dout");
  }
#pragma omp parallel for schedule(static) if (WorthParallel(n))
  for (int64_t i = 0; i < n; ++i) {
    const float g = dout[i];
    if (da != nullptr) da[i] += g;
    if (db != nullptr) db[i] += g;
  }
  return OpStatus::Ok();
}

}  // namespace qtrain::kernels::cpu
