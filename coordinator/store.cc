#include "coordinator/store.h"

#include <sqlite3.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "coordinator/sqlite_util.h"
#include "coordinator/store_schema.h"

namespace qtrain::coordinator {
namespace {

// How long a statement waits for a lock another connection holds before failing UNAVAILABLE.
constexpr int kBusyTimeoutMs = 5000;

struct DbCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using DbHandle = std::unique_ptr<sqlite3, DbCloser>;

// A batch's rows, serialized and checked before the transaction starts.
struct JobRow {
  std::string name, request_id, proto;
  int64_t state;
};
struct EventRow {
  std::string job, kind, proto;
  int64_t sequence, time_us;
};
struct CheckpointRow {
  std::string name, job, proto;
  int64_t step, state;
};
struct WorkerRow {
  std::string name, proto;
};
struct EncodedBatch {
  std::vector<JobRow> jobs;
  std::vector<EventRow> events;
  std::vector<CheckpointRow> checkpoints;
  std::vector<WorkerRow> workers;
  int64_t next_job_number = 0;
};

absl::StatusOr<std::string> Serialize(const google::protobuf::Message& message,
                                      absl::string_view what) {
  const size_t size = message.ByteSizeLong();
  if (size > kMaxStoredProtoBytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is ", size,
                                                   " bytes serialized; the store keeps at most ",
                                                   kMaxStoredProtoBytes, " bytes per record"));
  }
  std::string out;
  if (!message.SerializeToString(&out)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " cannot be serialized"));
  }
  return out;
}

// "step_metrics", "state_changed", ...: the name of the event's oneof field.
std::string EventKind(const v1::JobEvent& event) {
  if (event.event_case() == v1::JobEvent::EVENT_NOT_SET) return "unset";
  return std::string(v1::JobEvent::descriptor()->FindFieldByNumber(event.event_case())->name());
}

int64_t TimestampMicros(const google::protobuf::Timestamp& time) {
  // absl saturates out-of-range values instead of overflowing.
  return absl::ToUnixMicros(absl::FromUnixSeconds(time.seconds()) +
                            absl::Nanoseconds(time.nanos()));
}

// "jobs/x/checkpoints/step-1" -> "jobs/x".
absl::StatusOr<std::string> CheckpointJob(absl::string_view name) {
  constexpr absl::string_view kMiddle = "/checkpoints/";
  const size_t middle = name.find(kMiddle);
  if (!absl::StartsWith(name, "jobs/") || middle == absl::string_view::npos || middle <= 5 ||
      middle + kMiddle.size() >= name.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint name \"", name, "\" is not of the form jobs/{job}/checkpoints/{checkpoint}"));
  }
  return std::string(name.substr(0, middle));
}

absl::StatusOr<EncodedBatch> Encode(const std::vector<v1::Job>& jobs,
                                    const std::vector<v1::JobEvent>& events,
                                    const std::vector<v1::Checkpoint>& checkpoints,
                                    const std::vector<v1::Worker>& workers,
                                    int64_t next_job_number) {
  EncodedBatch out;
  for (const v1::Job& job : jobs) {
    if (job.name().empty()) return absl::InvalidArgumentError("a job to store has no name");
    QTRAIN_ASSIGN_OR_RETURN(std::string proto, Serialize(job, job.name()));
    out.jobs.push_back({job.name(), job.request_id(), std::move(proto), job.state()});
  }
  for (const v1::JobEvent& event : events) {
    if (event.job().empty()) return absl::InvalidArgumentError("an event to store names no job");
    if (event.sequence() <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("event of ", event.job(), " has sequence ",
                                                     event.sequence(), "; sequences start at 1"));
    }
    QTRAIN_ASSIGN_OR_RETURN(
        std::string proto,
        Serialize(event, absl::StrCat("event ", event.sequence(), " of ", event.job())));
    out.events.push_back({event.job(), EventKind(event), std::move(proto), event.sequence(),
                          TimestampMicros(event.time())});
  }
  for (const v1::Checkpoint& checkpoint : checkpoints) {
    QTRAIN_ASSIGN_OR_RETURN(std::string job, CheckpointJob(checkpoint.name()));
    QTRAIN_ASSIGN_OR_RETURN(std::string proto, Serialize(checkpoint, checkpoint.name()));
    out.checkpoints.push_back({checkpoint.name(), std::move(job), std::move(proto),
                               checkpoint.step(), checkpoint.state()});
  }
  for (const v1::Worker& worker : workers) {
    if (worker.name().empty()) return absl::InvalidArgumentError("a worker to store has no name");
    QTRAIN_ASSIGN_OR_RETURN(std::string proto, Serialize(worker, worker.name()));
    out.workers.push_back({worker.name(), std::move(proto)});
  }
  if (next_job_number < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("next job number ", next_job_number, " is negative"));
  }
  out.next_job_number = next_job_number;
  return out;
}

