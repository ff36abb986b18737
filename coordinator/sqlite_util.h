// Thin RAII layer over the SQLite C API for the coordinator store: prepared statements that
// finalize themselves, and every result code turned into an absl::Status that carries SQLite's
// message and the database path.
#ifndef QTRAIN_COORDINATOR_SQLITE_UTIL_H_
#define QTRAIN_COORDINATOR_SQLITE_UTIL_H_

#include <sqlite3.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace qtrain::coordinator::sqlite {

// The status for a failed SQLite call on `db` (may be null) returning `rc`; `what` names the
// operation. Corruption and "not a database" are DATA_LOSS, constraint violations ALREADY_EXISTS
// (unique keys) or FAILED_PRECONDITION (others), a full disk RESOURCE_EXHAUSTED, a lock held by
// another process UNAVAILABLE.
absl::Status Error(sqlite3* db, int rc, absl::string_view path, absl::string_view what);

// True for the extended codes of a UNIQUE or PRIMARY KEY violation.
bool IsUniqueViolation(int rc);

// Runs SQL text without results (several statements allowed).
absl::Status Exec(sqlite3* db, const char* sql, absl::string_view path);

// One prepared statement. Bind*, then Step() until it returns false (SQLITE_DONE); Reset()
// before the next use (Step() failures leave it to be reset too).
class Statement {
 public:
  static absl::StatusOr<Statement> Prepare(sqlite3* db, absl::string_view sql,
                                           absl::string_view path);
  Statement() = default;
  Statement(Statement&& other) noexcept;
  Statement& operator=(Statement&& other) noexcept;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement();

  absl::Status BindInt64(int index, int64_t value);
  absl::Status BindText(int index, absl::string_view value);
  absl::Status BindBlob(int index, absl::string_view value);
  absl::Status BindNull(int index);

  // True when a row is available, false when the statement is done.
  absl::StatusOr<bool> Step();
  // Steps a statement that returns no rows.
  absl::Status Run();
  // Resets the statement and clears its bindings.
  void Reset();

  int64_t ColumnInt64(int column) const;
  absl::string_view ColumnText(int column) const;
  absl::string_view ColumnBlob(int column) const;
  bool ColumnIsNull(int column) const;

 private:
  Statement(sqlite3* db, sqlite3_stmt* stmt, absl::string_view path);
  absl::Status Check(int rc, absl::string_view what) const;

  sqlite3* db_ = nullptr;
  sqlite3_stmt* stmt_ = nullptr;
  std::string path_;
};

// Resets a statement when it goes out of scope, so an early return never leaves it active
// (an active read statement would keep a WAL snapshot open).
class ScopedReset {
 public:
  explicit ScopedReset(Statement& statement) : statement_(statement) {}
  ~ScopedReset() { statement_.Reset(); }
  ScopedReset(const ScopedReset&) = delete;
  ScopedReset& operator=(const ScopedReset&) = delete;

 private:
  Statement& statement_;
};

}  // namespace qtrain::coordinator::sqlite

#endif  // QTRAIN_COORDINATOR_SQLITE_UTIL_H_
