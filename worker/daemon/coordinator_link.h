// The daemon's connection to the coordinator: registration (with the worker id kept in the
// work directory), the Heartbeat stream (reconnected with backoff whenever it breaks, the
// worker re-registered only when the coordinator no longer knows it), and unary calls with a
// deadline, retried while the coordinator is unreachable.
#ifndef QTRAIN_WORKER_DAEMON_COORDINATOR_LINK_H_
#define QTRAIN_WORKER_DAEMON_COORDINATOR_LINK_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/rpc_channel.h"
#include "qtrain/v1/worker.grpc.pb.h"
#include "worker/daemon/work_dir.h"

namespace qtrain::worker {

struct LinkOptions {
  // What the worker tells about itself; worker_id is filled from the work directory.
  v1::RegisterWorkerRequest registration;
  absl::Duration rpc_timeout = absl::Seconds(10);
  absl::Duration reconnect_initial = absl::Milliseconds(100);
  absl::Duration reconnect_max = absl::Seconds(2);
  // Called on the link's thread for every directive the coordinator sends.
  std::function<void(const v1::Directive&)> on_directive;
  // Called on the link's thread each time a stream opened: a good time for a heartbeat.
  std::function<void()> on_connected;
  // Called on the link's thread with true when a stream got its first answer (the worker is
  // registered and heard), and with false when that stream ends.
  std::function<void(bool)> on_stream_up;
};

class CoordinatorLink {
 public:
  // `work_dir` must outlive the link.
  CoordinatorLink(RpcClient client, const WorkDir* work_dir, LinkOptions options);
  ~CoordinatorLink();

  // Registers (retrying until the coordinator answers) and keeps the stream open, on a thread
  // of its own, until Stop().
  void Start();
  // Ends the stream and the retries of calls in flight; joins the thread. Idempotent.
  void Stop();

  // "workers/<id>" once registered, else empty.
  std::string worker_name() const;
  bool registered() const { return !worker_name().empty(); }
  absl::Duration heartbeat_interval() const;
  absl::Duration lease() const;

  // Sends a heartbeat on the open stream (worker and sequence filled in); false when no stream
  // is open (the next one gets the next heartbeat).
  bool SendHeartbeat(v1::HeartbeatRequest request);

  // A unary call: `call` runs the stub method with the context given. While the result is
  // UNAVAILABLE or DEADLINE_EXCEEDED and `keep_trying()` says so, it is retried with backoff.
  // Other errors (and the last one) come back as described by RpcClient::Describe.
  using UnaryCall = std::function<grpc::Status(v1::WorkerService::Stub&, grpc::ClientContext*)>;
  absl::Status Call(absl::string_view what, const UnaryCall& call,
                    const std::function<bool()>& keep_trying);

 private:
  void Run();
  // One attempt, cancelled by Stop().
  absl::Status CallOnce(absl::string_view what, const UnaryCall& call);
  // Registers once; OK or the error.
  absl::Status Register();
  // One stream's life: returns how it ended.
  absl::Status RunStream();
  // Sleeps up to `d`; false when Stop() came first.
  bool SleepUnlessStopped(absl::Duration d);
  bool stopping() const;
  // Marks the worker for re-registration when `status` says the coordinator does not know it.
  void NoteNotFound(const absl::Status& status);

  RpcClient client_;
  const WorkDir* work_dir_;
  LinkOptions options_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
  std::thread thread_;
  bool broken_ = false;  // the link's thread only: a stream broke since the last good one

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::string worker_name_ ABSL_GUARDED_BY(mu_);
  bool need_register_ ABSL_GUARDED_BY(mu_) = true;
  absl::Duration heartbeat_interval_ ABSL_GUARDED_BY(mu_) = absl::Seconds(1);
  absl::Duration lease_ ABSL_GUARDED_BY(mu_) = absl::Seconds(10);
  grpc::ClientContext* stream_context_ ABSL_GUARDED_BY(mu_) = nullptr;
  // Unary calls in flight, cancelled by Stop().
  std::vector<grpc::ClientContext*> call_contexts_ ABSL_GUARDED_BY(mu_);

  // Writes to the open stream; held during a Write so that Finish() never races one.
  absl::Mutex write_mu_ ABSL_ACQUIRED_AFTER(mu_);
  grpc::ClientReaderWriter<v1::HeartbeatRequest, v1::HeartbeatResponse>* stream_
      ABSL_GUARDED_BY(write_mu_) = nullptr;
  int64_t sequence_ ABSL_GUARDED_BY(write_mu_) = 0;
};

}  // namespace qtrain::worker

#endif  // QTRAIN_WORKER_DAEMON_COORDINATOR_LINK_H_
