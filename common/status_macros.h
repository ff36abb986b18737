// Status propagation macros used across module boundaries.
//
//   QTRAIN_RETURN_IF_ERROR(DoSomething());
//   QTRAIN_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
//   return Annotate(status, "loading model.safetensors");
#ifndef QTRAIN_COMMON_STATUS_MACROS_H_
#define QTRAIN_COMMON_STATUS_MACROS_H_

#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define QTRAIN_STATUS_CONCAT_INNER_(a, b) a##b
#define QTRAIN_STATUS_CONCAT_(a, b) QTRAIN_STATUS_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status) and returns it from the enclosing function if not OK.
#define QTRAIN_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    ::absl::Status qtrain_status_ = (expr);          \
    if (!qtrain_status_.ok()) return qtrain_status_; \
  } while (0)

// Evaluates `rexpr` (an absl::StatusOr<T>); returns its status if not OK, otherwise moves the
// value into `lhs` (a declaration such as `auto x` or an existing variable).
#define QTRAIN_ASSIGN_OR_RETURN(lhs, rexpr) \
  QTRAIN_ASSIGN_OR_RETURN_IMPL_(QTRAIN_STATUS_CONCAT_(qtrain_statusor_, __LINE__), lhs, rexpr)

#define QTRAIN_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                  \
  if (!statusor.ok()) return std::move(statusor).status();  \
  lhs = std::move(statusor).value()

namespace qtrain {

// Returns `status` with `context` prepended to its message ("context: message"); OK stays OK.
absl::Status Annotate(const absl::Status& status, std::string_view context);

}  // namespace qtrain

#endif  // QTRAIN_COMMON_STATUS_MACROS_H_
