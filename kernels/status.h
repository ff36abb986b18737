// The error type of the kernels: ok, or a message that names the op and the bad parameter.
//
// kernels/ depends only on the standard library, so it cannot use absl::Status; callers convert
// with e.g. `if (!s.ok()) return absl::InvalidArgumentError(s.message());`.
#ifndef QTRAIN_KERNELS_STATUS_H_
#define QTRAIN_KERNELS_STATUS_H_

#include <string>
#include <utility>

namespace qtrain::kernels {

class [[nodiscard]] OpStatus {
 public:
  OpStatus() = default;  // ok
  static OpStatus Ok() { return OpStatus(); }
  static OpStatus Error(std::string message) { return OpStatus(std::move(message)); }

  bool ok() const { return message_.empty(); }
  const std::string& message() const { return message_; }

 private:
  explicit OpStatus(std::string message)
      : message_(message.empty() ? std::string("unknown kernel error") : std::move(message)) {}
  std::string message_;
};

// Returns from the enclosing function when `expr` (an OpStatus) is not ok.
#define QTRAIN_KERNEL_RETURN_IF_ERROR(expr)          \
  do {                                               \
    ::qtrain::kernels::OpStatus _kernel_st = (expr); \
    if (!_kernel_st.ok()) return _kernel_st;         \
  } while (0)

}  // namespace qtrain::kernels

#endif  // QTRAIN_KERNELS_STATUS_H_
