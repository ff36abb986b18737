// The coordinator's durable state: one SQLite database (WAL journal, synchronous=FULL) under
// --state-dir. Everything a client was told about (a created job, a state change, an event, a
// committed checkpoint) is written with Commit() before the reply, so a coordinator killed at
// any moment and restarted loses nothing it acknowledged and duplicates nothing.
//
// The coordinator keeps its working state in memory (LoadState() at start) and writes through;
// only events are read back on demand (WatchJob replay). Rows hold the protos as binary blobs
// plus the columns that are queried.
//
//   QTRAIN_ASSIGN_OR_RETURN(std::unique_ptr<Store> store, Store::Open(state_dir +
//   "/coordinator.db")); QTRAIN_ASSIGN_OR_RETURN(StoredState state, store->LoadState()); StoreBatch
//   batch; batch.PutJob(job); batch.AppendEvent(event);
//   QTRAIN_RETURN_IF_ERROR(store->Commit(batch));   // durable when this returns
//
// Schema versions: PRAGMA user_version; Open() applies every migration above the file's
// version in one transaction each, and refuses (FAILED_PRECONDITION) a database written by a
// newer coordinator.
#ifndef QTRAIN_COORDINATOR_STORE_H_
#define QTRAIN_COORDINATOR_STORE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "qtrain/v1/jobs.pb.h"

namespace qtrain::coordinator {

// The schema version this build writes.
inline constexpr int kStoreSchemaVersion = 1;

// The largest serialized proto (job, event, checkpoint, worker) Commit() stores; a larger one
// is refused with INVALID_ARGUMENT.
inline constexpr size_t kMaxStoredProtoBytes = size_t{16} << 20;

// Everything loaded at start.
struct StoredState {
  std::vector<v1::Job> jobs;  // in creation order (oldest first)
  // Every job's checkpoints (Checkpoint.name is "jobs/{job}/checkpoints/{checkpoint}").
  std::vector<v1::Checkpoint> checkpoints;
  std::vector<v1::Worker> workers;
  // The highest event sequence stored per job name (absent: none).
  std::vector<std::pair<std::string, int64_t>> last_event_sequence;
  // Monotonic counter for new job ids (never reused, even after jobs are gone).
  int64_t next_job_number = 1;
};

// Changes written together in one transaction.
class StoreBatch {
 public:
  // Inserts or replaces the job with this name. A new job must carry a request_id that no
  // other job has (Commit() fails with ALREADY_EXISTS otherwise, writing nothing).
  void PutJob(const v1::Job& job);
  // Appends an event; (job, sequence) must be new (ALREADY_EXISTS otherwise).
  void AppendEvent(const v1::JobEvent& event);
  // Inserts or replaces the checkpoint with this name.
  void PutCheckpoint(const v1::Checkpoint& checkpoint);
  void PutWorker(const v1::Worker& worker);
  // Records that job numbers below `next` are used.
  void SetNextJobNumber(int64_t next);
  bool empty() const;

 private:
  friend class Store;
  std::vector<v1::Job> jobs_;
  std::vector<v1::JobEvent> events_;
  std::vector<v1::Checkpoint> checkpoints_;
  std::vector<v1::Worker> workers_;
  int64_t next_job_number_ = 0;  // 0: unchanged
};

class Store {
 public:
  // Opens (creating it and its directory if needed) and migrates the database at `path`.
  // FAILED_PRECONDITION for a database of a newer schema; DATA_LOSS for a file that is not a
  // qtrain database (or is corrupt), naming the path.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& path);
  ~Store();

  int schema_version() const;

  absl::StatusOr<StoredState> LoadState();

  // Writes the batch in one transaction; durable (fsynced) when it returns OK; nothing of it
  // is written otherwise.
  absl::Status Commit(const StoreBatch& batch);

  // Up to `limit` events of `job` with sequence > after_sequence, in sequence order. With
  // `include_step_metrics` false, step_metrics events are left out.
  absl::StatusOr<std::vector<v1::JobEvent>> ReadEvents(std::string_view job, int64_t after_sequence,
                                                       int limit, bool include_step_metrics);

  struct Impl;

 private:
  explicit Store(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace qtrain::coordinator

#endif  // QTRAIN_COORDINATOR_STORE_H_
