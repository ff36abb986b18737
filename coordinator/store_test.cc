#include "coordinator/store.h"

#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "coordinator/store_schema.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace qtrain::coordinator {
namespace {

using ::google::protobuf::util::MessageDifferencer;
using ::testing::HasSubstr;

// A fresh directory per test.
std::string TestDir(const std::string& name) {
  const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

v1::Job MakeJob(absl::string_view id, absl::string_view request_id,
                v1::JobState state = v1::JOB_STATE_QUEUED) {
  v1::Job job;
  job.set_name(absl::StrCat("jobs/", id));
  job.set_request_id(std::string(request_id));
  job.set_state(state);
  job.mutable_spec()->set_name(std::string(id));
  job.mutable_spec()->set_tokenizer("/data/tokenizer.json");
  job.mutable_create_time()->set_seconds(1700000000);
  job.set_run_directory(absl::StrCat("/runs/", id));
  return job;
}

v1::JobEvent StateEvent(absl::string_view job, int64_t sequence) {
  v1::JobEvent event;
  event.set_job(std::string(job));
  event.set_sequence(sequence);
  event.mutable_time()->set_seconds(1700000000 + sequence);
  event.mutable_time()->set_nanos(123000);
  event.mutable_state_changed()->set_from(v1::JOB_STATE_QUEUED);
  event.mutable_state_changed()->set_to(v1::JOB_STATE_SCHEDULING);
  return event;
}

v1::JobEvent StepEvent(absl::string_view job, int64_t sequence) {
  v1::JobEvent event;
  event.set_job(std::string(job));
  event.set_sequence(sequence);
  event.mutable_step_metrics()->set_step(sequence);
  event.mutable_step_metrics()->set_loss(10.0 / static_cast<double>(sequence));
  return event;
}

v1::Checkpoint MakeCheckpoint(absl::string_view job, int64_t step) {
  v1::Checkpoint checkpoint;
  checkpoint.set_name(absl::StrCat(job, "/checkpoints/step-", step));
  checkpoint.set_state(v1::CHECKPOINT_STATE_COMMITTED);
  checkpoint.set_step(step);
  checkpoint.set_directory(absl::StrCat("/runs/x/checkpoints/step-", step));
  v1::CheckpointFile* file = checkpoint.add_files();
  file->set_path("model.safetensors");
  file->set_sha256(std::string(64, 'a'));
  file->set_size_bytes(4096);
  return checkpoint;
}

v1::Worker MakeWorker(absl::string_view id) {
  v1::Worker worker;
  worker.set_name(absl::StrCat("workers/", id));
  worker.set_hostname("host");
  worker.set_device(v1::DEVICE_KIND_CPU);
  worker.set_state(v1::WORKER_STATE_IDLE);
  (*worker.mutable_labels())["zone"] = "a";
  return worker;
}

std::unique_ptr<Store> OpenOrDie(const std::string& path) {
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(*store) : nullptr;
}

// Runs SQL on the file directly, as another program would.
void RawExec(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* error = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error);
  EXPECT_EQ(rc, SQLITE_OK) << (error != nullptr ? error : "");
  sqlite3_free(error);
  sqlite3_close(db);
}

std::string RawQueryPlan(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  std::string plan;
  EXPECT_EQ(sqlite3_prepare_v2(db, ("EXPLAIN QUERY PLAN " + sql).c_str(), -1, &stmt, nullptr),
            SQLITE_OK);
  while (sqlite3_step(stmt) == SQLITE_ROW) {
    plan += reinterpret_cast<const char*>(sqlite3_column_text(stmt, 3));
    plan += "\n";
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return plan;
}

template <typename Proto>
void ExpectProtosEqual(const std::vector<Proto>& actual, const std::vector<Proto>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    EXPECT_TRUE(MessageDifferencer::Equals(actual[i], expected[i]))
        << "#" << i << ":\n"
        << actual[i].DebugString() << "expected:\n"
        << expected[i].DebugString();
  }
}

TEST(StoreTest, NewDatabaseIsEmptyAndCreatesItsDirectory) {
  const std::string path = TestDir("new") + "/state/sub/coordinator.db";
  std::unique_ptr<Store> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->schema_version(), kStoreSchemaVersion);
  absl::StatusOr<StoredState> state = store->LoadState();
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ((state->jobs).size(), static_cast<size_t>(0));
  EXPECT_EQ((state->checkpoints).size(), static_cast<size_t>(0));
  EXPECT_EQ((state->workers).size(), static_cast<size_t>(0));
  EXPECT_EQ((state->last_event_sequence).size(), static_cast<size_t>(0));
  EXPECT_EQ(state->next_job_number, 1);
  EXPECT_TRUE(std::filesystem::exists(path));
}

