// Parameter checks shared by the CPU ops: each returns an OpStatus naming the op and argument.
#ifndef QTRAIN_KERNELS_CPU_VALIDATE_H_
#define QTRAIN_KERNELS_CPU_VALIDATE_H_

#include <cstdint>
#include <string>

#include "kernels/status.h"

namespace qtrain::kernels::cpu {

inline OpStatus CheckPositive(const char* op, const char* what, int64_t value) {
  if (value > 0) return OpStatus::Ok();
  return OpStatus::Error(std::string(op) + ": " + what + " must be positive, got " +
                         std::to_string(value));
}

inline OpStatus CheckNonNegative(const char* op, const char* what, int64_t value) {
  if (value >= 0) return OpStatus::Ok();
  return OpStatus::Error(std::string(op) + ": " + what + " must be non-negative, got " +
                         std::to_string(value));
}

inline OpStatus CheckNotNull(const char* op, const char* what, const void* ptr) {
  if (ptr != nullptr) return OpStatus::Ok();
  return OpStatus::Error(std::string(op) + ": " + what + " is null");
}

}  // namespace qtrain::kernels::cpu

#endif  // QTRAIN_KERNELS_CPU_VALIDATE_H_
