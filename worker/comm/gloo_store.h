// Gloo's rendezvous store interface over a RendezvousStore: every key under a prefix, every
// wait bounded by the connect deadline (and by the timeout Gloo passes, when sooner). Gloo
// only knows exceptions, so a failure is thrown as gloo::IoException and kept, with its code,
// for the caller to return.
#ifndef QTRAIN_WORKER_COMM_GLOO_STORE_H_
#define QTRAIN_WORKER_COMM_GLOO_STORE_H_

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gloo/rendezvous/store.h"
#include "worker/comm/rendezvous_store.h"

namespace qtrain::comm {

class GlooStoreAdapter final : public gloo::rendezvous::Store {
 public:
  GlooStoreAdapter(std::shared_ptr<RendezvousStore> store, std::string prefix, absl::Time deadline);

  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override;

  // The first failure (OK when none).
  absl::Status error() const;

 private:
  // Fetches key (unprefixed) into the cache by `deadline`; throws on failure.
  const std::string& Fetch(const std::string& key, absl::Time deadline);
  [[noreturn]] void Fail(absl::Status status);

  const std::shared_ptr<RendezvousStore> store_;
  const std::string prefix_;
  const absl::Time deadline_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::string> cache_ ABSL_GUARDED_BY(mu_);
  absl::Status error_ ABSL_GUARDED_BY(mu_);
};

}  // namespace qtrain::comm

#endif  // QTRAIN_WORKER_COMM_GLOO_STORE_H_
