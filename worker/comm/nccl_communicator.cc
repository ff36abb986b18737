// NcclCommunicator: see nccl_communicator.h. Every op is
//   1. the header exchange (an ncclAllGather of 6 int64s per rank, checked on the host);
//   2. grouped ncclSend/ncclRecv (and TreeSumRows for the sums) on the communicator's stream;
//   3. a wait that polls the stream, NCCL's asynchronous error, Abort() and the deadline.
// The communicator is non-blocking, so no NCCL call blocks; each is made under mu_, which is
// what lets Abort() (any thread) call ncclCommAbort safely.
#include "worker/comm/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kernels/cuda/cuda_kernels.h"
#include "worker/comm/collective_op.h"
#include "worker/comm/nccl_id.h"

namespace qtrain::comm {
namespace {

// Inside a Group body: returns the first NCCL error.
#define NCCL_TRY(expr)                                                            \
  do {                                                                            \
    const ncclResult_t nccl_try_result = (expr);                                  \
    if (nccl_try_result != ncclSuccess && nccl_try_result != ncclInProgress) {    \
      return nccl_try_result;                                                     \
    }                                                                             \
  } while (0)

static_assert(sizeof(ncclUniqueId) == kNcclUniqueIdBytes, "nccl_id.h's id size is NCCL's");

constexpr absl::Duration kPoll = absl::Microseconds(50);

// What each rank announces before an op: equal on every rank except `own` (checked against
// what the others expect of that rank, where given).
struct Header {
  static constexpr int64_t kMagic = 0x71746e63;  // "qtnc"
  int64_t magic = kMagic;
  int64_t op = 0;
  int64_t sequence = 0;
  int64_t shape0 = 0;
  int64_t shape1 = 0;
  int64_t own = 0;
};
constexpr int kHeaderWords = sizeof(Header) / sizeof(int64_t);
static_assert(sizeof(Header) == kHeaderWords * sizeof(int64_t));

absl::Status CudaError(cudaError_t error, absl::string_view what) {
  return absl::UnavailableError(absl::StrCat(what, ": ", cudaGetErrorString(error)));
}

template <typename T>
constexpr ncclDataType_t NcclType();
template <>
constexpr ncclDataType_t NcclType<float>() {
  return ncclFloat32;
}
template <>
constexpr ncclDataType_t NcclType<double>() {
  return ncclFloat64;
}
template <typename T>
constexpr kernels::cuda::SumDType SumType();
template <>
constexpr kernels::cuda::SumDType SumType<float>() {
  return kernels::cuda::SumDType::kFloat32;
}
template <>
constexpr kernels::cuda::SumDType SumType<double>() {
  return kernels::cuda::SumDType::kFloat64;
}

class NcclCommunicatorImpl final : public Communicator {
 public:
  NcclCommunicatorImpl(const NcclOptions& options, ncclComm_t comm, cudaStream_t stream)
      : rank_(options.rank),
        world_size_(options.world_size),
        device_(options.device),
        op_timeout_(options.op_timeout),
        chunk_elements_(options.chunk_elements),
        stream_(stream),
        comm_(comm) {}

  ~NcclCommunicatorImpl() override {
    cudaSetDevice(device_);
    {
      absl::MutexLock lock(&mu_);
      if (comm_ != nullptr) {
        // A healthy group is finalized (its peers finish in step); a broken one, or one whose
        // finalization fails or times out, is aborted.
        bool finalized = false;
        if (first_error_.ok()) {
          const ncclResult_t result = ncclCommFinalize(comm_);
          finalized = (result == ncclSuccess || result == ncclInProgress) &&
                      WaitForNcclLocked(absl::Now() + op_timeout_).ok();
        }
        if (comm_ != nullptr) {
          if (finalized) {
            ncclCommDestroy(comm_);
          } else {
            ncclCommAbort(comm_);
          }
          comm_ = nullptr;
        }
      }
    }
    cudaStreamSynchronize(stream_);
    for (void* buffer : {header_send_, header_recv_, staging_}) {
      if (buffer != nullptr) cudaFree(buffer);
    }
    cudaStreamDestroy(stream_);
  }