TEST(StoreTest, RoundTripsEveryKindAcrossReopen) {
  const std::string path = TestDir("roundtrip") + "/coordinator.db";
  // Created in this order; names sort the other way, so the order must come from creation.
  std::vector<v1::Job> jobs = {MakeJob("zeta-1", "r1"), MakeJob("alpha-2", "r2")};
  std::vector<v1::Checkpoint> checkpoints = {MakeCheckpoint("jobs/zeta-1", 10),
                                             MakeCheckpoint("jobs/zeta-1", 20),
                                             MakeCheckpoint("jobs/alpha-2", 5)};
  std::vector<v1::Worker> workers = {MakeWorker("a-1"), MakeWorker("b-2")};
  std::vector<v1::JobEvent> events = {StateEvent("jobs/zeta-1", 1), StepEvent("jobs/zeta-1", 2),
                                      StateEvent("jobs/alpha-2", 1)};
  v1::JobEvent eval;
  eval.set_job("jobs/zeta-1");
  eval.set_sequence(3);
  eval.mutable_eval_metrics()->set_loss(2.5);
  events.push_back(eval);
  {
    std::unique_ptr<Store> store = OpenOrDie(path);
    ASSERT_NE(store, nullptr);
    StoreBatch first;
    first.PutJob(jobs[0]);
    first.SetNextJobNumber(2);
    ASSERT_TRUE(store->Commit(first).ok());
    StoreBatch second;
    second.PutJob(jobs[1]);
    for (const v1::JobEvent& event : events) second.AppendEvent(event);
    for (const v1::Checkpoint& checkpoint : checkpoints) second.PutCheckpoint(checkpoint);
    for (const v1::Worker& worker : workers) second.PutWorker(worker);
    second.SetNextJobNumber(3);
    ASSERT_TRUE(store->Commit(second).ok());
    // An update keeps the job's place in the creation order.
    jobs[0].set_state(v1::JOB_STATE_RUNNING);
    jobs[0].mutable_progress()->set_step(7);
    workers[0].set_state(v1::WORKER_STATE_ASSIGNED);
    checkpoints[2].set_state(v1::CHECKPOINT_STATE_DELETED);
    StoreBatch update;
    update.PutJob(jobs[0]);
    update.PutWorker(workers[0]);
    update.PutCheckpoint(checkpoints[2]);
    ASSERT_TRUE(store->Commit(update).ok());
  }
  std::unique_ptr<Store> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  absl::StatusOr<StoredState> state = store->LoadState();
  ASSERT_TRUE(state.ok()) << state.status();
  ExpectProtosEqual(state->jobs, jobs);
  ExpectProtosEqual(state->workers, workers);
  // Checkpoints come grouped by job, by step.
  ExpectProtosEqual(state->checkpoints, {checkpoints[2], checkpoints[0], checkpoints[1]});
  EXPECT_THAT(state->last_event_sequence,
              ::testing::UnorderedElementsAre(std::pair<std::string, int64_t>("jobs/zeta-1", 3),
                                              std::pair<std::string, int64_t>("jobs/alpha-2", 1)));
  EXPECT_EQ(state->next_job_number, 3);
  absl::StatusOr<std::vector<v1::JobEvent>> zeta = store->ReadEvents("jobs/zeta-1", 0, 100, true);
  ASSERT_TRUE(zeta.ok()) << zeta.status();
  ExpectProtosEqual(*zeta, {events[0], events[1], events[3]});
}

