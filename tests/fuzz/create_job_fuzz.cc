// Feeds arbitrary bytes to the coordinator's CreateJob path: as spec text (YAML/JSON, the CLI's
// loader) and as a binary CreateJobRequest, into a coordinator on a temporary store, then reads
// the job back (GetJob, ListJobs). It must answer every input with a job or an error: never
// crash, hang, or store a job it cannot return.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "common/job_spec.h"
#include "coordinator/coordinator.h"
#include "coordinator/store.h"
#include "worker/model/model_source.h"

namespace {

using qtrain::coordinator::Coordinator;
using qtrain::coordinator::CoordinatorOptions;
using qtrain::coordinator::Store;

struct Fixture {
  Fixture() {
    dir = (std::filesystem::temp_directory_path() / absl::StrCat("create_job_fuzz_", getpid()))
              .string();
    std::filesystem::remove_all(dir);
    auto opened = Store::Open(dir + "/coordinator.db");
    if (!opened.ok()) __builtin_trap();
    store = *std::move(opened);
    CoordinatorOptions options;
    options.store = store.get();
    options.run_root = dir + "/runs";
    options.plan_data = [](const qtrain::v1::JobSpec&, int, int64_t, int64_t, int,
                           int) -> absl::StatusOr<qtrain::v1::DataAssignment> {
      return qtrain::v1::DataAssignment();
    };
    auto c = Coordinator::Create(options);
    if (!c.ok()) __builtin_trap();
    coordinator = *std::move(c);
  }
  ~Fixture() { std::filesystem::remove_all(dir); }
  std::string dir;
  std::unique_ptr<Store> store;
  std::unique_ptr<Coordinator> coordinator;
  int64_t requests = 0;
};

void Submit(Fixture& f, const qtrain::v1::CreateJobRequest& request) {
  auto job = f.coordinator->CreateJob(request);
  if (!job.ok()) {
    const absl::StatusCode code = job.status().code();
    if (code != absl::StatusCode::kInvalidArgument && code != absl::StatusCode::kAlreadyExists) {
      __builtin_trap();
    }
    return;
  }
  // Accepted: it can be read back, and listed.
  qtrain::v1::GetJobRequest get;
  get.set_name(job->name());
  auto got = f.coordinator->GetJob(get);
  if (!got.ok() || got->name() != job->name()) __builtin_trap();
  qtrain::v1::ListJobsRequest list;
  list.set_page_size(1);
  auto listed = f.coordinator->ListJobs(list);
  if (!listed.ok() || listed->jobs_size() != 1) __builtin_trap();
  // A retry returns the same job.
  auto again = f.coordinator->CreateJob(request);
  if (!again.ok() || again->name() != job->name()) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Fixture* fixture = new Fixture();
  if (size > 64 * 1024) return 0;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  // As spec text, through the CLI's loader.
  auto spec = qtrain::ParseJobSpec(bytes, "fuzz.yaml", qtrain::model::ModelAwareJobSpecOptions());
  if (spec.ok()) {
    qtrain::v1::CreateJobRequest request;
    *request.mutable_spec() = *spec;
    request.set_request_id(absl::StrCat("text-", fixture->requests++));
    Submit(*fixture, request);
  }
  // As a binary request, whatever it holds.
  qtrain::v1::CreateJobRequest request;
  if (request.ParseFromArray(data, static_cast<int>(size))) Submit(*fixture, request);
  return 0;
}