  absl::Status Allocate() {
    QTRAIN_RETURN_IF_ERROR(DeviceAlloc(sizeof(Header), &header_send_));
    return DeviceAlloc(sizeof(Header) * world_size_, &header_recv_);
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  std::string_view backend() const override { return "nccl"; }

  absl::Status Barrier() override {
    // The header exchange is an all-gather: every rank has joined once it completes.
    return Run(CollectiveOp::kBarrier, {0, 0}, 0, {}, [] { return absl::OkStatus(); });
  }

  absl::Status Broadcast(std::span<std::byte> data, int root) override {
    if (root < 0 || root >= world_size_) {
      return Precheck(absl::InvalidArgumentError(
          absl::StrCat("collective Broadcast: root ", root, " of a group of ", world_size_)));
    }
    const int64_t size = static_cast<int64_t>(data.size());
    return Run(CollectiveOp::kBroadcast, {size, root}, 0, {}, [&]() -> absl::Status {
      if (data.empty()) return absl::OkStatus();
      CountTraffic(rank_ == root ? size * (world_size_ - 1) : 0, rank_ == root ? 0 : size);
      return Group([&] {
        return ncclBroadcast(data.data(), data.data(), data.size(), ncclUint8, root, comm_,
                             stream_);
      });
    });
  }

  absl::Status AllReduceSum(std::span<float> data) override {
    return AllReduce<float>(CollectiveOp::kAllReduceFloat, data);
  }
  absl::Status AllReduceSum(std::span<double> data) override {
    return AllReduce<double>(CollectiveOp::kAllReduceDouble, data);
  }

  absl::Status ReduceScatterSum(std::span<const float> partial, std::span<float> shard,
                                const ShardLayout& layout) override {
    QTRAIN_RETURN_IF_ERROR(Precheck(CheckLayout("ReduceScatterSum", partial.size(), shard.size(),
                                                layout)));
    return Run(CollectiveOp::kReduceScatter, {layout.total(), layout.block_elements()}, 0, {},
               [&] { return ReduceScatterBody<float>(partial.data(), shard.data(), layout); });
  }

  absl::Status AllGather(std::span<const float> shard, std::span<float> full,
                         const ShardLayout& layout) override {
    QTRAIN_RETURN_IF_ERROR(
        Precheck(CheckLayout("AllGather", full.size(), shard.size(), layout)));
    return Run(CollectiveOp::kAllGather, {layout.total(), layout.block_elements()}, 0, {},
               [&] { return AllGatherBody<float>(shard.data(), full.data(), layout); });
  }

  absl::Status AllGatherV(std::span<const double> mine, std::span<double> all,
                          std::span<const int64_t> counts) override {
    int64_t total = 0;
    absl::Status local;
    if (static_cast<int>(counts.size()) != world_size_) {
      local = absl::InvalidArgumentError(absl::StrCat(
          "collective AllGatherV: ", counts.size(), " counts for a group of ", world_size_));
    } else {
      for (int64_t c : counts) {
        if (c < 0) local = absl::InvalidArgumentError("collective AllGatherV: a negative count");
        total += c;
      }
      if (local.ok() && (static_cast<int64_t>(mine.size()) != counts[rank_] ||
                         static_cast<int64_t>(all.size()) != total)) {
        local = absl::InvalidArgumentError(absl::StrCat(
            "collective AllGatherV: ", mine.size(), " own and ", all.size(),
            " gathered elements, the counts say ", counts[rank_], " and ", total));
      }
    }
    QTRAIN_RETURN_IF_ERROR(Precheck(local));
    return Run(CollectiveOp::kAllGatherV, {total, 0}, static_cast<int64_t>(mine.size()), counts,
               [&]() -> absl::Status {
                 std::vector<int64_t> offsets(world_size_ + 1, 0);
                 for (int r = 0; r < world_size_; ++r) offsets[r + 1] = offsets[r] + counts[r];
                 if (!mine.empty()) {
                   QTRAIN_RETURN_IF_ERROR(CopyOnStream(all.data() + offsets[rank_], mine.data(),
                                                       mine.size_bytes()));
                 }
                 CountTraffic(static_cast<int64_t>(mine.size_bytes()) * (world_size_ - 1),
                              (total - counts[rank_]) * int64_t{sizeof(double)});
                 return Group([&] {
                   for (int peer = 0; peer < world_size_; ++peer) {
                     if (peer == rank_) continue;
                     if (!mine.empty()) {
                       NCCL_TRY(ncclSend(mine.data(), mine.size(), ncclFloat64, peer, comm_,
                                         stream_));
                     }
                     if (counts[peer] > 0) {
                       NCCL_TRY(ncclRecv(all.data() + offsets[peer], counts[peer], ncclFloat64,
                                         peer, comm_, stream_));
                     }
                   }
                   return ncclSuccess;
                 });
               });
  }

  void Abort() override {
    absl::MutexLock lock(&mu_);
    if (aborted_) return;
    aborted_ = true;
    if (comm_ != nullptr) {
      cudaSetDevice(device_);
      ncclCommAbort(comm_);
      comm_ = nullptr;
    }
    QTRAIN_LOG(INFO) << "NCCL collectives of rank " << rank_ << " of " << world_size_
                     << " aborted";
  }

  CommStats stats() const override {
    absl::MutexLock lock(&mu_);
    return stats_;
  }

 private:
  absl::Status CheckLayout(const char* op, size_t full, size_t shard,
                           const ShardLayout& layout) const {
    if (layout.world_size() != world_size_) {
      return absl::InvalidArgumentError(absl::StrCat("collective ", op, ": a layout for ",
                                                     layout.world_size(), " ranks in a group of ",
                                                     world_size_));
    }
    if (static_cast<int64_t>(full) != layout.total() ||
        static_cast<int64_t>(shard) != layout.ShardSize(rank_)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "collective ", op, ": buffers of ", full, " and ", shard, " elements, the layout needs ",
          layout.total(), " and ", layout.ShardSize(rank_), " (rank ", rank_, ")"));
    }
    return absl::OkStatus();
  }