TEST(StoreTest, NextJobNumberNeverMovesBack) {
  const std::string path = TestDir("counter") + "/coordinator.db";
  std::unique_ptr<Store> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  StoreBatch up;
  up.SetNextJobNumber(9);
  ASSERT_TRUE(store->Commit(up).ok());
  StoreBatch down;
  down.SetNextJobNumber(4);
  ASSERT_TRUE(store->Commit(down).ok());
  EXPECT_EQ(store->LoadState()->next_job_number, 9);
  StoreBatch negative;
  negative.SetNextJobNumber(-1);
  EXPECT_EQ(store->Commit(negative).code(), absl::StatusCode::kInvalidArgument);
}

TEST(StoreTest, RequestIdConflictRollsBackTheWholeBatch) {
  const std::string path = TestDir("request_id") + "/coordinator.db";
  std::unique_ptr<Store> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  StoreBatch first;
  first.PutJob(MakeJob("a-1", "same"));
  first.SetNextJobNumber(2);
  ASSERT_TRUE(store->Commit(first).ok());

  StoreBatch conflicting;
  conflicting.PutWorker(MakeWorker("w-1"));
  conflicting.PutJob(MakeJob("b-2", "other"));
  conflicting.AppendEvent(StateEvent("jobs/b-2", 1));
  conflicting.PutJob(MakeJob("c-3", "same"));
  conflicting.SetNextJobNumber(4);
  absl::Status status = store->Commit(conflicting);
  EXPECT_EQ(status.code(), absl::StatusCode::kAlreadyExists) << status;
  EXPECT_THAT(status.message(), HasSubstr("jobs/c-3"));
  EXPECT_THAT(status.message(), HasSubstr("same"));

  absl::StatusOr<StoredState> state = store->LoadState();
  ASSERT_TRUE(state.ok()) << state.status();
  ASSERT_EQ((state->jobs).size(), static_cast<size_t>(1));
  EXPECT_EQ(state->jobs[0].name(), "jobs/a-1");
  EXPECT_EQ((state->workers).size(), static_cast<size_t>(0));
  EXPECT_EQ((state->last_event_sequence).size(), static_cast<size_t>(0));
  EXPECT_EQ(state->next_job_number, 2);

  // The store is still usable, and the same job may be re-put with its own request_id.
  StoreBatch again;
  v1::Job updated = MakeJob("a-1", "same", v1::JOB_STATE_CANCELLED);
  again.PutJob(updated);
  ASSERT_TRUE(store->Commit(again).ok());
  EXPECT_EQ(store->LoadState()->jobs[0].state(), v1::JOB_STATE_CANCELLED);
}

TEST(StoreTest, DuplicateEventIsAlreadyExistsAndWritesNothing) {
  const std::string path = TestDir("dup_event") + "/coordinator.db";
  std::unique_ptr<Store> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  StoreBatch first;
  first.PutJob(MakeJob("a-1", "r"));
  first.AppendEvent(StateEvent("jobs/a-1", 1));
  ASSERT_TRUE(store->Commit(first).ok());

  StoreBatch duplicate;
  v1::Job changed = MakeJob("a-1", "r", v1::JOB_STATE_RUNNING);
  duplicate.PutJob(changed);
  duplicate.AppendEvent(StateEvent("jobs/a-1", 2));
  duplicate.AppendEvent(StepEvent("jobs/a-1", 1));
  absl::Status status = store->Commit(duplicate);
  EXPECT_EQ(status.code(), absl::StatusCode::kAlreadyExists) << status;
  EXPECT_THAT(status.message(), HasSubstr("event 1 of jobs/a-1"));

  absl::StatusOr<StoredState> state = store->LoadState();
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(state->jobs[0].state(), v1::JOB_STATE_QUEUED);
  ASSERT_EQ((state->last_event_sequence).size(), static_cast<size_t>(1));
  EXPECT_EQ(state->last_event_sequence[0].second, 1);
}