template <typename Proto>
absl::StatusOr<Proto> Decode(absl::string_view blob, absl::string_view path,
                             absl::string_view table, absl::string_view key) {
  Proto proto;
  if (!proto.ParseFromArray(blob.data(), static_cast<int>(blob.size()))) {
    return absl::DataLossError(absl::StrCat(path, ": the ", table, " row \"", key,
                                            "\" does not hold a valid ",
                                            Proto::descriptor()->name(), " (corrupt database)"));
  }
  return proto;
}

// Reads the single integer a PRAGMA or aggregate query returns.
absl::StatusOr<int64_t> QueryInt(sqlite3* db, absl::string_view sql, absl::string_view path) {
  QTRAIN_ASSIGN_OR_RETURN(sqlite::Statement statement, sqlite::Statement::Prepare(db, sql, path));
  QTRAIN_ASSIGN_OR_RETURN(bool row, statement.Step());
  if (!row) return absl::InternalError(absl::StrCat(path, ": \"", sql, "\" returned no row"));
  return statement.ColumnInt64(0);
}

absl::StatusOr<std::string> QueryText(sqlite3* db, absl::string_view sql, absl::string_view path) {
  QTRAIN_ASSIGN_OR_RETURN(sqlite::Statement statement, sqlite::Statement::Prepare(db, sql, path));
  QTRAIN_ASSIGN_OR_RETURN(bool row, statement.Step());
  if (!row) return absl::InternalError(absl::StrCat(path, ": \"", sql, "\" returned no row"));
  return std::string(statement.ColumnText(0));
}

}  // namespace

// --- StoreBatch -------------------------------------------------------------------------------

void StoreBatch::PutJob(const v1::Job& job) { jobs_.push_back(job); }
void StoreBatch::AppendEvent(const v1::JobEvent& event) { events_.push_back(event); }
void StoreBatch::PutCheckpoint(const v1::Checkpoint& checkpoint) {
  checkpoints_.push_back(checkpoint);
}
void StoreBatch::PutWorker(const v1::Worker& worker) { workers_.push_back(worker); }
void StoreBatch::SetNextJobNumber(int64_t next) { next_job_number_ = next; }
bool StoreBatch::empty() const {
  return jobs_.empty() && events_.empty() && checkpoints_.empty() && workers_.empty() &&
         next_job_number_ == 0;
}

// --- Store ------------------------------------------------------------------------------------

struct Store::Impl {
  std::string path;
  int version = 0;
  absl::Mutex mu;
  // Declared before the statements, so that it is closed after they are finalized.
  DbHandle db;
  sqlite::Statement put_job ABSL_GUARDED_BY(mu);
  sqlite::Statement append_event ABSL_GUARDED_BY(mu);
  sqlite::Statement put_checkpoint ABSL_GUARDED_BY(mu);
  sqlite::Statement put_worker ABSL_GUARDED_BY(mu);
  sqlite::Statement put_next_job_number ABSL_GUARDED_BY(mu);
  sqlite::Statement load_jobs ABSL_GUARDED_BY(mu);
  sqlite::Statement load_checkpoints ABSL_GUARDED_BY(mu);
  sqlite::Statement load_workers ABSL_GUARDED_BY(mu);
  sqlite::Statement load_last_sequences ABSL_GUARDED_BY(mu);
  sqlite::Statement load_next_job_number ABSL_GUARDED_BY(mu);
  sqlite::Statement read_all_events ABSL_GUARDED_BY(mu);
  sqlite::Statement read_events_without_steps ABSL_GUARDED_BY(mu);