  absl::Status DeviceAlloc(size_t bytes, void** out) {
    const cudaError_t error = cudaMalloc(out, bytes);
    if (error != cudaSuccess) {
      *out = nullptr;
      return CudaError(error, absl::StrCat("NCCL communicator: cudaMalloc of ", bytes, " bytes"));
    }
    return absl::OkStatus();
  }

  absl::Status EnsureStaging(size_t bytes) {
    if (bytes <= staging_bytes_) return absl::OkStatus();
    if (staging_ != nullptr) {
      // Nothing on the stream may still use the old buffer.
      QTRAIN_RETURN_IF_ERROR(WaitForStream("staging resize", absl::Now() + op_timeout_));
      cudaFree(staging_);
      staging_ = nullptr;
      staging_bytes_ = 0;
    }
    QTRAIN_RETURN_IF_ERROR(DeviceAlloc(bytes, &staging_));
    staging_bytes_ = bytes;
    return absl::OkStatus();
  }

  absl::Status CopyOnStream(void* to, const void* from, size_t bytes) {
    if (bytes == 0 || to == from) return absl::OkStatus();
    const cudaError_t error = cudaMemcpyAsync(to, from, bytes, cudaMemcpyDeviceToDevice, stream_);
    return error == cudaSuccess ? absl::OkStatus() : CudaError(error, "NCCL communicator: copy");
  }

  void CountTraffic(int64_t sent, int64_t received) {
    absl::MutexLock lock(&mu_);
    stats_.bytes_sent += sent;
    stats_.bytes_received += received;
  }

  absl::Status Usable() const {
    absl::MutexLock lock(&mu_);
    if (aborted_) return absl::CancelledError("collectives: the communicator was aborted");
    if (!first_error_.ok()) {
      return BrokenGroupError(first_error_);
    }
    return absl::OkStatus();
  }

  // A bad call breaks the group: its peers are already in the op and would wait for it.
  absl::Status Precheck(absl::Status local) {
    QTRAIN_RETURN_IF_ERROR(Usable());
    if (!local.ok()) Break(local);
    return local;
  }