TEST(StoreTest, EventOfAnUnstoredJobIsRefused) {
  const std::string path = TestDir("orphan") + "/coordinator.db";
  std::unique_ptr<Store> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  StoreBatch orphan;
  orphan.PutWorker(MakeWorker("w-1"));
  orphan.AppendEvent(StateEvent("jobs/ghost-1", 1));
  absl::Status status = store->Commit(orphan);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(status.message(), HasSubstr("jobs/ghost-1"));
  EXPECT_EQ((store->LoadState()->workers).size(), static_cast<size_t>(0));

  StoreBatch checkpoint;
  checkpoint.PutCheckpoint(MakeCheckpoint("jobs/ghost-1", 10));
  EXPECT_EQ(store->Commit(checkpoint).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(StoreTest, MalformedRecordsAreInvalidArgument) {
  const std::string path = TestDir("malformed") + "/coordinator.db";
  std::unique_ptr<Store> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  StoreBatch nameless;
  nameless.PutJob(v1::Job());
  EXPECT_EQ(store->Commit(nameless).code(), absl::StatusCode::kInvalidArgument);
  StoreBatch bad_sequence;
  bad_sequence.AppendEvent(StateEvent("jobs/a-1", 0));
  EXPECT_EQ(store->Commit(bad_sequence).code(), absl::StatusCode::kInvalidArgument);
  for (const char* name : {"jobs/a-1", "jobs//checkpoints/x", "jobs/a-1/checkpoints/", "x/y"}) {
    StoreBatch bad_checkpoint;
    v1::Checkpoint checkpoint;
    checkpoint.set_name(name);
    bad_checkpoint.PutCheckpoint(checkpoint);
    absl::Status status = store->Commit(bad_checkpoint);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_THAT(status.message(), HasSubstr(name));
  }
  StoreBatch nameless_worker;
  nameless_worker.PutWorker(v1::Worker());
  EXPECT_EQ(store->Commit(nameless_worker).code(), absl::StatusCode::kInvalidArgument);
}

TEST(StoreTest, OversizedProtoIsRefusedAndNothingIsWritten) {
  const std::string path = TestDir("oversized") + "/coordinator.db";
  std::unique_ptr<Store> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  StoreBatch batch;
  batch.PutWorker(MakeWorker("w-1"));
  v1::Job huge = MakeJob("big-1", "r");
  (*huge.mutable_spec()->mutable_labels())["blob"] = std::string(kMaxStoredProtoBytes, 'x');
  batch.PutJob(huge);
  absl::Status status = store->Commit(batch);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status.code();
  EXPECT_THAT(status.message(), HasSubstr("jobs/big-1"));
  absl::StatusOr<StoredState> state = store->LoadState();
  ASSERT_TRUE(state.ok());
  EXPECT_EQ((state->jobs).size(), static_cast<size_t>(0));
  EXPECT_EQ((state->workers).size(), static_cast<size_t>(0));
}

TEST(StoreTest, ReadEventsPagesInOrderAndFiltersStepMetrics) {
  const std::string path = TestDir("paging") + "/coordinator.db";
  std::unique_ptr<Store> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  StoreBatch batch;
  batch.PutJob(MakeJob("a-1", "r1"));
  batch.PutJob(MakeJob("b-2", "r2"));
  // Sequences 1..25 of a-1: every third one is a state change, the others step metrics. Stored
  // out of order, read back in order.
  for (int64_t sequence = 25; sequence >= 1; --sequence) {
    batch.AppendEvent(sequence % 3 == 1 ? StateEvent("jobs/a-1", sequence)
                                        : StepEvent("jobs/a-1", sequence));
  }
  batch.AppendEvent(StateEvent("jobs/b-2", 1));
  ASSERT_TRUE(store->Commit(batch).ok());

  std::vector<int64_t> seen;
  int64_t after = 0;
  int pages = 0;
  while (true) {
    absl::StatusOr<std::vector<v1::JobEvent>> page = store->ReadEvents("jobs/a-1", after, 10, true);
    ASSERT_TRUE(page.ok()) << page.status();
    if (page->empty()) break;
    ++pages;
    EXPECT_LE(page->size(), 10u);
    for (const v1::JobEvent& event : *page) {
      EXPECT_EQ(event.job(), "jobs/a-1");
      seen.push_back(event.sequence());
    }
    after = page->back().sequence();
  }
  EXPECT_EQ(pages, 3);
  std::vector<int64_t> all(25);
  for (int i = 0; i < 25; ++i) all[i] = i + 1;
  EXPECT_EQ(seen, all);

  absl::StatusOr<std::vector<v1::JobEvent>> major = store->ReadEvents("jobs/a-1", 0, 100, false);
  ASSERT_TRUE(major.ok());
  std::vector<int64_t> major_sequences;
  for (const v1::JobEvent& event : *major) {
    EXPECT_TRUE(event.has_state_changed());
    major_sequences.push_back(event.sequence());
  }
  EXPECT_EQ(major_sequences, (std::vector<int64_t>{1, 4, 7, 10, 13, 16, 19, 22, 25}));
  // Paging the filtered stream: the limit counts the events returned.
  absl::StatusOr<std::vector<v1::JobEvent>> after_ten = store->ReadEvents("jobs/a-1", 10, 2, false);
  ASSERT_TRUE(after_ten.ok());
  ASSERT_EQ((*after_ten).size(), static_cast<size_t>(2));
  EXPECT_EQ((*after_ten)[0].sequence(), 13);
  EXPECT_EQ((*after_ten)[1].sequence(), 16);

  EXPECT_EQ((*store->ReadEvents("jobs/a-1", 25, 10, true)).size(), static_cast<size_t>(0));
  EXPECT_EQ((*store->ReadEvents("jobs/none", 0, 10, true)).size(), static_cast<size_t>(0));
  EXPECT_EQ((*store->ReadEvents("jobs/b-2", 0, 10, false)).size(), static_cast<size_t>(1));
  EXPECT_EQ(store->ReadEvents("jobs/a-1", 0, 0, true).status().code(),
            absl::StatusCode::kInvalidArgument);

  // Both reads are index range scans, the filtered one on the index without step metrics.
  store.reset();
  EXPECT_THAT(RawQueryPlan(path,
                           "SELECT sequence, proto FROM events WHERE job = 'jobs/a-1' AND "
                           "sequence > 0 AND kind <> 'step_metrics' ORDER BY sequence LIMIT 5"),
              HasSubstr("USING INDEX events_without_step_metrics"));
  EXPECT_THAT(RawQueryPlan(path,
                           "SELECT sequence, proto FROM events WHERE job = 'jobs/a-1' AND "
                           "sequence > 0 ORDER BY sequence LIMIT 5"),
              HasSubstr("USING INDEX sqlite_autoindex_events_1"));
}

TEST(StoreTest, ReopenDoesNotRerunMigrations) {
  const std::string path = TestDir("migrations") + "/coordinator.db";
  {
    std::unique_ptr<Store> store = OpenOrDie(path);
    ASSERT_NE(store, nullptr);
    StoreBatch batch;
    batch.PutJob(MakeJob("a-1", "r"));
    ASSERT_TRUE(store->Commit(batch).ok());
  }
  for (int reopen = 0; reopen < 3; ++reopen) {
    std::unique_ptr<Store> store = OpenOrDie(path);
    ASSERT_NE(store, nullptr);
    EXPECT_EQ(store->schema_version(), kStoreSchemaVersion);
    absl::StatusOr<StoredState> state = store->LoadState();
    ASSERT_TRUE(state.ok()) << state.status();
    ASSERT_EQ((state->jobs).size(), static_cast<size_t>(1));
    EXPECT_EQ(state->jobs[0].name(), "jobs/a-1");
  }
  // The file records the version and uses a write-ahead log.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &stmt, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(stmt, 0), kStoreSchemaVersion);
  sqlite3_finalize(stmt);
  ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &stmt, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0)), "wal");
  sqlite3_finalize(stmt);
  sqlite3_close(db);
}

