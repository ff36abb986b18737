// Parameter checks shared by the CPU ops: each returns an OpStatus naming the op and argument.
#ifndef QTRAIN_KERNELS_CPU_VALIDATE_H_
#define QTRAIN_KERNELS_CPU_VALIDATE_H_

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "kernels/ops.h"
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

// Host ids (`what` = "id") or labels ("label") of `rows` rows in [0, vocab); with `ignore`, that
// value is allowed too. Shared with the CUDA backend, which checks a host copy of its ids.
inline OpStatus CheckIdsInRange(const char* op, const char* what, const int32_t* ids, int64_t rows,
                                int64_t vocab, const int32_t* ignore = nullptr) {
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t id = ids[r];
    if ((ignore != nullptr && id == *ignore) || (id >= 0 && id < vocab)) continue;
    std::string message = std::string(op) + ": " + what + " " + std::to_string(id) + " at row " +
                          std::to_string(r) + " is outside [0, " + std::to_string(vocab) + ")";
    if (ignore != nullptr) message += " and is not ignore_index " + std::to_string(*ignore);
    return OpStatus::Error(message);
  }
  return OpStatus::Ok();
}

// The checks of a RoPE application (either backend): the shape, then the pointers when there is
// work.
inline OpStatus ValidateRope(const char* op, const void* in, const void* out,
                             const RopeShape& shape, const float* inv_freq) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(op, "batch", shape.batch));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative(op, "seq_len", shape.seq_len));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(op, "num_heads", shape.num_heads));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(op, "head_dim", shape.head_dim));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative(op, "past_len", shape.past_len));
  if (shape.head_dim % 2 != 0) {
    return OpStatus::Error(std::string(op) + ": head_dim must be even, got " +
                           std::to_string(shape.head_dim));
  }
  if (shape.seq_len == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(op, "input", in));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(op, "output", out));
  return CheckNotNull(op, "inv_freq", inv_freq);
}

// A tensor argument and its name, for the dtype check below.
struct NamedTensor {
  const char* name;
  ConstTensor tensor;
};

// The typed tensors of one op share one dtype (kernels/ops.h), and it is a known one; null
// (absent) tensors are not counted. Shared with the CUDA backend.
inline OpStatus CheckOneDType(const char* op, std::initializer_list<NamedTensor> tensors) {
  const NamedTensor* first = nullptr;
  for (const NamedTensor& t : tensors) {
    const DType dtype = t.tensor.dtype();
    if (dtype != DType::kFloat32 && dtype != DType::kBfloat16 && dtype != DType::kFloat16) {
      return OpStatus::Error(std::string(op) + ": " + t.name + " has an unknown dtype (" +
                             std::to_string(static_cast<int>(dtype)) + ")");
    }
    if (t.tensor.is_null()) continue;
    if (first == nullptr) {
      first = &t;
    } else if (dtype != first->tensor.dtype()) {
      return OpStatus::Error(std::string(op) + ": the tensors must share one dtype, but " +
                             first->name + " is " + DTypeName(first->tensor.dtype()) + " and " +
                             t.name + " is " + DTypeName(dtype));
    }
  }
  return OpStatus::Ok();
}

// The checks of a Cast (either backend): known dtypes, the size, and when there is work, the
// pointers and no overlap between in and out.
inline OpStatus ValidateCast(ConstTensor in, ConstTensor out, int64_t n) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckOneDType("Cast", {{"in", in}}));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckOneDType("Cast", {{"out", out}}));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative("Cast", "n", n));
  if (n == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("Cast", "in", in.data()));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("Cast", "out", out.data()));
  const auto* in_begin = static_cast<const std::byte*>(in.data());
  const auto* out_begin = static_cast<const std::byte*>(out.data());
  if (in_begin < out_begin + n * static_cast<int64_t>(out.bytes()) &&
      out_begin < in_begin + n * static_cast<int64_t>(in.bytes())) {
    return OpStatus::Error("Cast: out overlaps in");
  }
  return OpStatus::Ok();
}

// AdamW's hyperparameters (AdamWStep and AdamWMultiStep, either backend).
inline OpStatus ValidateAdamWParams(const char* op, const AdamWParams& p) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(op, "step", p.step));
  if (!(p.beta1 >= 0.0 && p.beta1 < 1.0) || !(p.beta2 >= 0.0 && p.beta2 < 1.0)) {
    return OpStatus::Error(std::string(op) + ": betas must be in [0, 1)");
  }
  if (!(p.lr >= 0.0) || !(p.eps >= 0.0) || !(p.weight_decay >= 0.0)) {
    return OpStatus::Error(std::string(op) + ": lr, eps and weight_decay must be >= 0");
  }
  return OpStatus::Ok();
}

// The descriptors of an AdamWMultiStep (either backend): a count, and per tensor a size, its
// four pointers when it has elements, and a working copy that is null or bf16. Checked whole
// before any tensor is updated, so a bad call changes nothing.
inline OpStatus ValidateAdamWTensors(const AdamWTensor* tensors, int64_t count) {
  constexpr const char* kOp = "AdamWMultiStep";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative(kOp, "count", count));
  if (count > 0) QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "tensors", tensors));
  for (int64_t i = 0; i < count; ++i) {
    const AdamWTensor& t = tensors[i];
    const std::string which = "tensor " + std::to_string(i);
    if (t.n < 0) return OpStatus::Error(std::string(kOp) + ": " + which + " has n < 0");
    if (t.n == 0) continue;
    if (t.param == nullptr || t.grad == nullptr || t.m == nullptr || t.v == nullptr) {
      return OpStatus::Error(std::string(kOp) + ": " + which + " has a null param, grad, m or v");
    }
    if (!t.working_copy.is_null() && t.working_copy.dtype() != DType::kBfloat16 &&
        t.working_copy.dtype() != DType::kFloat16) {
      return OpStatus::Error(std::string(kOp) + ": " + which +
                             "'s working_copy must be bf16 or fp16, not " +
                             DTypeName(t.working_copy.dtype()));
    }
  }
  return OpStatus::Ok();
}

}  // namespace qtrain::kernels::cpu

#endif  // QTRAIN_KERNELS_CPU_VALIDATE_H_
