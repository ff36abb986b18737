// The JobService as the `qtrain` remote commands use it: one channel, a deadline on every unary
// call, and errors a person can act on (RpcClient::Describe).
#ifndef QTRAIN_CLI_JOB_CLIENT_H_
#define QTRAIN_CLI_JOB_CLIENT_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/rpc_channel.h"
#include "qtrain/v1/jobs.grpc.pb.h"
#include "qtrain/v1/jobs.pb.h"

namespace qtrain::cli {

class JobClient {
 public:
  static absl::StatusOr<JobClient> Connect(const ChannelOptions& options, absl::Duration timeout);

  absl::StatusOr<v1::Job> CreateJob(const v1::JobSpec& spec, const std::string& request_id);
  absl::StatusOr<v1::Job> GetJob(const std::string& name);
  absl::StatusOr<v1::Job> CancelJob(const std::string& name, const std::string& reason);
  // One page, or every page when `all` (then next_page_token is empty).
  absl::StatusOr<v1::ListJobsResponse> ListJobs(const v1::ListJobsRequest& request, bool all);
  // Every page.
  absl::StatusOr<v1::ListCheckpointsResponse> ListCheckpoints(const std::string& job);
  absl::StatusOr<v1::ListWorkersResponse> ListWorkers();

  const RpcClient& rpc() const { return *rpc_; }
  const ChannelOptions& channel_options() const { return options_; }
  absl::Duration timeout() const { return timeout_; }

 private:
  template <typename Request, typename Response>
  absl::StatusOr<Response> Call(grpc::Status (v1::JobService::Stub::*method)(grpc::ClientContext*,
                                                                             const Request&,
                                                                             Response*),
                                const Request& request, absl::string_view what);

  ChannelOptions options_;
  std::unique_ptr<RpcClient> rpc_;
  std::unique_ptr<v1::JobService::Stub> stub_;
  absl::Duration timeout_;
};

// "ID" or "jobs/ID" -> "jobs/ID"; INVALID_ARGUMENT for anything else.
absl::StatusOr<std::string> JobResourceName(absl::string_view job);

// A random UUID (version 4), the default request_id of CreateJob.
std::string NewRequestId();

// Prints a failed command's error on stderr as one line: "qtrain: <message>" when the
// coordinator could not be reached, else "qtrain: <CODE>: <message>". Returns 1.
int ReportError(const absl::Status& status);

}  // namespace qtrain::cli

#endif  // QTRAIN_CLI_JOB_CLIENT_H_