int RawUserVersion(sqlite3* db) {
  sqlite3_stmt* stmt = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &stmt, nullptr), SQLITE_OK);
  EXPECT_EQ(sqlite3_step(stmt), SQLITE_ROW);
  const int version = sqlite3_column_int(stmt, 0);
  sqlite3_finalize(stmt);
  return version;
}

TEST(StoreSchemaTest, EachMigrationIsItsOwnTransaction) {
  const std::string path = TestDir("migration_tx") + "/db";
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  const Migration migrations[] = {
      {1, "CREATE TABLE a(x INTEGER);"},
      {2, "CREATE TABLE b(x INTEGER); INSERT INTO a VALUES (1); THIS IS NOT SQL;"},
      {3, "CREATE TABLE c(x INTEGER);"},
  };
  absl::Status status = ApplyMigrations(db, path, 0, migrations);
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("schema version 2"));
  EXPECT_THAT(status.message(), HasSubstr(path));
  // Version 1 stayed; nothing of version 2 (nor 3) is there.
  EXPECT_EQ(RawUserVersion(db), 1);
  sqlite3_stmt* stmt = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db,
                               "SELECT (SELECT COUNT(*) FROM sqlite_master WHERE name IN "
                               "('b', 'c')), (SELECT COUNT(*) FROM a)",
                               -1, &stmt, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(stmt, 0), 0);
  EXPECT_EQ(sqlite3_column_int(stmt, 1), 0);
  sqlite3_finalize(stmt);
  // Once fixed, the rest applies from where it stopped.
  const Migration fixed[] = {migrations[0], {2, "CREATE TABLE b(x INTEGER);"}, migrations[2]};
  EXPECT_TRUE(ApplyMigrations(db, path, RawUserVersion(db), fixed).ok());
  EXPECT_EQ(RawUserVersion(db), 3);
  sqlite3_close(db);
}