  // Records the first error and aborts the NCCL communicator (the peers' pending operations
  // then fail instead of waiting for their timeouts).
  void Break(const absl::Status& status) {
    absl::MutexLock lock(&mu_);
    if (first_error_.ok()) {
      first_error_ = status;
      QTRAIN_LOG(WARNING) << "NCCL collectives of rank " << rank_ << " of " << world_size_
                          << " broken: " << status.message();
    }
    if (comm_ != nullptr) {
      ncclCommAbort(comm_);
      comm_ = nullptr;
    }
  }

  // ncclGroupStart; calls(); ncclGroupEnd, under mu_, then waits until NCCL has enqueued the
  // group (a non-blocking communicator may return ncclInProgress).
  absl::Status Group(absl::FunctionRef<ncclResult_t()> calls) {
    absl::MutexLock lock(&mu_);
    if (comm_ == nullptr) return absl::CancelledError("collectives: the communicator was aborted");
    ncclResult_t result = ncclGroupStart();
    if (result == ncclSuccess) {
      const ncclResult_t body = calls();
      result = ncclGroupEnd();
      if (body != ncclSuccess && body != ncclInProgress) result = body;
    }
    if (result != ncclSuccess && result != ncclInProgress) return NcclError(result, "enqueue");
    return WaitForNcclLocked(deadline_);
  }

  absl::Status NcclError(ncclResult_t result, absl::string_view what) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const char* detail = comm_ != nullptr ? ncclGetLastError(comm_) : "";
    return absl::UnavailableError(absl::StrCat("NCCL ", what, ": ", ncclGetErrorString(result),
                                               detail != nullptr && *detail != '\0' ? " (" : "",
                                               detail != nullptr ? detail : "",
                                               detail != nullptr && *detail != '\0' ? ")" : ""));
  }

