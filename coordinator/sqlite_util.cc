#include "coordinator/sqlite_util.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace qtrain::coordinator::sqlite {
namespace {

// The start of a statement's SQL, to say which one failed without quoting it all.
std::string Abbreviate(absl::string_view sql) {
  constexpr size_t kShown = 48;
  if (sql.size() <= kShown) return std::string(sql);
  return absl::StrCat(sql.substr(0, kShown), "...");
}

}  // namespace

absl::Status Error(sqlite3* db, int rc, absl::string_view path, absl::string_view what) {
  // sqlite3_errmsg describes the latest failure on the connection; without one, the code's text.
  const std::string message = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  const std::string text = absl::StrCat(path, ": ", what, ": ", message);
  switch (rc & 0xff) {
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::DataLossError(
          absl::StrCat(path, ": not a qtrain coordinator database, or it is corrupt (", what, ": ",
                       message, ")"));
    case SQLITE_CONSTRAINT:
      if (IsUniqueViolation(rc)) return absl::AlreadyExistsError(text);
      return absl::FailedPreconditionError(text);
    case SQLITE_FULL:
    case SQLITE_NOMEM:
      return absl::ResourceExhaustedError(text);
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::UnavailableError(
          absl::StrCat(text, " (the database is locked by another process)"));
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH:
      return absl::PermissionDeniedError(text);
    case SQLITE_CANTOPEN:
      return absl::FailedPreconditionError(text);
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
    case SQLITE_MISMATCH:
      return absl::InvalidArgumentError(text);
    default:
      return absl::InternalError(text);
  }
}

bool IsUniqueViolation(int rc) {
  return rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY;
}

absl::Status Exec(sqlite3* db, const char* sql, absl::string_view path) {
  char* errmsg = nullptr;
  const int rc = sqlite3_exec(db, sql, nullptr, nullptr, &errmsg);
  sqlite3_free(errmsg);  // sqlite3_errmsg(db) holds the same text
  if (rc != SQLITE_OK) {
    return Error(db, sqlite3_extended_errcode(db), path, Abbreviate(sql));
  }
  return absl::OkStatus();
}

absl::StatusOr<Statement> Statement::Prepare(sqlite3* db, absl::string_view sql,
                                             absl::string_view path) {
  sqlite3_stmt* stmt = nullptr;
  const int rc = sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()),
                                    SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
  if (rc != SQLITE_OK) {
    sqlite3_finalize(stmt);
    return Error(db, rc, path, absl::StrCat("preparing \"", Abbreviate(sql), "\""));
  }
  return Statement(db, stmt, path);
}

Statement::Statement(sqlite3* db, sqlite3_stmt* stmt, absl::string_view path)
    : db_(db), stmt_(stmt), path_(path) {}

Statement::Statement(Statement&& other) noexcept
    : db_(other.db_), stmt_(std::exchange(other.stmt_, nullptr)), path_(std::move(other.path_)) {}

Statement& Statement::operator=(Statement&& other) noexcept {
  if (this != &other) {
    sqlite3_finalize(stmt_);
    db_ = other.db_;
    stmt_ = std::exchange(other.stmt_, nullptr);
    path_ = std::move(other.path_);
  }
  return *this;
}

Statement::~Statement() { sqlite3_finalize(stmt_); }

absl::Status Statement::Check(int rc, absl::string_view what) const {
  if (rc == SQLITE_OK) return absl::OkStatus();
  return Error(db_, rc, path_, absl::StrCat(what, " (", Abbreviate(sqlite3_sql(stmt_)), ")"));
}

absl::Status Statement::BindInt64(int index, int64_t value) {
  return Check(sqlite3_bind_int64(stmt_, index, value), "binding an integer");
}

absl::Status Statement::BindText(int index, absl::string_view value) {
  return Check(
      sqlite3_bind_text64(stmt_, index, value.data(), value.size(), SQLITE_TRANSIENT, SQLITE_UTF8),
      "binding text");
}

absl::Status Statement::BindBlob(int index, absl::string_view value) {
  // A zero-length blob must still be a blob, not NULL: bind from a non-null pointer.
  static const char kEmpty = 0;
  return Check(sqlite3_bind_blob64(stmt_, index, value.empty() ? &kEmpty : value.data(),
                                   value.size(), SQLITE_TRANSIENT),
               "binding a blob");
}

absl::Status Statement::BindNull(int index) {
  return Check(sqlite3_bind_null(stmt_, index), "binding NULL");
}

absl::StatusOr<bool> Statement::Step() {
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  // With sqlite3_prepare_v3 the step's result is already the extended code.
  return Error(db_, rc, path_, absl::StrCat("running \"", Abbreviate(sqlite3_sql(stmt_)), "\""));
}

absl::Status Statement::Run() {
  absl::StatusOr<bool> row = Step();
  if (!row.ok()) return row.status();
  if (*row) {
    return absl::InternalError(
        absl::StrCat(path_, ": \"", sqlite3_sql(stmt_), "\" returned a row unexpectedly"));
  }
  return absl::OkStatus();
}

void Statement::Reset() {
  // sqlite3_reset repeats the last step's error, which Step() has reported already.
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

int64_t Statement::ColumnInt64(int column) const { return sqlite3_column_int64(stmt_, column); }

absl::string_view Statement::ColumnText(int column) const {
  const unsigned char* text = sqlite3_column_text(stmt_, column);
  const int size = sqlite3_column_bytes(stmt_, column);
  if (text == nullptr) return {};
  return absl::string_view(reinterpret_cast<const char*>(text), static_cast<size_t>(size));
}

absl::string_view Statement::ColumnBlob(int column) const {
  const void* blob = sqlite3_column_blob(stmt_, column);
  const int size = sqlite3_column_bytes(stmt_, column);
  if (blob == nullptr) return {};
  return absl::string_view(static_cast<const char*>(blob), static_cast<size_t>(size));
}

bool Statement::ColumnIsNull(int column) const {
  return sqlite3_column_type(stmt_, column) == SQLITE_NULL;
}

}  // namespace qtrain::coordinator::sqlite
