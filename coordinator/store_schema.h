// The coordinator database's schema and its migrations. Version N of the schema is what
// migrations 1..N produce; PRAGMA user_version records the version a file is at.
#ifndef QTRAIN_COORDINATOR_STORE_SCHEMA_H_
#define QTRAIN_COORDINATOR_STORE_SCHEMA_H_

#include <sqlite3.h>

#include <cstdint>
#include <span>

#include "absl/status/status.h"

namespace qtrain::coordinator {

// PRAGMA application_id of a qtrain coordinator database ("qtrc").
inline constexpr int32_t kStoreApplicationId = 0x71747263;

struct Migration {
  int version;      // the user_version once applied
  const char* sql;  // run inside the migration's transaction
};

// Every migration, in version order; the last one's version is kStoreSchemaVersion.
std::span<const Migration> StoreMigrations();

// Applies, each in its own transaction, the migrations above `from_version`: a failing one
// leaves the database at the version before it.
absl::Status ApplyMigrations(sqlite3* db, absl::string_view path, int from_version);
// The same with another list (tests).
absl::Status ApplyMigrations(sqlite3* db, absl::string_view path, int from_version,
                             std::span<const Migration> migrations);

}  // namespace qtrain::coordinator

#endif  // QTRAIN_COORDINATOR_STORE_SCHEMA_H_