  // Until the communicator's state is no longer ncclInProgress.
  absl::Status WaitForNcclLocked(absl::Time deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    while (true) {
      if (comm_ == nullptr) return absl::CancelledError("collectives: the communicator was aborted");
      ncclResult_t state = ncclSuccess;
      const ncclResult_t query = ncclCommGetAsyncError(comm_, &state);
      if (query != ncclSuccess) return NcclError(query, "state");
      if (state == ncclSuccess) return absl::OkStatus();
      if (state != ncclInProgress) return NcclError(state, "asynchronous error");
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError("NCCL: not enqueued within the op timeout");
      }
      mu_.Unlock();  // lets Abort() in
      absl::SleepFor(kPoll);
      mu_.Lock();
    }
  }

  // Until the stream has run everything enqueued, polling NCCL's state, Abort() and `deadline`.
  absl::Status WaitForStream(absl::string_view what, absl::Time deadline) {
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        if (aborted_ || comm_ == nullptr) {
          return absl::CancelledError("collectives: the communicator was aborted");
        }
        ncclResult_t state = ncclSuccess;
        const ncclResult_t query = ncclCommGetAsyncError(comm_, &state);
        if (query != ncclSuccess) return NcclError(query, "state");
        if (state != ncclSuccess && state != ncclInProgress) {
          return NcclError(state, "asynchronous error");
        }
      }
      const cudaError_t query = cudaStreamQuery(stream_);
      if (query == cudaSuccess) return absl::OkStatus();
      if (query != cudaErrorNotReady) return CudaError(query, what);
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat(what, ": not complete within ", absl::FormatDuration(op_timeout_),
                         " (a peer stopped or hung)"));
      }
      absl::SleepFor(kPoll);
    }
  }

  // The header all-gather and its check; then body; then the wait. Any error breaks the group.
  absl::Status Run(CollectiveOp code, std::array<int64_t, 2> shape, int64_t own,
                   std::span<const int64_t> expected_own, absl::FunctionRef<absl::Status()> body) {
    QTRAIN_RETURN_IF_ERROR(Usable());
    const absl::Time start = absl::Now();
    deadline_ = start + op_timeout_;
    const cudaError_t set_device = cudaSetDevice(device_);
    absl::Status status =
        set_device == cudaSuccess ? absl::OkStatus() : CudaError(set_device, "cudaSetDevice");
    const char* name = CollectiveOpName(code);
    const Header mine{.op = static_cast<int64_t>(code),
                      .sequence = next_sequence_++,
                      .shape0 = shape[0],
                      .shape1 = shape[1],
                      .own = own};
    if (status.ok()) status = ExchangeHeaders(name, mine, expected_own);
    if (status.ok()) status = body();
    if (status.ok()) status = WaitForStream("the op", deadline_);
    if (!status.ok() && status.code() != absl::StatusCode::kInvalidArgument) {
      status = absl::Status(status.code(), absl::StrCat("collective ", name, " (rank ", rank_,
                                                        " of ", world_size_, "): ",
                                                        status.message()));
    }
    {
      absl::MutexLock lock(&mu_);
      stats_.time_in_ops += absl::Now() - start;
      if (!status.ok() && aborted_ && status.code() != absl::StatusCode::kInvalidArgument) {
        status = absl::CancelledError(
            absl::StrCat("collective ", name, ": the communicator was aborted"));
      }
    }
    if (!status.ok()) Break(status);
    return status;
  }

  absl::Status ExchangeHeaders(const char* name, const Header& mine,
                               std::span<const int64_t> expected_own) {
    cudaError_t error = cudaMemcpyAsync(header_send_, &mine, sizeof(Header),
                                        cudaMemcpyHostToDevice, stream_);
    if (error != cudaSuccess) return CudaError(error, "header copy");
    QTRAIN_RETURN_IF_ERROR(Group([&] {
      return ncclAllGather(header_send_, header_recv_, kHeaderWords, ncclInt64, comm_, stream_);
    }));
    std::vector<Header> all(world_size_);
    error = cudaMemcpyAsync(all.data(), header_recv_, sizeof(Header) * world_size_,
                            cudaMemcpyDeviceToHost, stream_);
    if (error != cudaSuccess) return CudaError(error, "header copy");
    QTRAIN_RETURN_IF_ERROR(WaitForStream("header exchange", deadline_));
    for (int peer = 0; peer < world_size_; ++peer) {
      const Header& theirs = all[peer];
      if (theirs.magic != Header::kMagic || theirs.sequence != mine.sequence) {
        return absl::InvalidArgumentError(
            absl::StrCat("collective ", name, ": rank ", peer, " is at op #", theirs.sequence,
                         ", this rank at #", mine.sequence, " (the ranks' ops differ)"));
      }
      if (theirs.op != mine.op || theirs.shape0 != mine.shape0 || theirs.shape1 != mine.shape1) {
        return absl::InvalidArgumentError(absl::StrCat(
            "collective ", name, ": rank ", peer, " called ",
            CollectiveOpName(static_cast<CollectiveOp>(theirs.op)), " with sizes (", theirs.shape0, ", ",
            theirs.shape1, "), this rank ", name, " with (", mine.shape0, ", ", mine.shape1, ")"));
      }
      if (!expected_own.empty() && theirs.own != expected_own[peer]) {
        return absl::InvalidArgumentError(absl::StrCat("collective ", name, ": rank ", peer,
                                                       " has ", theirs.own, " elements, expected ",
                                                       expected_own[peer]));
      }
    }
    return absl::OkStatus();
  }

  // ReduceScatterSum: for each chunk of every shard, this rank's slice of each other shard to
  // its owner, and every peer's slice of this rank's shard into a staging row; the own slice is
  // copied to its row, then TreeSumRows sums the W rows in rank order into the shard.
  template <typename T>
  absl::Status ReduceScatterBody(const T* partial, T* shard, const ShardLayout& layout) {
    int64_t largest = 0;
    for (int r = 0; r < world_size_; ++r) largest = std::max(largest, layout.ShardSize(r));
    const int64_t chunk = std::max<int64_t>(1, std::min(chunk_elements_, largest));
    QTRAIN_RETURN_IF_ERROR(EnsureStaging(sizeof(T) * chunk * world_size_));
    T* const rows = static_cast<T*>(staging_);
    const int64_t own_size = layout.ShardSize(rank_);
    for (int64_t offset = 0; offset < largest; offset += chunk) {
      const int64_t own_len = std::clamp<int64_t>(own_size - offset, 0, chunk);
      if (own_len > 0) {
        QTRAIN_RETURN_IF_ERROR(CopyOnStream(rows + rank_ * chunk,
                                            partial + layout.ShardBegin(rank_) + offset,
                                            sizeof(T) * own_len));
      }
      int64_t sent = 0;
      QTRAIN_RETURN_IF_ERROR(Group([&] {
        for (int peer = 0; peer < world_size_; ++peer) {
          if (peer == rank_) continue;
          const int64_t peer_len = std::clamp<int64_t>(layout.ShardSize(peer) - offset, 0, chunk);
          if (peer_len > 0) {
            NCCL_TRY(ncclSend(partial + layout.ShardBegin(peer) + offset, peer_len, NcclType<T>(),
                              peer, comm_, stream_));
            sent += peer_len;
          }
          if (own_len > 0) {
            NCCL_TRY(
                ncclRecv(rows + peer * chunk, own_len, NcclType<T>(), peer, comm_, stream_));
          }
        }
        return ncclSuccess;
      }));
      CountTraffic(sent * int64_t{sizeof(T)}, own_len * (world_size_ - 1) * int64_t{sizeof(T)});
      if (own_len > 0) {
        const kernels::OpStatus summed = kernels::cuda::TreeSumRows(
            {.rows = rows, .row_stride = chunk, .count = world_size_, .out = shard + offset,
             .n = own_len, .dtype = SumType<T>()},
            stream_);
        if (!summed.ok()) return absl::InternalError(summed.message());
      }
    }
    return absl::OkStatus();
  }

  // AllGather: this rank's shard to every peer, every peer's shard to its range of full.
  template <typename T>
  absl::Status AllGatherBody(const T* shard, T* full, const ShardLayout& layout) {
    const int64_t own_size = layout.ShardSize(rank_);
    QTRAIN_RETURN_IF_ERROR(
        CopyOnStream(full + layout.ShardBegin(rank_), shard, sizeof(T) * own_size));
    CountTraffic(own_size * (world_size_ - 1) * int64_t{sizeof(T)},
                 (layout.total() - own_size) * int64_t{sizeof(T)});
    return Group([&] {
      for (int peer = 0; peer < world_size_; ++peer) {
        if (peer == rank_) continue;
        if (own_size > 0) NCCL_TRY(ncclSend(shard, own_size, NcclType<T>(), peer, comm_, stream_));
        if (layout.ShardSize(peer) > 0) {
          NCCL_TRY(ncclRecv(full + layout.ShardBegin(peer), layout.ShardSize(peer), NcclType<T>(),
                            peer, comm_, stream_));
        }
      }
      return ncclSuccess;
    });
  }

  // The sum over ranks of data, in place: a reduce-scatter over W even pieces, then their
  // all-gather; the same TreeSum per element as the CPU collectives.
  template <typename T>
  absl::Status AllReduce(CollectiveOp code, std::span<T> data) {
    const int64_t n = static_cast<int64_t>(data.size());
    const int64_t block = std::max<int64_t>(1, (n + world_size_ - 1) / world_size_);
    absl::StatusOr<ShardLayout> layout = ShardLayout::Create(n, world_size_, block);
    QTRAIN_RETURN_IF_ERROR(Precheck(layout.status()));
    return Run(code, {n, 0}, 0, {}, [&]() -> absl::Status {
      if (n == 0 || world_size_ == 1) return absl::OkStatus();
      T* shard = data.data() + layout->ShardBegin(rank_);
      QTRAIN_RETURN_IF_ERROR(ReduceScatterBody<T>(data.data(), shard, *layout));
      return AllGatherBody<T>(shard, data.data(), *layout);
    });
  }

  const int rank_;
  const int world_size_;
  const int device_;
  const absl::Duration op_timeout_;
  const int64_t chunk_elements_;
  const cudaStream_t stream_;
  // Device buffers, used by the op thread only.
  void* header_send_ = nullptr;
  void* header_recv_ = nullptr;
  void* staging_ = nullptr;
  size_t staging_bytes_ = 0;
  int64_t next_sequence_ = 0;
  absl::Time deadline_;  // of the op in flight

  mutable absl::Mutex mu_;
  ncclComm_t comm_ ABSL_GUARDED_BY(mu_);  // null once aborted
  bool aborted_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status first_error_ ABSL_GUARDED_BY(mu_);
  CommStats stats_ ABSL_GUARDED_BY(mu_);
};