TEST(StoreSchemaTest, MigrationsEndAtTheSchemaVersion) {
  ASSERT_FALSE(StoreMigrations().empty());
  int previous = 0;
  for (const Migration& migration : StoreMigrations()) {
    EXPECT_EQ(migration.version, previous + 1);
    previous = migration.version;
  }
  EXPECT_EQ(previous, kStoreSchemaVersion);
}

TEST(StoreTest, NewerSchemaVersionIsRefused) {
  const std::string path = TestDir("newer") + "/coordinator.db";
  {
    std::unique_ptr<Store> store = OpenOrDie(path);
    ASSERT_NE(store, nullptr);
  }
  RawExec(path, absl::StrCat("PRAGMA user_version = ", kStoreSchemaVersion + 1));
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_THAT(store.status().message(), HasSubstr(path));
  EXPECT_THAT(store.status().message(),
              HasSubstr(absl::StrCat("version ", kStoreSchemaVersion + 1)));
  EXPECT_THAT(store.status().message(), HasSubstr(absl::StrCat("version ", kStoreSchemaVersion)));
  // Left untouched: still the newer version.
  RawExec(path, "SELECT 1");
  EXPECT_FALSE(Store::Open(path).ok());
}

TEST(StoreTest, GarbageFilesAreDataLoss) {
  const std::string dir = TestDir("garbage");
  const std::vector<std::string> contents = {
      "x", "not a database at all\n", std::string(100, '\xff'),
      // A valid-looking SQLite magic with a garbage header behind it.
      std::string("SQLite format 3\0", 16) + std::string(4080, '\x7f'), std::string(8192, 'z'),
      // An SQLite file cut inside its header.
      std::string("SQLite format 3\0", 16) + std::string(20, '\0')};
  for (size_t i = 0; i < contents.size(); ++i) {
    const std::string path = absl::StrCat(dir, "/garbage-", i, ".db");
    std::ofstream(path, std::ios::binary) << contents[i];
    absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
    ASSERT_FALSE(store.ok()) << "content #" << i;
    EXPECT_EQ(store.status().code(), absl::StatusCode::kDataLoss) << store.status();
    EXPECT_THAT(store.status().message(), HasSubstr(path));
  }
}

TEST(StoreTest, ForeignSqliteDatabaseIsDataLoss) {
  const std::string path = TestDir("foreign") + "/coordinator.db";
  RawExec(path, "CREATE TABLE notes(text TEXT); INSERT INTO notes VALUES ('hello');");
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kDataLoss) << store.status();
  EXPECT_THAT(store.status().message(), HasSubstr("not a qtrain coordinator database"));
}

