#include "worker/comm/gloo_peer_watch.h"

#include <chrono>
#include <cstdint>
#include <exception>

namespace qtrain::comm {
namespace {

// No transfer uses this slot (an op's slots carry its sequence number in the high bits).
constexpr uint64_t kProbeSlot = ~uint64_t{0};
// Gloo's wait ends the whole context at its timeout, so the probe's is beyond any run.
constexpr std::chrono::milliseconds kForever = std::chrono::hours(24 * 365);

}  // namespace

GlooPeerWatch::GlooPeerWatch(gloo::Context& context) : probes_(context.size), lost_(context.size) {
  for (int peer = 0; peer < context.size; ++peer) {
    if (peer == context.rank) continue;
    Probe& probe = probes_[peer];
    try {
      probe.buffer = context.createUnboundBuffer(&probe.byte, 1);
      probe.buffer->recv(peer, kProbeSlot, 0, 1);
    } catch (const std::exception& e) {
      Lost(peer, e.what());
      continue;
    }
    probe.thread = std::thread([this, peer] {
      try {
        probes_[peer].buffer->waitRecv(nullptr, kForever);  // false: stopped
      } catch (const std::exception& e) {
        Lost(peer, e.what());
      }
    });
  }
}

GlooPeerWatch::~GlooPeerWatch() {
  for (Probe& probe : probes_) {
    if (probe.buffer != nullptr) probe.buffer->abortWaitRecv();
    if (probe.thread.joinable()) probe.thread.join();
  }
}

void GlooPeerWatch::Watch(gloo::transport::UnboundBuffer* buffer, int peer, bool send) {
  absl::MutexLock lock(&mu_);
  watched_ = buffer;
  watched_peer_ = peer;
  watched_send_ = send;
  // Already lost: the wait returns at once (the abort is kept for the next wait).
  if (lost_[peer].has_value()) WakeLocked();
}

std::optional<std::string> GlooPeerWatch::Unwatch() {
  absl::MutexLock lock(&mu_);
  std::optional<std::string> why;
  if (watched_peer_ >= 0) why = lost_[watched_peer_];
  watched_ = nullptr;
  watched_peer_ = -1;
  return why;
}

void GlooPeerWatch::Lost(int peer, std::string why) {
  absl::MutexLock lock(&mu_);
  if (!lost_[peer].has_value()) lost_[peer] = std::move(why);
  if (watched_ != nullptr && watched_peer_ == peer) WakeLocked();
}

void GlooPeerWatch::WakeLocked() {
  if (watched_send_) {
    watched_->abortWaitSend();
  } else {
    watched_->abortWaitRecv();
  }
}

}  // namespace qtrain::comm