// ncclCommInitRankConfig, non-blocking, waited for until `deadline` or `cancel`.
absl::StatusOr<ncclComm_t> InitComm(const NcclOptions& options, const ncclUniqueId& id,
                                    absl::Time deadline) {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  ncclResult_t result =
      ncclCommInitRankConfig(&comm, options.world_size, id, options.rank, &config);
  if (result != ncclSuccess && result != ncclInProgress) {
    if (comm != nullptr) ncclCommAbort(comm);
    return absl::UnavailableError(
        absl::StrCat("ncclCommInitRankConfig: ", ncclGetErrorString(result)));
  }
  while (true) {
    ncclResult_t state = ncclSuccess;
    result = ncclCommGetAsyncError(comm, &state);
    if (result == ncclSuccess && state == ncclSuccess) return comm;
    std::string error;
    if (result != ncclSuccess || state != ncclInProgress) {
      error = absl::StrCat("ncclCommInitRankConfig: ",
                           ncclGetErrorString(result != ncclSuccess ? result : state), " (",
                           ncclGetLastError(comm), ")");
    } else if (options.cancel != nullptr && options.cancel->load()) {
      ncclCommAbort(comm);
      return absl::CancelledError("NCCL communicator: connect cancelled");
    } else if (absl::Now() >= deadline) {
      ncclCommAbort(comm);
      return absl::DeadlineExceededError(absl::StrCat(
          "NCCL communicator: the group of ", options.world_size, " did not form within ",
          absl::FormatDuration(options.connect_timeout)));
    }
    if (!error.empty()) {
      ncclCommAbort(comm);
      return absl::UnavailableError(error);
    }
    absl::SleepFor(absl::Milliseconds(1));
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> NcclCommunicator::Connect(
    const NcclOptions& options) {
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size ||
      options.store == nullptr || options.device < 0 || options.chunk_elements < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "NCCL communicator: rank ", options.rank, " of ", options.world_size, ", device ",
        options.device, ", chunks of ", options.chunk_elements,
        options.store == nullptr ? ", no store" : ""));
  }
  const absl::Time deadline = absl::Now() + options.connect_timeout;
  cudaError_t error = cudaSetDevice(options.device);
  if (error != cudaSuccess) {
    return CudaError(error, absl::StrCat("NCCL communicator: CUDA device ", options.device));
  }
  QTRAIN_ASSIGN_OR_RETURN(
      const NcclUniqueIdBytes id_bytes,
      ExchangeNcclId({.rank = options.rank,
                      .world_size = options.world_size,
                      .store = options.store.get(),
                      .prefix = options.prefix,
                      .deadline = deadline,
                      .cancel = options.cancel},
                     []() -> absl::StatusOr<NcclUniqueIdBytes> {
                       ncclUniqueId id;
                       const ncclResult_t result = ncclGetUniqueId(&id);
                       if (result != ncclSuccess) {
                         return absl::UnavailableError(
                             absl::StrCat("ncclGetUniqueId: ", ncclGetErrorString(result)));
                       }
                       NcclUniqueIdBytes bytes;
                       std::memcpy(bytes.data(), id.internal, bytes.size());
                       return bytes;
                     }));
  ncclUniqueId id;
  std::memcpy(id.internal, id_bytes.data(), id_bytes.size());
  cudaStream_t stream = nullptr;
  error = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  if (error != cudaSuccess) return CudaError(error, "NCCL communicator: cudaStreamCreate");
  absl::StatusOr<ncclComm_t> comm = InitComm(options, id, deadline);
  if (!comm.ok()) {
    cudaStreamDestroy(stream);
    return comm.status();
  }
  auto impl = std::make_unique<NcclCommunicatorImpl>(options, *comm, stream);
  QTRAIN_RETURN_IF_ERROR(impl->Allocate());
  QTRAIN_LOG(INFO) << "NCCL collectives: rank " << options.rank << " of " << options.world_size
                   << " on CUDA device " << options.device;
  return impl;
}

#undef NCCL_TRY

}  // namespace qtrain::comm