TEST(StoreTest, TruncatedDatabaseIsDataLoss) {
  const std::string path = TestDir("truncated") + "/coordinator.db";
  {
    std::unique_ptr<Store> store = OpenOrDie(path);
    ASSERT_NE(store, nullptr);
    StoreBatch batch;
    v1::Job job = MakeJob("a-1", "r");
    batch.PutJob(job);
    for (int64_t sequence = 1; sequence <= 300; ++sequence) {
      v1::JobEvent event = StateEvent("jobs/a-1", sequence);
      event.mutable_state_changed()->set_message(std::string(500, 'm'));
      batch.AppendEvent(event);
    }
    ASSERT_TRUE(store->Commit(batch).ok());
  }
  // Closing the last connection folds the log into the file and removes it.
  ASSERT_FALSE(std::filesystem::exists(path + "-wal"));
  const uintmax_t size = std::filesystem::file_size(path);
  ASSERT_GT(size, 100000u);
  for (uintmax_t keep : {size / 2, uintmax_t{4096}, uintmax_t{8192}, uintmax_t{4096} + 100,
                         uintmax_t{50}, size - 1000, size - 4096}) {
    const std::string copy = absl::StrCat(path, ".", keep);
    std::filesystem::copy_file(path, copy);
    std::filesystem::resize_file(copy, keep);
    absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(copy);
    ASSERT_FALSE(store.ok()) << "truncated to " << keep;
    EXPECT_EQ(store.status().code(), absl::StatusCode::kDataLoss) << store.status();
    EXPECT_THAT(store.status().message(), HasSubstr(copy));
  }
}

