#include "worker/daemon/parent_link.h"

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "google/protobuf/util/json_util.h"

namespace qtrain::worker {
namespace {

// A parent line longer than this is not a StageParentMessage: it is dropped, not buffered.
constexpr size_t kMaxLineBytes = size_t{1} << 20;
constexpr int kPollMs = 50;

}  // namespace

absl::Status EventWriter::Write(const v1::StageChildEvent& event) {
  std::string line;
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(event, &line, print).ok()) {
    return absl::InternalError("cannot encode an event as JSON");
  }
  line.push_back('\n');
  absl::MutexLock lock(&mu_);
  size_t done = 0;
  while (done < line.size()) {  // one write() unless the pipe takes the line in parts
    const ssize_t n = ::write(fd_, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot write to the parent: ", n < 0 ? std::strerror(errno) : "closed"));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

void ParentLink::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void ParentLink::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

bool ParentLink::orphaned() const {
  absl::MutexLock lock(&mu_);
  return orphaned_;
}

std::string ParentLink::orphan_reason() const {
  absl::MutexLock lock(&mu_);
  return orphan_reason_;
}

void ParentLink::MarkOrphaned(std::string reason) {
  absl::MutexLock lock(&mu_);
  if (orphaned_) return;
  orphaned_ = true;
  orphan_reason_ = std::move(reason);
  QTRAIN_LOG(WARNING) << "stage child: " << orphan_reason_ << "; stopping";
}

void ParentLink::ExpectAck() {
  absl::MutexLock lock(&mu_);
  ack_.reset();
}

absl::StatusOr<v1::CheckpointAck> ParentLink::WaitForAck(const std::function<bool()>& cancelled) {
  absl::MutexLock lock(&mu_);
  const auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return ack_.has_value() || orphaned_;
  };
  while (!mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Milliseconds(kPollMs))) {
    if (cancelled && cancelled()) {
      return absl::CancelledError("cancelled while waiting for the checkpoint's commit");
    }
  }
  if (!ack_.has_value()) return absl::UnavailableError(orphan_reason_);
  v1::CheckpointAck ack = *std::move(ack_);
  ack_.reset();
  return ack;
}

void ParentLink::HandleLine(const std::string& line) {
  v1::StageParentMessage message;
  if (!google::protobuf::util::JsonStringToMessage(line, &message).ok()) {
    QTRAIN_LOG(WARNING) << "stage child: ignoring a line from the parent that is not a "
                           "StageParentMessage ("
                        << line.size() << " bytes)";
    return;
  }
  if (message.has_checkpoint_ack()) {
    absl::MutexLock lock(&mu_);
    ack_ = message.checkpoint_ack();
  }
}

void ParentLink::Loop() {
  std::string buffer;
  bool dropping = false;  // inside an over-long line
  absl::Time last_heard = absl::Now();
  char chunk[4096];
  while (!stop_) {
    pollfd p{.fd = fd_, .events = POLLIN, .revents = 0};
    const int ready = ::poll(&p, 1, kPollMs);
    if (ready < 0 && errno != EINTR) {
      MarkOrphaned(absl::StrCat("cannot poll the parent's stream: ", std::strerror(errno)));
      return;
    }
    if (ready > 0) {
      const ssize_t n = ::read(fd_, chunk, sizeof(chunk));
      if (n == 0) {
        MarkOrphaned("the parent closed its stream");
        return;
      }
      if (n < 0 && errno != EINTR && errno != EAGAIN) {
        MarkOrphaned(absl::StrCat("cannot read the parent's stream: ", std::strerror(errno)));
        return;
      }
      for (ssize_t i = 0; i < n; ++i) {
        if (chunk[i] != '\n') {
          if (!dropping) buffer.push_back(chunk[i]);
          if (buffer.size() > kMaxLineBytes) {
            dropping = true;
            buffer.clear();
          }
          continue;
        }
        last_heard = absl::Now();  // any line, even one not understood, is a sign of life
        if (!dropping && !buffer.empty()) HandleLine(buffer);
        buffer.clear();
        dropping = false;
      }
    }
    if (absl::Now() - last_heard > silence_) {
      MarkOrphaned(absl::StrCat("no message from the parent for ", absl::FormatDuration(silence_)));
      return;
    }
  }
}

}  // namespace qtrain::worker
