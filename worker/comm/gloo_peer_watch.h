// Gloo tells a lost connection to the transfers queued on it, but not to a send it is already
// writing nor to the receive it is reading into: a wait on one of those, when the peer dies,
// would last the whole op timeout. So each connection
// carries one receive that never completes (a slot no transfer uses), waited for by a thread
// of its own; when the connection fails that wait throws, the peer is marked lost, and a wait
// on a send to it is woken.
#ifndef QTRAIN_WORKER_COMM_GLOO_PEER_WATCH_H_
#define QTRAIN_WORKER_COMM_GLOO_PEER_WATCH_H_

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gloo/context.h"
#include "gloo/transport/unbound_buffer.h"

namespace qtrain::comm {

class GlooPeerWatch {
 public:
  explicit GlooPeerWatch(gloo::Context& context);
  ~GlooPeerWatch();
  GlooPeerWatch(const GlooPeerWatch&) = delete;
  GlooPeerWatch& operator=(const GlooPeerWatch&) = delete;

  // Wakes `buffer` (a send to `peer` or a receive from it, about to be waited for) if that
  // connection fails.
  void Watch(gloo::transport::UnboundBuffer* buffer, int peer, bool send);
  // Stops watching; why the connection failed, when it did.
  std::optional<std::string> Unwatch();

 private:
  void Lost(int peer, std::string why);
  void WakeLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  struct Probe {
    char byte = 0;
    std::unique_ptr<gloo::transport::UnboundBuffer> buffer;
    std::thread thread;
  };
  std::vector<Probe> probes_;  // by rank; none for this rank's own
  absl::Mutex mu_;
  std::vector<std::optional<std::string>> lost_ ABSL_GUARDED_BY(mu_);
  gloo::transport::UnboundBuffer* watched_ ABSL_GUARDED_BY(mu_) = nullptr;
  int watched_peer_ ABSL_GUARDED_BY(mu_) = -1;
  bool watched_send_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace qtrain::comm

#endif  // QTRAIN_WORKER_COMM_GLOO_PEER_WATCH_H_