TEST(StoreTest, CorruptRowIsDataLossOnLoad) {
  const std::string path = TestDir("corrupt_row") + "/coordinator.db";
  {
    std::unique_ptr<Store> store = OpenOrDie(path);
    ASSERT_NE(store, nullptr);
    StoreBatch batch;
    batch.PutJob(MakeJob("a-1", "r"));
    ASSERT_TRUE(store->Commit(batch).ok());
  }
  RawExec(path, "UPDATE jobs SET proto = x'ffffffff'");
  std::unique_ptr<Store> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  absl::StatusOr<StoredState> state = store->LoadState();
  ASSERT_FALSE(state.ok());
  EXPECT_EQ(state.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(state.status().message(), HasSubstr("jobs/a-1"));
  EXPECT_THAT(state.status().message(), HasSubstr(path));
}

TEST(StoreTest, DirectoryPathIsRefused) {
  const std::string dir = TestDir("dirpath");
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(dir);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(store.status().message(), HasSubstr(dir));
  EXPECT_EQ(Store::Open("").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(StoreTest, ConcurrentCommitsFromSeveralThreads) {
  const std::string path = TestDir("threads") + "/coordinator.db";
  std::unique_ptr<Store> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  constexpr int kThreads = 4;
  constexpr int kEvents = 15;
  std::vector<std::thread> threads;
  std::vector<absl::Status> results(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string id = absl::StrCat("t-", t);
      StoreBatch create;
      create.PutJob(MakeJob(id, id));
      results[t] = store->Commit(create);
      for (int64_t sequence = 1; sequence <= kEvents && results[t].ok(); ++sequence) {
        StoreBatch batch;
        batch.AppendEvent(StepEvent(absl::StrCat("jobs/", id), sequence));
        results[t] = store->Commit(batch);
        if (results[t].ok()) results[t] = store->ReadEvents("jobs/" + id, 0, 5, true).status();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (const absl::Status& result : results) EXPECT_TRUE(result.ok()) << result;
  absl::StatusOr<StoredState> state = store->LoadState();
  ASSERT_TRUE(state.ok());
  EXPECT_EQ((state->jobs).size(), static_cast<size_t>(kThreads));
  for (const auto& [job, last] : state->last_event_sequence) EXPECT_EQ(last, kEvents) << job;
}

// --- Crash durability ---------------------------------------------------------------------

constexpr char kCrashJob[] = "jobs/crash-1";

// The child: commits batch after batch (the job updated to step N, plus event N) and reports
// each acknowledged N on `fd`. Never returns.
[[noreturn]] void CommitForever(const std::string& path, int fd) {
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
  if (!store.ok()) _exit(2);
  absl::StatusOr<StoredState> state = (*store)->LoadState();
  if (!state.ok()) _exit(3);
  int64_t next = 1;
  for (const auto& [job, last] : state->last_event_sequence) {
    if (job == kCrashJob) next = last + 1;
  }
  for (;; ++next) {
    StoreBatch batch;
    v1::Job job = MakeJob("crash-1", "crash-request", v1::JOB_STATE_RUNNING);
    job.mutable_progress()->set_step(next);
    batch.PutJob(job);
    batch.AppendEvent(StepEvent(kCrashJob, next));
    if (!(*store)->Commit(batch).ok()) _exit(4);
    if (write(fd, &next, sizeof(next)) != static_cast<ssize_t>(sizeof(next))) _exit(5);
  }
}

// Kills and reaps the child when the test ends early.
class ChildGuard {
 public:
  explicit ChildGuard(pid_t pid) : pid_(pid) {}
  ~ChildGuard() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  // SIGKILLs the child and returns its wait status.
  int KillAndReap() {
    kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }

 private:
  pid_t pid_;
};

// Reads 8-byte sequence numbers from `fd` until `deadline` (or EOF when `to_eof`), keeping the
// highest.
void ReadAcks(int fd, std::chrono::steady_clock::time_point deadline, bool to_eof,
              std::string& buffer, int64_t& highest) {
  while (true) {
    int timeout_ms = 1000;
    if (!to_eof) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return;
      timeout_ms = static_cast<int>(left.count());
    }
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, timeout_ms) <= 0) return;
    char chunk[4096];
    const ssize_t n = read(fd, chunk, sizeof(chunk));
    if (n <= 0) return;
    buffer.append(chunk, static_cast<size_t>(n));
    while (buffer.size() >= sizeof(int64_t)) {
      int64_t value = 0;
      memcpy(&value, buffer.data(), sizeof(value));
      buffer.erase(0, sizeof(value));
      highest = std::max(highest, value);
    }
  }
}

TEST(StoreCrashTest, AcknowledgedBatchesSurviveSigkill) {
  const std::string path = TestDir("crash") + "/coordinator.db";
  const unsigned seed = std::random_device()();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> delay_ms(30, 300);
  int64_t stored = 0;  // batches present after the previous round
  int64_t acknowledged_total = 0;
  for (int round = 0; round < 6; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(fds[0]);
      CommitForever(path, fds[1]);
    }
    close(fds[1]);
    ChildGuard child(pid);
    std::string buffer;
    int64_t acknowledged = 0;
    ReadAcks(fds[0], std::chrono::steady_clock::now() + std::chrono::milliseconds(delay_ms(rng)),
             /*to_eof=*/false, buffer, acknowledged);
    const int wait_status = child.KillAndReap();
    ReadAcks(fds[0], {}, /*to_eof=*/true, buffer, acknowledged);
    close(fds[0]);
    ASSERT_TRUE(WIFSIGNALED(wait_status) && WTERMSIG(wait_status) == SIGKILL)
        << "the child stopped on its own: wait status " << wait_status;
    acknowledged_total += acknowledged;

    std::unique_ptr<Store> store = OpenOrDie(path);
    ASSERT_NE(store, nullptr);
    absl::StatusOr<StoredState> state = store->LoadState();
    ASSERT_TRUE(state.ok()) << state.status();
    int64_t last = 0;
    for (const auto& [job, sequence] : state->last_event_sequence) {
      if (job == kCrashJob) last = sequence;
    }
    EXPECT_GE(last, acknowledged) << "an acknowledged batch is missing";
    EXPECT_GE(last, stored) << "a batch of an earlier round is missing";
    if (last > 0) {
      // The job row and the events agree: no batch is half there.
      ASSERT_EQ((state->jobs).size(), static_cast<size_t>(1));
      EXPECT_EQ(state->jobs[0].progress().step(), last);
      absl::StatusOr<std::vector<v1::JobEvent>> events =
          store->ReadEvents(kCrashJob, 0, static_cast<int>(last) + 10, true);
      ASSERT_TRUE(events.ok()) << events.status();
      ASSERT_EQ((*events).size(), static_cast<size_t>(last));
      for (int64_t i = 0; i < last; ++i) {
        ASSERT_EQ((*events)[i].sequence(), i + 1);
        ASSERT_EQ((*events)[i].step_metrics().step(), i + 1);
      }
    } else {
      EXPECT_EQ((state->jobs).size(), static_cast<size_t>(0));
    }
    stored = last;
  }
  EXPECT_GT(acknowledged_total, 0) << "no batch was ever acknowledged: the test checked nothing";
}

}  // namespace
}  // namespace qtrain::coordinator