  absl::Status Prepare() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  absl::Status WriteLocked(const EncodedBatch& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  absl::Status LoadLocked(StoredState& state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  void RollbackLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
};

absl::Status Store::Impl::Prepare() {
  struct Entry {
    sqlite::Statement* statement;
    const char* sql;
  };
  const Entry entries[] = {
      // A new job gets the next creation sequence; an existing one keeps its own (an upsert
      // updates the row in place, so its events and checkpoints keep their parent).
      {&put_job,
       "INSERT INTO jobs(name, request_id, create_seq, state, proto) VALUES "
       "(?1, ?2, (SELECT COALESCE(MAX(create_seq), 0) + 1 FROM jobs), ?3, ?4) "
       "ON CONFLICT(name) DO UPDATE SET request_id = excluded.request_id, "
       "state = excluded.state, proto = excluded.proto"},
      {&append_event,
       "INSERT INTO events(job, sequence, kind, time, proto) VALUES (?1, ?2, ?3, ?4, ?5)"},
      {&put_checkpoint,
       "INSERT INTO checkpoints(name, job, step, state, proto) VALUES (?1, ?2, ?3, ?4, ?5) "
       "ON CONFLICT(name) DO UPDATE SET job = excluded.job, step = excluded.step, "
       "state = excluded.state, proto = excluded.proto"},
      {&put_worker,
       "INSERT INTO workers(name, proto) VALUES (?1, ?2) "
       "ON CONFLICT(name) DO UPDATE SET proto = excluded.proto"},
      // The counter only moves forward: numbers once used are never handed out again.
      {&put_next_job_number,
       "INSERT INTO meta(key, value) VALUES ('next_job_number', ?1) "
       "ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)"},
      {&load_jobs, "SELECT name, proto FROM jobs ORDER BY create_seq"},
      {&load_checkpoints, "SELECT name, proto FROM checkpoints ORDER BY job, step, name"},
      {&load_workers, "SELECT name, proto FROM workers ORDER BY name"},
      {&load_last_sequences,
       "SELECT name, (SELECT MAX(sequence) FROM events WHERE events.job = jobs.name) "
       "FROM jobs ORDER BY create_seq"},
      {&load_next_job_number, "SELECT value FROM meta WHERE key = 'next_job_number'"},
      {&read_all_events,
       "SELECT sequence, proto FROM events WHERE job = ?1 AND sequence > ?2 "
       "ORDER BY sequence LIMIT ?3"},
      // The kind term matches the partial index events_without_step_metrics.
      {&read_events_without_steps,
       "SELECT sequence, proto FROM events WHERE job = ?1 AND sequence > ?2 "
       "AND kind <> 'step_metrics' ORDER BY sequence LIMIT ?3"},
  };
  for (const Entry& entry : entries) {
    QTRAIN_ASSIGN_OR_RETURN(*entry.statement,
                            sqlite::Statement::Prepare(db.get(), entry.sql, path));
  }
  return absl::OkStatus();
}

namespace {

// Checks the file's identity and version before anything is written to it.
absl::StatusOr<int> CheckExisting(sqlite3* db, const std::string& path) {
  // The first read of the header: a file that is not SQLite fails here (DATA_LOSS).
  QTRAIN_ASSIGN_OR_RETURN(int64_t version, QueryInt(db, "PRAGMA user_version", path));
  QTRAIN_ASSIGN_OR_RETURN(int64_t application_id, QueryInt(db, "PRAGMA application_id", path));
  QTRAIN_ASSIGN_OR_RETURN(int64_t objects,
                          QueryInt(db, "SELECT COUNT(*) FROM sqlite_master", path));
  if (version > kStoreSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": the database has schema version ", version,
        ", newer than this qtrain-coordinator's version ", kStoreSchemaVersion,
        "; it was written by a newer qtrain-coordinator (run that one, or a newer build)"));
  }
  if (version < 0 || ((version != 0 || objects != 0) && application_id != kStoreApplicationId)) {
    return absl::DataLossError(
        absl::StrCat(path, ": an SQLite database, but not a qtrain coordinator database (",
                     "application_id ", application_id, ", schema version ", version, ")"));
  }
  if (objects != 0) {
    // A truncated or damaged file often still opens; quick_check walks every page.
    QTRAIN_ASSIGN_OR_RETURN(std::string check, QueryText(db, "PRAGMA quick_check(1)", path));
    if (check != "ok") {
      return absl::DataLossError(absl::StrCat(path, ": the database is corrupt (integrity check: ",
                                              absl::StrReplaceAll(check, {{"\n", "; "}}), ")"));
    }
  }
  return static_cast<int>(version);
}

absl::Status Configure(sqlite3* db, const std::string& path) {
  QTRAIN_ASSIGN_OR_RETURN(std::string mode, QueryText(db, "PRAGMA journal_mode = WAL", path));
  if (mode != "wal") {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": cannot use a write-ahead log (journal mode stays \"", mode, "\")"));
  }
  // FULL: in WAL mode every commit fsyncs the log, so a commit that returned survives a crash
  // or a power loss.
  QTRAIN_RETURN_IF_ERROR(sqlite::Exec(db, "PRAGMA synchronous = FULL", path));
  QTRAIN_RETURN_IF_ERROR(sqlite::Exec(db, "PRAGMA foreign_keys = ON", path));
  QTRAIN_ASSIGN_OR_RETURN(int64_t foreign_keys, QueryInt(db, "PRAGMA foreign_keys", path));
  QTRAIN_ASSIGN_OR_RETURN(int64_t synchronous, QueryInt(db, "PRAGMA synchronous", path));
  if (foreign_keys != 1 || synchronous != 2) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": this SQLite library does not keep foreign keys or FULL sync"));
  }
  return absl::OkStatus();
}

