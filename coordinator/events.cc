// The event log as watchers see it: every event is read back from the store (so a replay and
// the live tail are one sequence, with nothing missed or repeated), and watchers are woken,
// never waited for, when new events are committed.
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "coordinator/coordinator.h"
#include "coordinator/names.h"

namespace qtrain::coordinator {
namespace {

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

}  // namespace

absl::Status Coordinator::CheckWatch(const v1::WatchJobRequest& request) {
  if (request.after_sequence() < 0) {
    return absl::InvalidArgumentError("after_sequence: must be >= 0");
  }
  absl::MutexLock lock(&mu_);
  return FindJobLocked(request.name(), "name").status();
}

absl::StatusOr<Coordinator::EventPage> Coordinator::ReadEvents(absl::string_view job,
                                                               int64_t after_sequence, int limit,
                                                               bool include_step_metrics) {
  int64_t last = 0;
  bool terminal = false;
  {
    absl::MutexLock lock(&mu_);
    QTRAIN_ASSIGN_OR_RETURN(JobRecord * record, FindJobLocked(job, "name"));
    // Only committed events are counted in last_sequence once the commit returned; reading up
    // to it never sees a half-written batch.
    last = record->last_sequence;
    terminal = IsTerminal(record->job.state());
  }
  EventPage page;
  page.scanned = std::max(after_sequence, last);
  if (after_sequence < last) {
    absl::MutexLock lock(&store_mu_);
    QTRAIN_ASSIGN_OR_RETURN(
        page.events,
        options_.store->ReadEvents(JobName(Id(job)), after_sequence, limit, include_step_metrics));
  }
  while (!page.events.empty() && page.events.back().sequence() > last) page.events.pop_back();
  if (static_cast<int>(page.events.size()) == limit) page.scanned = page.events.back().sequence();
  page.ended = terminal && page.scanned >= last;
  return page;
}

int64_t Coordinator::WaitForEvents(absl::string_view job, int64_t after_sequence,
                                   std::function<void()> wake) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_by_id_.find(Id(job));
  if (it == jobs_by_id_.end() || it->second->last_sequence > after_sequence ||
      IsTerminal(it->second->job.state())) {
    wake();
    return 0;
  }
  const int64_t id = next_wait_id_++;
  it->second->event_waiters.emplace_back(id, std::move(wake));
  wait_jobs_[id] = it->first;
  return id;
}

void Coordinator::CancelWait(int64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = wait_jobs_.find(id);
  if (it == wait_jobs_.end()) return;
  auto job = jobs_by_id_.find(it->second);
  wait_jobs_.erase(it);
  if (job == jobs_by_id_.end()) return;
  std::erase_if(job->second->event_waiters, [id](const auto& w) { return w.first == id; });
}

void Coordinator::WakeWatchersLocked(JobRecord& record) {
  std::vector<std::pair<int64_t, std::function<void()>>> waiters;
  waiters.swap(record.event_waiters);
  for (auto& [id, wake] : waiters) {
    wait_jobs_.erase(id);
    wake();
  }
}

}  // namespace qtrain::coordinator
