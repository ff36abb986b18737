#include "coordinator/store_schema.h"

#include <array>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "coordinator/sqlite_util.h"
#include "coordinator/store.h"

namespace qtrain::coordinator {
namespace {

// Version 1: the initial schema. Rows hold the protos as blobs plus the columns that are
// queried. Event times are microseconds since the Unix epoch.
constexpr const char* kSchemaV1 = R"sql(
CREATE TABLE jobs (
  name TEXT NOT NULL PRIMARY KEY,
  request_id TEXT UNIQUE,
  create_seq INTEGER NOT NULL UNIQUE,
  state INTEGER NOT NULL,
  proto BLOB NOT NULL
);
CREATE TABLE events (
  job TEXT NOT NULL REFERENCES jobs(name),
  sequence INTEGER NOT NULL,
  kind TEXT NOT NULL,
  time INTEGER NOT NULL,
  proto BLOB NOT NULL,
  PRIMARY KEY (job, sequence)
);
CREATE INDEX events_without_step_metrics ON events(job, sequence)
  WHERE kind <> 'step_metrics';
CREATE TABLE checkpoints (
  name TEXT NOT NULL PRIMARY KEY,
  job TEXT NOT NULL REFERENCES jobs(name),
  step INTEGER NOT NULL,
  state INTEGER NOT NULL,
  proto BLOB NOT NULL
);
CREATE INDEX checkpoints_by_job ON checkpoints(job, step);
CREATE TABLE workers (
  name TEXT NOT NULL PRIMARY KEY,
  proto BLOB NOT NULL
);
CREATE TABLE meta (
  key TEXT NOT NULL PRIMARY KEY,
  value INTEGER NOT NULL
);
PRAGMA application_id = 1903456867;
)sql";

constexpr std::array<Migration, 1> kMigrations = {{
    {1, kSchemaV1},
}};
static_assert(kMigrations.back().version == kStoreSchemaVersion,
              "the last migration must produce kStoreSchemaVersion");
static_assert(kStoreApplicationId == 1903456867, "kSchemaV1 spells the application id out");

absl::Status ApplyOne(sqlite3* db, absl::string_view path, const Migration& migration) {
  QTRAIN_RETURN_IF_ERROR(sqlite::Exec(db, "BEGIN IMMEDIATE", path));
  absl::Status status = sqlite::Exec(db, migration.sql, path);
  if (status.ok()) {
    status =
        sqlite::Exec(db, absl::StrCat("PRAGMA user_version = ", migration.version).c_str(), path);
  }
  if (status.ok()) status = sqlite::Exec(db, "COMMIT", path);
  if (!status.ok()) {
    if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    return Annotate(status, absl::StrCat("migrating to schema version ", migration.version));
  }
  return absl::OkStatus();
}

}  // namespace

std::span<const Migration> StoreMigrations() { return kMigrations; }

absl::Status ApplyMigrations(sqlite3* db, absl::string_view path, int from_version) {
  return ApplyMigrations(db, path, from_version, kMigrations);
}

absl::Status ApplyMigrations(sqlite3* db, absl::string_view path, int from_version,
                             std::span<const Migration> migrations) {
  for (const Migration& migration : migrations) {
    if (migration.version <= from_version) continue;
    QTRAIN_RETURN_IF_ERROR(ApplyOne(db, path, migration));
  }
  return absl::OkStatus();
}

}  // namespace qtrain::coordinator