absl::Status PrepareDirectory(const std::string& path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  std::error_code error;
  if (!parent.empty()) {
    std::filesystem::create_directories(parent, error);
    if (error) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot create the directory ", parent.string(), " for ", path, ": ", error.message()));
    }
  }
  if (std::filesystem::is_directory(path, error)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " is a directory, not a database file"));
  }
  return absl::OkStatus();
}

// SQLite takes a file shorter than one page for an empty database and would write a new schema
// over it; an existing file must start like an SQLite database. (An empty file is new: SQLite
// creates it before the first transaction, which goes to the write-ahead log.)
absl::Status CheckFileHeader(const std::string& path) {
  constexpr absl::string_view kMagic("SQLite format 3\0", 16);
  constexpr size_t kHeaderBytes = 100;
  std::ifstream file(path, std::ios::binary);
  if (!file) return absl::OkStatus();  // absent: created by the open
  char header[kHeaderBytes];
  file.read(header, sizeof(header));
  const size_t got = static_cast<size_t>(file.gcount());
  if (got == 0) return absl::OkStatus();
  if (absl::string_view(header, std::min(got, kMagic.size())) !=
      kMagic.substr(0, std::min(got, kMagic.size()))) {
    return absl::DataLossError(
        absl::StrCat(path, ": not a qtrain coordinator database (not an SQLite file)"));
  }
  std::error_code error;
  const bool has_log = std::filesystem::file_size(path + "-wal", error) > 0 && !error;
  if (got < kHeaderBytes && !has_log) {
    return absl::DataLossError(absl::StrCat(path, ": the database is truncated (", got,
                                            " bytes, shorter than its header)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError("the store's database path is empty");
  QTRAIN_RETURN_IF_ERROR(PrepareDirectory(path));
  QTRAIN_RETURN_IF_ERROR(CheckFileHeader(path));
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  sqlite3* raw = nullptr;
  const int rc =
      sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
  impl->db.reset(raw);  // closed on every path, also when the open failed
  if (rc != SQLITE_OK) return sqlite::Error(raw, rc, path, "opening the database");
  sqlite3* db = impl->db.get();
  sqlite3_extended_result_codes(db, 1);
  if (const int busy = sqlite3_busy_timeout(db, kBusyTimeoutMs); busy != SQLITE_OK) {
    return sqlite::Error(db, busy, path, "setting the busy timeout");
  }
  QTRAIN_ASSIGN_OR_RETURN(int version, CheckExisting(db, path));
  QTRAIN_RETURN_IF_ERROR(Configure(db, path));
  QTRAIN_RETURN_IF_ERROR(ApplyMigrations(db, path, version));
  QTRAIN_ASSIGN_OR_RETURN(int64_t migrated, QueryInt(db, "PRAGMA user_version", path));
  impl->version = static_cast<int>(migrated);
  {
    absl::MutexLock lock(&impl->mu);
    QTRAIN_RETURN_IF_ERROR(impl->Prepare());
  }
  // The database and its log were possibly just created: make their directory entries durable.
  const std::string parent = std::filesystem::path(path).parent_path().string();
  QTRAIN_RETURN_IF_ERROR(SyncDirectory(parent.empty() ? "." : parent));
  return std::unique_ptr<Store>(new Store(std::move(impl)));
}

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Store::~Store() = default;

int Store::schema_version() const { return impl_->version; }

void Store::Impl::RollbackLocked() {
  // ROLLBACK of a transaction that SQLite already rolled back (some errors do) is a no-op here.
  if (!sqlite3_get_autocommit(db.get())) {
    sqlite3_exec(db.get(), "ROLLBACK", nullptr, nullptr, nullptr);
  }
}

absl::Status Store::Impl::WriteLocked(const EncodedBatch& batch) {
  for (const JobRow& row : batch.jobs) {
    sqlite::ScopedReset reset(put_job);
    QTRAIN_RETURN_IF_ERROR(put_job.BindText(1, row.name));
    QTRAIN_RETURN_IF_ERROR(row.request_id.empty() ? put_job.BindNull(2)
                                                  : put_job.BindText(2, row.request_id));
    QTRAIN_RETURN_IF_ERROR(put_job.BindInt64(3, row.state));
    QTRAIN_RETURN_IF_ERROR(put_job.BindBlob(4, row.proto));
    absl::Status status = put_job.Run();
    if (absl::IsAlreadyExists(status)) {
      return absl::AlreadyExistsError(absl::StrCat("cannot store ", row.name, ": request_id \"",
                                                   row.request_id, "\" belongs to another job (",
                                                   status.message(), ")"));
    }
    QTRAIN_RETURN_IF_ERROR(Annotate(status, absl::StrCat("storing ", row.name)));
  }
  for (const EventRow& row : batch.events) {
    sqlite::ScopedReset reset(append_event);
    QTRAIN_RETURN_IF_ERROR(append_event.BindText(1, row.job));
    QTRAIN_RETURN_IF_ERROR(append_event.BindInt64(2, row.sequence));
    QTRAIN_RETURN_IF_ERROR(append_event.BindText(3, row.kind));
    QTRAIN_RETURN_IF_ERROR(append_event.BindInt64(4, row.time_us));
    QTRAIN_RETURN_IF_ERROR(append_event.BindBlob(5, row.proto));
    absl::Status status = append_event.Run();
    if (absl::IsAlreadyExists(status)) {
      return absl::AlreadyExistsError(absl::StrCat("event ", row.sequence, " of ", row.job,
                                                   " is already stored (", status.message(), ")"));
    }
    QTRAIN_RETURN_IF_ERROR(
        Annotate(status, absl::StrCat("storing event ", row.sequence, " of ", row.job,
                                      " (a job's events need the job stored first)")));
  }
  for (const CheckpointRow& row : batch.checkpoints) {
    sqlite::ScopedReset reset(put_checkpoint);
    QTRAIN_RETURN_IF_ERROR(put_checkpoint.BindText(1, row.name));
    QTRAIN_RETURN_IF_ERROR(put_checkpoint.BindText(2, row.job));
    QTRAIN_RETURN_IF_ERROR(put_checkpoint.BindInt64(3, row.step));
    QTRAIN_RETURN_IF_ERROR(put_checkpoint.BindInt64(4, row.state));
    QTRAIN_RETURN_IF_ERROR(put_checkpoint.BindBlob(5, row.proto));
    QTRAIN_RETURN_IF_ERROR(
        Annotate(put_checkpoint.Run(), absl::StrCat("storing ", row.name,
                                                    " (a job's checkpoints need the job stored "
                                                    "first)")));
  }
  for (const WorkerRow& row : batch.workers) {
    sqlite::ScopedReset reset(put_worker);
    QTRAIN_RETURN_IF_ERROR(put_worker.BindText(1, row.name));
    QTRAIN_RETURN_IF_ERROR(put_worker.BindBlob(2, row.proto));
    QTRAIN_RETURN_IF_ERROR(Annotate(put_worker.Run(), absl::StrCat("storing ", row.name)));
  }
  if (batch.next_job_number > 0) {
    sqlite::ScopedReset reset(put_next_job_number);
    QTRAIN_RETURN_IF_ERROR(put_next_job_number.BindInt64(1, batch.next_job_number));
    QTRAIN_RETURN_IF_ERROR(Annotate(put_next_job_number.Run(), "storing the next job number"));
  }
  return absl::OkStatus();
}

absl::Status Store::Commit(const StoreBatch& batch) {
  if (batch.empty()) return absl::OkStatus();
  QTRAIN_ASSIGN_OR_RETURN(EncodedBatch encoded,
                          Encode(batch.jobs_, batch.events_, batch.checkpoints_, batch.workers_,
                                 batch.next_job_number_));
  absl::MutexLock lock(&impl_->mu);
  sqlite3* db = impl_->db.get();
  // IMMEDIATE: take the write lock now, so the transaction cannot fail half-way for a lock.
  QTRAIN_RETURN_IF_ERROR(sqlite::Exec(db, "BEGIN IMMEDIATE", impl_->path));
  absl::Status status = impl_->WriteLocked(encoded);
  if (status.ok()) status = sqlite::Exec(db, "COMMIT", impl_->path);
  if (!status.ok()) {
    impl_->RollbackLocked();
    return status;
  }
  return absl::OkStatus();
}

absl::Status Store::Impl::LoadLocked(StoredState& state) {
  {
    sqlite::ScopedReset reset(load_jobs);
    while (true) {
      QTRAIN_ASSIGN_OR_RETURN(bool row, load_jobs.Step());
      if (!row) break;
      QTRAIN_ASSIGN_OR_RETURN(v1::Job job, Decode<v1::Job>(load_jobs.ColumnBlob(1), path, "jobs",
                                                           load_jobs.ColumnText(0)));
      state.jobs.push_back(std::move(job));
    }
  }
  {
    sqlite::ScopedReset reset(load_checkpoints);
    while (true) {
      QTRAIN_ASSIGN_OR_RETURN(bool row, load_checkpoints.Step());
      if (!row) break;
      QTRAIN_ASSIGN_OR_RETURN(
          v1::Checkpoint checkpoint,
          Decode<v1::Checkpoint>(load_checkpoints.ColumnBlob(1), path, "checkpoints",
                                 load_checkpoints.ColumnText(0)));
      state.checkpoints.push_back(std::move(checkpoint));
    }
  }
  {
    sqlite::ScopedReset reset(load_workers);
    while (true) {
      QTRAIN_ASSIGN_OR_RETURN(bool row, load_workers.Step());
      if (!row) break;
      QTRAIN_ASSIGN_OR_RETURN(v1::Worker worker,
                              Decode<v1::Worker>(load_workers.ColumnBlob(1), path, "workers",
                                                 load_workers.ColumnText(0)));
      state.workers.push_back(std::move(worker));
    }
  }
  {
    sqlite::ScopedReset reset(load_last_sequences);
    while (true) {
      QTRAIN_ASSIGN_OR_RETURN(bool row, load_last_sequences.Step());
      if (!row) break;
      if (load_last_sequences.ColumnIsNull(1)) continue;  // no events yet
      state.last_event_sequence.emplace_back(std::string(load_last_sequences.ColumnText(0)),
                                             load_last_sequences.ColumnInt64(1));
    }
  }
  {
    sqlite::ScopedReset reset(load_next_job_number);
    QTRAIN_ASSIGN_OR_RETURN(bool row, load_next_job_number.Step());
    state.next_job_number = row ? load_next_job_number.ColumnInt64(0) : 1;
    if (state.next_job_number < 1) {
      return absl::DataLossError(absl::StrCat(path, ": the stored next job number ",
                                              state.next_job_number, " is not positive"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<StoredState> Store::LoadState() {
  absl::MutexLock lock(&impl_->mu);
  sqlite3* db = impl_->db.get();
  // One read transaction: every table from the same snapshot.
  QTRAIN_RETURN_IF_ERROR(sqlite::Exec(db, "BEGIN", impl_->path));
  StoredState state;
  absl::Status status = impl_->LoadLocked(state);
  if (status.ok()) status = sqlite::Exec(db, "COMMIT", impl_->path);
  if (!status.ok()) {
    impl_->RollbackLocked();
    return status;
  }
  return state;
}

absl::StatusOr<std::vector<v1::JobEvent>> Store::ReadEvents(std::string_view job_name,
                                                            int64_t after_sequence, int limit,
                                                            bool include_step_metrics) {
  const absl::string_view job(job_name.data(), job_name.size());
  if (limit <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("reading events of ", job, ": limit ", limit, " must be positive"));
  }
  absl::MutexLock lock(&impl_->mu);
  sqlite::Statement& read =
      include_step_metrics ? impl_->read_all_events : impl_->read_events_without_steps;
  sqlite::ScopedReset reset(read);
  QTRAIN_RETURN_IF_ERROR(read.BindText(1, job));
  QTRAIN_RETURN_IF_ERROR(read.BindInt64(2, after_sequence));
  QTRAIN_RETURN_IF_ERROR(read.BindInt64(3, limit));
  std::vector<v1::JobEvent> events;
  while (true) {
    QTRAIN_ASSIGN_OR_RETURN(bool row, read.Step());
    if (!row) break;
    QTRAIN_ASSIGN_OR_RETURN(v1::JobEvent event,
                            Decode<v1::JobEvent>(read.ColumnBlob(1), impl_->path, "events",
                                                 absl::StrCat(job, " #", read.ColumnInt64(0))));
    events.push_back(std::move(event));
  }
  return events;
}

}  // namespace qtrain::coordinator
