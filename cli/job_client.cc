#include "cli/job_client.h"

#include <cstdio>
#include <random>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace qtrain::cli {
namespace {

// Pages are followed until the token is empty; a server that repeats a token is an error, not
// an endless loop.
constexpr int kMaxPages = 100000;

absl::Status RepeatedTokenError(absl::string_view what) {
  return absl::InternalError(
      absl::StrCat(what, ": the coordinator returned the same page token twice"));
}

}  // namespace

absl::StatusOr<JobClient> JobClient::Connect(const ChannelOptions& options,
                                             absl::Duration timeout) {
  QTRAIN_ASSIGN_OR_RETURN(RpcClient rpc, RpcClient::Create(options));
  JobClient client;
  client.options_ = options;
  client.rpc_ = std::make_unique<RpcClient>(std::move(rpc));
  client.stub_ = v1::JobService::NewStub(client.rpc_->channel());
  client.timeout_ = timeout;
  return client;
}

template <typename Request, typename Response>
absl::StatusOr<Response> JobClient::Call(
    grpc::Status (v1::JobService::Stub::*method)(grpc::ClientContext*, const Request&, Response*),
    const Request& request, absl::string_view what) {
  std::unique_ptr<grpc::ClientContext> context = rpc_->NewContext(timeout_);
  Response response;
  const grpc::Status status = ((*stub_).*method)(context.get(), request, &response);
  if (!status.ok())
    return rpc_->Describe(status, std::string_view(what.data(), what.size()), timeout_);
  return response;
}

absl::StatusOr<v1::Job> JobClient::CreateJob(const v1::JobSpec& spec,
                                             const std::string& request_id) {
  v1::CreateJobRequest request;
  *request.mutable_spec() = spec;
  request.set_request_id(request_id);
  return Call(&v1::JobService::Stub::CreateJob, request, "CreateJob");
}

absl::StatusOr<v1::Job> JobClient::GetJob(const std::string& name) {
  v1::GetJobRequest request;
  request.set_name(name);
  return Call(&v1::JobService::Stub::GetJob, request, "GetJob");
}

absl::StatusOr<v1::Job> JobClient::CancelJob(const std::string& name, const std::string& reason) {
  v1::CancelJobRequest request;
  request.set_name(name);
  request.set_reason(reason);
  return Call(&v1::JobService::Stub::CancelJob, request, "CancelJob");
}

absl::StatusOr<v1::ListJobsResponse> JobClient::ListJobs(const v1::ListJobsRequest& request,
                                                         bool all) {
  QTRAIN_ASSIGN_OR_RETURN(v1::ListJobsResponse first,
                          Call(&v1::JobService::Stub::ListJobs, request, "ListJobs"));
  if (!all) return first;
  v1::ListJobsResponse result = std::move(first);
  std::set<std::string> seen;
  v1::ListJobsRequest next = request;
  for (int page = 0; !result.next_page_token().empty(); ++page) {
    if (page >= kMaxPages || !seen.insert(result.next_page_token()).second) {
      return RepeatedTokenError("ListJobs");
    }
    next.set_page_token(result.next_page_token());
    QTRAIN_ASSIGN_OR_RETURN(v1::ListJobsResponse more,
                            Call(&v1::JobService::Stub::ListJobs, next, "ListJobs"));
    for (v1::Job& job : *more.mutable_jobs()) *result.add_jobs() = std::move(job);
    result.set_next_page_token(more.next_page_token());
  }
  return result;
}

absl::StatusOr<v1::ListCheckpointsResponse> JobClient::ListCheckpoints(const std::string& job) {
  v1::ListCheckpointsRequest request;
  request.set_parent(job);
  v1::ListCheckpointsResponse result;
  std::set<std::string> seen;
  for (int page = 0;; ++page) {
    QTRAIN_ASSIGN_OR_RETURN(
        v1::ListCheckpointsResponse more,
        Call(&v1::JobService::Stub::ListCheckpoints, request, "ListCheckpoints"));
    for (v1::Checkpoint& c : *more.mutable_checkpoints()) *result.add_checkpoints() = std::move(c);
    if (more.next_page_token().empty()) return result;
    if (page >= kMaxPages || !seen.insert(more.next_page_token()).second) {
      return RepeatedTokenError("ListCheckpoints");
    }
    request.set_page_token(more.next_page_token());
  }
}

absl::StatusOr<v1::ListWorkersResponse> JobClient::ListWorkers() {
  v1::ListWorkersRequest request;
  v1::ListWorkersResponse result;
  std::set<std::string> seen;
  for (int page = 0;; ++page) {
    QTRAIN_ASSIGN_OR_RETURN(v1::ListWorkersResponse more,
                            Call(&v1::JobService::Stub::ListWorkers, request, "ListWorkers"));
    for (v1::Worker& w : *more.mutable_workers()) *result.add_workers() = std::move(w);
    if (more.next_page_token().empty()) return result;
    if (page >= kMaxPages || !seen.insert(more.next_page_token()).second) {
      return RepeatedTokenError("ListWorkers");
    }
    request.set_page_token(more.next_page_token());
  }
}

absl::StatusOr<std::string> JobResourceName(absl::string_view job) {
  absl::string_view id = job;
  if (absl::StartsWith(id, "jobs/")) id.remove_prefix(5);
  bool ok = !id.empty() && id.size() <= 128;
  for (char c : id) {
    if (c == '/' || !absl::ascii_isgraph(static_cast<unsigned char>(c))) ok = false;
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("JOB must be a job ID or jobs/ID (e.g. demo-1), got '", job, "'"));
  }
  return absl::StrCat("jobs/", id);
}

std::string NewRequestId() {
  std::random_device device;
  unsigned char b[16];
  for (int i = 0; i < 16; i += 4) {
    const uint32_t r = device();
    for (int j = 0; j < 4; ++j) b[i + j] = static_cast<unsigned char>(r >> (8 * j));
  }
  b[6] = static_cast<unsigned char>((b[6] & 0x0f) | 0x40);  // version 4
  b[8] = static_cast<unsigned char>((b[8] & 0x3f) | 0x80);  // RFC 4122 variant
  return absl::StrFormat("%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                         b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11],
                         b[12], b[13], b[14], b[15]);
}

int ReportError(const absl::Status& status) {
  const std::string text = absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status)
                               ? std::string(status.message())
                               : status.ToString();
  std::fprintf(stderr, "qtrain: %s\n", text.c_str());
  return 1;
}

}  // namespace qtrain::cli
