// The Gloo communicator: every op is a header exchange (all ranks agree on the op and its
// sizes, so a mismatch is INVALID_ARGUMENT on every rank, never a garbled transfer) followed
// by point-to-point unbound-buffer transfers in a fixed pattern; sums are computed by their
// owner with TreeSumOf in rank order.
#include "worker/comm/gloo_communicator.h"

#include <netdb.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <exception>
#include <optional>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "gloo/common/error.h"
#include "gloo/context.h"
#include "gloo/rendezvous/context.h"
#include "gloo/transport/device.h"
#include "gloo/transport/tcp/device.h"
#include "gloo/transport/unbound_buffer.h"
#include "worker/comm/gloo_peer_watch.h"
#include "worker/comm/gloo_store.h"
#include "worker/comm/collective_op.h"
#include "worker/comm/tree_sum.h"

namespace qtrain::comm {
namespace {

// ReduceScatterSum receives an owner's shard in chunks of this many floats per peer (4 MiB),
// double-buffered, so its extra memory is 2 x (W - 1) chunks whatever the model's size.
constexpr int64_t kChunkElements = int64_t{1} << 20;

// Slot of a transfer: the op's sequence number above, the transfer's index below.
constexpr int kSlotIndexBits = 24;
uint64_t SlotOf(uint64_t sequence, uint64_t index) { return (sequence << kSlotIndexBits) | index; }

// What every rank sends every other rank first. `shape` must be equal on every rank; `own` is
// the sender's own size where that may differ per rank (AllGatherV), checked against what the
// receiver expects of that sender.
struct Header {
  static constexpr uint32_t kMagic = 0x71747263;  // "qtrc"
  uint32_t magic = kMagic;
  uint32_t op = 0;
  uint64_t sequence = 0;
  int64_t shape[2] = {0, 0};
  int64_t own = 0;
};

// Gloo's messages, matched without regard to case.
bool Mentions(std::string_view text, std::string_view word) {
  return absl::StrContains(absl::AsciiStrToLower(std::string(text)),
                           absl::string_view(word.data(), word.size()));
}

class GlooCommunicatorImpl;

// One op in flight: its transfers (registered with the communicator so that Abort can wake
// their waits) and its deadline.
class Op {
 public:
  Op(GlooCommunicatorImpl& comm, CollectiveOp code, uint64_t sequence, absl::Duration timeout);
  ~Op();
  Op(const Op&) = delete;
  Op& operator=(const Op&) = delete;

  struct Transfer {
    std::unique_ptr<gloo::transport::UnboundBuffer> buffer;
    int peer = 0;
    bool send = false;
    size_t bytes = 0;
    bool done = false;
  };

  // Posts a send of data[0, bytes) to peer / a receive from it (index: the transfer's slot
  // index, the same on both sides). Returns the transfer's handle.
  absl::StatusOr<int> Send(int peer, const void* data, size_t bytes, uint64_t index);
  absl::StatusOr<int> Recv(int peer, void* data, size_t bytes, uint64_t index);
  // Waits for one transfer / for every one not yet waited for, in posting order.
  absl::Status Wait(int handle);
  absl::Status WaitAll();

  CollectiveOp code() const { return code_; }
  const char* name() const { return CollectiveOpName(code_); }

 private:
  absl::StatusOr<int> Post(int peer, void* data, size_t bytes, uint64_t index, bool send);
  absl::Status Classify(const char* what, int peer) const;

  GlooCommunicatorImpl& comm_;
  const CollectiveOp code_;
  const uint64_t sequence_;
  const absl::Duration timeout_;
  const absl::Time deadline_;
  std::vector<Transfer> transfers_;
};

class GlooCommunicatorImpl final : public Communicator {
 public:
  GlooCommunicatorImpl(std::shared_ptr<gloo::transport::Device> device,
                       std::shared_ptr<gloo::rendezvous::Context> context,
                       absl::Duration op_timeout)
      : device_(std::move(device)),
        context_(std::move(context)),
        op_timeout_(op_timeout),
        peer_watch_(std::make_unique<GlooPeerWatch>(*context_)) {}

  ~GlooCommunicatorImpl() override {
    // Closing first makes the peers' pending transfers fail at once rather than time out.
    CloseConnections();
  }

  int rank() const override { return context_->rank; }
  int world_size() const override { return context_->size; }
  std::string_view backend() const override { return "gloo"; }

  absl::Status Barrier() override {
    return Run(CollectiveOp::kBarrier, {0, 0}, 0, {}, [](Op&) { return absl::OkStatus(); });
  }

  absl::Status Broadcast(std::span<std::byte> data, int root) override {
    if (root < 0 || root >= world_size()) {
      return Precheck(absl::InvalidArgumentError(
          absl::StrCat("collective Broadcast: root ", root, " of a group of ", world_size())));
    }
    const int64_t size = static_cast<int64_t>(data.size());
    return Run(CollectiveOp::kBroadcast, {size, root}, 0, {}, [&](Op& op) -> absl::Status {
      if (data.empty()) return absl::OkStatus();
      if (rank() == root) {
        for (int peer = 0; peer < world_size(); ++peer) {
          if (peer == rank()) continue;
          QTRAIN_RETURN_IF_ERROR(op.Send(peer, data.data(), data.size(), 1).status());
        }
      } else {
        QTRAIN_RETURN_IF_ERROR(op.Recv(root, data.data(), data.size(), 1).status());
      }
      return op.WaitAll();
    });
  }

  absl::Status AllReduceSum(std::span<float> data) override {
    return AllReduce<float>(CollectiveOp::kAllReduceFloat, data);
  }
  absl::Status AllReduceSum(std::span<double> data) override {
    return AllReduce<double>(CollectiveOp::kAllReduceDouble, data);
  }

  absl::Status ReduceScatterSum(std::span<const float> partial, std::span<float> shard,
                                const ShardLayout& layout) override;
  absl::Status AllGather(std::span<const float> shard, std::span<float> full,
                         const ShardLayout& layout) override;
  absl::Status AllGatherV(std::span<const double> mine, std::span<double> all,
                          std::span<const int64_t> counts) override;

  void Abort() override {
    {
      absl::MutexLock lock(&mu_);
      if (aborted_) return;
      aborted_ = true;
      for (gloo::transport::UnboundBuffer* buffer : pending_) {
        buffer->abortWaitRecv();
        buffer->abortWaitSend();
      }
    }
    QTRAIN_LOG(INFO) << "collectives of rank " << rank() << " of " << world_size() << " aborted";
    CloseConnections();
  }

  CommStats stats() const override {
    absl::MutexLock lock(&mu_);
    return stats_;
  }

  // For Op.
  bool aborted() const {
    absl::MutexLock lock(&mu_);
    return aborted_;
  }
  // Registers a buffer Abort must wake; false (not registered) once aborted.
  bool Register(gloo::transport::UnboundBuffer* buffer) {
    absl::MutexLock lock(&mu_);
    if (aborted_) return false;
    pending_.push_back(buffer);
    return true;
  }
  void Unregister(gloo::transport::UnboundBuffer* buffer) {
    absl::MutexLock lock(&mu_);
    pending_.erase(std::remove(pending_.begin(), pending_.end(), buffer), pending_.end());
  }
  void Count(bool send, size_t bytes) {
    absl::MutexLock lock(&mu_);
    (send ? stats_.bytes_sent : stats_.bytes_received) += static_cast<int64_t>(bytes);
  }
  gloo::Context& context() { return *context_; }
  GlooPeerWatch& peer_watch() { return *peer_watch_; }

 private:
  absl::Status Usable() const {
    absl::MutexLock lock(&mu_);
    if (aborted_) return absl::CancelledError("collectives: the communicator was aborted");
    if (!first_error_.ok()) {
      return BrokenGroupError(first_error_);
    }
    return absl::OkStatus();
  }

  // A bad call breaks the group too: the peers are already in the op, so the sequence of ops
  // can no longer match.
  absl::Status Precheck(absl::Status local) {
    QTRAIN_RETURN_IF_ERROR(Usable());
    if (!local.ok()) {
      {
        absl::MutexLock lock(&mu_);
        if (first_error_.ok()) first_error_ = local;
      }
      CloseConnections();
    }
    return local;
  }

  // Runs one op: the header exchange, then `body`; any error breaks the communicator.
  // expected_own[p] (when given) is the `own` rank p must announce.
  absl::Status Run(CollectiveOp code, std::array<int64_t, 2> shape, int64_t own,
                   std::span<const int64_t> expected_own,
                   absl::FunctionRef<absl::Status(Op&)> body) {
    QTRAIN_RETURN_IF_ERROR(Usable());
    const absl::Time start = absl::Now();
    absl::Status status;
    {
      Op op(*this, code, next_sequence_++, op_timeout_);
      status = ExchangeHeaders(op, shape, own, expected_own);
      if (status.ok()) status = body(op);
      if (status.ok()) status = op.WaitAll();
      // Closed before the op's buffers go: nothing more arrives for them, and the peers
      // still waiting in the op fail at once instead of at their timeout.
      if (!status.ok()) CloseConnections();
    }
    absl::MutexLock lock(&mu_);
    stats_.time_in_ops += absl::Now() - start;
    if (!status.ok()) {
      if (aborted_ && status.code() != absl::StatusCode::kInvalidArgument) {
        status = absl::CancelledError(
            absl::StrCat("collective ", CollectiveOpName(code), ": the communicator was aborted"));
      }
      if (first_error_.ok()) {
        first_error_ = status;
        QTRAIN_LOG(WARNING) << "collectives of rank " << rank() << " of " << world_size()
                            << " broken: " << status.message();
      }
    }
    return status;
  }

  absl::Status ExchangeHeaders(Op& op, std::array<int64_t, 2> shape, int64_t own,
                               std::span<const int64_t> expected_own);

  template <typename T>
  absl::Status AllReduce(CollectiveOp code, std::span<T> data);
  // ReduceScatterSum's two halves: this rank's slices of the other shards to their owners,
  // and the sum of every rank's slice of this rank's shard.
  absl::Status SendSlicesToOwners(Op& op, std::span<const float> partial,
                                  const ShardLayout& layout);
  absl::Status ReduceOwnShard(Op& op, std::span<const float> partial, std::span<float> shard,
                              const ShardLayout& layout);

  void CloseConnections() {
    try {
      context_->closeConnections();
    } catch (const std::exception& e) {
      QTRAIN_LOG(WARNING) << "collectives: closing the connections: " << e.what();
    }
  }

  std::shared_ptr<gloo::transport::Device> device_;
  std::shared_ptr<gloo::rendezvous::Context> context_;
  const absl::Duration op_timeout_;
  uint64_t next_sequence_ = 1;  // the op thread's only

  mutable absl::Mutex mu_;
  bool aborted_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status first_error_ ABSL_GUARDED_BY(mu_);
  std::vector<gloo::transport::UnboundBuffer*> pending_ ABSL_GUARDED_BY(mu_);
  CommStats stats_ ABSL_GUARDED_BY(mu_);
  // Last: stopped before the context goes.
  std::unique_ptr<GlooPeerWatch> peer_watch_;
};

Op::Op(GlooCommunicatorImpl& comm, CollectiveOp code, uint64_t sequence, absl::Duration timeout)
    : comm_(comm),
      code_(code),
      sequence_(sequence),
      timeout_(timeout),
      deadline_(absl::Now() + timeout) {}

Op::~Op() {
  for (Transfer& t : transfers_) comm_.Unregister(t.buffer.get());
}

absl::StatusOr<int> Op::Send(int peer, const void* data, size_t bytes, uint64_t index) {
  // Gloo's buffer type is for both directions; a send only reads.
  return Post(peer, const_cast<void*>(data), bytes, index, /*send=*/true);
}

absl::StatusOr<int> Op::Recv(int peer, void* data, size_t bytes, uint64_t index) {
  return Post(peer, data, bytes, index, /*send=*/false);
}

absl::StatusOr<int> Op::Post(int peer, void* data, size_t bytes, uint64_t index, bool send) {
  if (index >= (uint64_t{1} << kSlotIndexBits)) {
    return absl::InternalError(
        absl::StrCat("collective ", name(), ": transfer index ", index, " out of range"));
  }
  Transfer transfer;
  transfer.peer = peer;
  transfer.send = send;
  transfer.bytes = bytes;
  try {
    transfer.buffer = comm_.context().createUnboundBuffer(data, bytes);
    if (!comm_.Register(transfer.buffer.get())) {
      return absl::CancelledError(
          absl::StrCat("collective ", name(), ": the communicator was aborted"));
    }
    transfers_.push_back(std::move(transfer));
    Transfer& posted = transfers_.back();
    const uint64_t slot = SlotOf(sequence_, index);
    if (send) {
      posted.buffer->send(peer, slot, 0, bytes);
    } else {
      posted.buffer->recv(peer, slot, 0, bytes);
    }
  } catch (const std::exception& e) {
    return Classify(e.what(), peer);
  }
  return static_cast<int>(transfers_.size()) - 1;
}

absl::Status Op::Wait(int handle) {
  Transfer& t = transfers_[handle];
  if (t.done) return absl::OkStatus();
  if (comm_.aborted()) {
    return absl::CancelledError(
        absl::StrCat("collective ", name(), ": the communicator was aborted"));
  }
  const absl::Duration left = std::max(deadline_ - absl::Now(), absl::Milliseconds(1));
  const auto timeout = std::chrono::milliseconds(absl::ToInt64Milliseconds(left) + 1);
  bool completed = false;
  std::optional<std::string> lost;
  comm_.peer_watch().Watch(t.buffer.get(), t.peer, t.send);
  try {
    completed =
        t.send ? t.buffer->waitSend(nullptr, timeout) : t.buffer->waitRecv(nullptr, timeout);
  } catch (const std::exception& e) {
    comm_.peer_watch().Unwatch();
    return Classify(e.what(), t.peer);
  }
  lost = comm_.peer_watch().Unwatch();
  if (!completed) {
    if (lost.has_value() && !comm_.aborted()) return Classify(lost->c_str(), t.peer);
    return absl::CancelledError(
        absl::StrCat("collective ", name(), ": the communicator was aborted"));
  }
  t.done = true;
  comm_.Count(t.send, t.bytes);
  return absl::OkStatus();
}

absl::Status Op::WaitAll() {
  for (size_t i = 0; i < transfers_.size(); ++i) {
    QTRAIN_RETURN_IF_ERROR(Wait(static_cast<int>(i)));
  }
  return absl::OkStatus();
}

// A Gloo exception as a status: its own timeout (the only one it raises from a wait) is
// DEADLINE_EXCEEDED; anything else from the transport means the connection is gone.
absl::Status Op::Classify(const char* what, int peer) const {
  if (comm_.aborted()) {
    return absl::CancelledError(
        absl::StrCat("collective ", name(), ": the communicator was aborted"));
  }
  if (Mentions(what, "timed out") || absl::Now() >= deadline_) {
    return absl::DeadlineExceededError(absl::StrCat("collective ", name(), " timed out after ",
                                                    absl::FormatDuration(timeout_),
                                                    " waiting for rank ", peer));
  }
  return absl::UnavailableError(
      absl::StrCat("collective ", name(), ": lost the connection to rank ", peer, ": ", what));
}

absl::Status GlooCommunicatorImpl::ExchangeHeaders(Op& op, std::array<int64_t, 2> shape,
                                                   int64_t own,
                                                   std::span<const int64_t> expected_own) {
  const int size = world_size();
  if (size == 1) return absl::OkStatus();
  Header mine;
  mine.op = static_cast<uint32_t>(op.code());
  mine.sequence = next_sequence_ - 1;
  mine.shape[0] = shape[0];
  mine.shape[1] = shape[1];
  mine.own = own;
  std::vector<Header> theirs(size);
  for (int peer = 0; peer < size; ++peer) {
    if (peer == rank()) continue;
    QTRAIN_RETURN_IF_ERROR(op.Recv(peer, &theirs[peer], sizeof(Header), 0).status());
    QTRAIN_RETURN_IF_ERROR(op.Send(peer, &mine, sizeof(Header), 0).status());
  }
  // Every header is sent and received before any is judged, so that a mismatch is reported
  // by every rank, not cut short by the first rank to see it closing its connections.
  QTRAIN_RETURN_IF_ERROR(op.WaitAll());
  for (int peer = 0; peer < size; ++peer) {
    if (peer == rank()) continue;
    const Header& h = theirs[peer];
    if (h.magic != Header::kMagic) {
      return absl::InternalError(
          absl::StrCat("collective ", op.name(), ": rank ", peer, " sent a malformed header"));
    }
    if (h.op != mine.op || h.sequence != mine.sequence) {
      return absl::InvalidArgumentError(
          absl::StrCat("collective ", op.name(), " (op #", mine.sequence, "): rank ", peer,
                       " called ", CollectiveOpName(static_cast<CollectiveOp>(h.op)), " (op #", h.sequence, ")"));
    }
    if (h.shape[0] != mine.shape[0] || h.shape[1] != mine.shape[1] ||
        (!expected_own.empty() && h.own != expected_own[peer])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "collective ", op.name(), ": mismatched sizes: rank ", peer, " has (", h.shape[0], ", ",
          h.shape[1], ", ", h.own, "), rank ", rank(), " has (", mine.shape[0], ", ", mine.shape[1],
          ", ", expected_own.empty() ? own : expected_own[peer], ")"));
    }
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status GlooCommunicatorImpl::AllReduce(CollectiveOp code, std::span<T> data) {
  const int size = world_size();
  const size_t n = data.size();
  return Run(code, {static_cast<int64_t>(n), 0}, 0, {}, [&](Op& op) -> absl::Status {
    if (n == 0 || size == 1) return absl::OkStatus();
    // Every rank's values, in rank order; each rank sums them all the same way.
    std::vector<T> gathered(n * size);
    std::copy(data.begin(), data.end(), gathered.begin() + n * rank());
    for (int peer = 0; peer < size; ++peer) {
      if (peer == rank()) continue;
      QTRAIN_RETURN_IF_ERROR(op.Recv(peer, gathered.data() + n * peer, n * sizeof(T), 1).status());
      QTRAIN_RETURN_IF_ERROR(op.Send(peer, data.data(), n * sizeof(T), 1).status());
    }
    QTRAIN_RETURN_IF_ERROR(op.WaitAll());
    std::vector<T> column(size);
    for (size_t i = 0; i < n; ++i) {
      for (int r = 0; r < size; ++r) column[r] = gathered[n * r + i];
      data[i] = TreeSumOf<T>(column);
    }
    return absl::OkStatus();
  });
}

absl::Status CheckLayout(const char* op, const ShardLayout& layout, int rank, int world_size,
                         size_t full, size_t shard) {
  if (layout.world_size() != world_size || static_cast<int64_t>(full) != layout.total() ||
      static_cast<int64_t>(shard) != layout.ShardSize(rank)) {
    return absl::InvalidArgumentError(
        absl::StrCat("collective ", op, ": buffers of ", full, " and ", shard, " elements on rank ",
                     rank, " of ", world_size, " for a layout of ", layout.total(),
                     " elements over ", layout.world_size(), " ranks (expected ", layout.total(),
                     " and ", layout.world_size() == world_size ? layout.ShardSize(rank) : 0, ")"));
  }
  return absl::OkStatus();
}

absl::Status GlooCommunicatorImpl::ReduceScatterSum(std::span<const float> partial,
                                                    std::span<float> shard,
                                                    const ShardLayout& layout) {
  QTRAIN_RETURN_IF_ERROR(Precheck(
      CheckLayout("ReduceScatterSum", layout, rank(), world_size(), partial.size(), shard.size())));
  return Run(CollectiveOp::kReduceScatter, {layout.total(), layout.block_elements()}, 0, {},
             [&](Op& op) -> absl::Status {
               QTRAIN_RETURN_IF_ERROR(SendSlicesToOwners(op, partial, layout));
               return ReduceOwnShard(op, partial, shard, layout);
             });
}

absl::Status GlooCommunicatorImpl::SendSlicesToOwners(Op& op, std::span<const float> partial,
                                                      const ShardLayout& layout) {
  for (int owner = 0; owner < world_size(); ++owner) {
    if (owner == rank()) continue;
    uint64_t index = 1;
    for (int64_t at = layout.ShardBegin(owner); at < layout.ShardEnd(owner);
         at += kChunkElements, ++index) {
      const int64_t n = std::min(kChunkElements, layout.ShardEnd(owner) - at);
      QTRAIN_RETURN_IF_ERROR(
          op.Send(owner, partial.data() + at, n * sizeof(float), index).status());
    }
  }
  return absl::OkStatus();
}

// out[i] = TreeSumOf, in rank order, of the ranks' values of element i: this rank's in `own`,
// rank r's at staged[r * stride + i].
void SumChunk(int me, int size, std::span<const float> own, const float* staged, int64_t stride,
              std::span<float> out) {
  const int64_t n = static_cast<int64_t>(out.size());
  if (size == 2) {
    // TreeSumOf of two values is their sum: the common case, without the column copy.
    const float* other = staged + stride * (1 - me);
    for (int64_t i = 0; i < n; ++i) out[i] = me == 0 ? own[i] + other[i] : other[i] + own[i];
    return;
  }
  std::vector<float> column(size);
  for (int64_t i = 0; i < n; ++i) {
    for (int r = 0; r < size; ++r) column[r] = r == me ? own[i] : staged[stride * r + i];
    out[i] = TreeSumOf<float>(column);
  }
}

// The peers' slices of this rank's shard arrive chunk by chunk into one of two staging areas
// while the other is summed.
absl::Status GlooCommunicatorImpl::ReduceOwnShard(Op& op, std::span<const float> partial,
                                                  std::span<float> shard,
                                                  const ShardLayout& layout) {
  const int size = world_size();
  const int me = rank();
  const int64_t begin = layout.ShardBegin(me);
  const int64_t end = layout.ShardEnd(me);
  const int64_t chunks = (end - begin + kChunkElements - 1) / kChunkElements;
  const int64_t stride = std::min(kChunkElements, end - begin);
  auto chunk_size = [&](int64_t c) {
    return std::min(kChunkElements, end - begin - c * kChunkElements);
  };
  std::vector<float> staging[2];
  std::vector<int> handles[2];
  auto post = [&](int64_t c) -> absl::Status {
    staging[c % 2].resize(static_cast<size_t>(stride * size));
    handles[c % 2].assign(size, -1);
    for (int peer = 0; peer < size; ++peer) {
      if (peer == me) continue;
      QTRAIN_ASSIGN_OR_RETURN(handles[c % 2][peer],
                              op.Recv(peer, staging[c % 2].data() + stride * peer,
                                      chunk_size(c) * sizeof(float), static_cast<uint64_t>(c + 1)));
    }
    return absl::OkStatus();
  };
  if (chunks > 0) QTRAIN_RETURN_IF_ERROR(post(0));
  for (int64_t c = 0; c < chunks; ++c) {
    if (c + 1 < chunks) QTRAIN_RETURN_IF_ERROR(post(c + 1));
    for (int peer = 0; peer < size; ++peer) {
      if (peer != me) QTRAIN_RETURN_IF_ERROR(op.Wait(handles[c % 2][peer]));
    }
    const int64_t at = c * kChunkElements;
    SumChunk(me, size, partial.subspan(begin + at, chunk_size(c)), staging[c % 2].data(), stride,
             shard.subspan(at, chunk_size(c)));
  }
  return absl::OkStatus();
}

absl::Status GlooCommunicatorImpl::AllGather(std::span<const float> shard, std::span<float> full,
                                             const ShardLayout& layout) {
  QTRAIN_RETURN_IF_ERROR(
      Precheck(CheckLayout("AllGather", layout, rank(), world_size(), full.size(), shard.size())));
  const int size = world_size();
  const int me = rank();
  return Run(
      CollectiveOp::kAllGather, {layout.total(), layout.block_elements()}, 0, {},
      [&](Op& op) -> absl::Status {
        float* own = full.data() + layout.ShardBegin(me);
        if (!shard.empty() && shard.data() != own) {
          std::memmove(own, shard.data(), shard.size() * sizeof(float));
        }
        for (int peer = 0; peer < size; ++peer) {
          if (peer == me) continue;
          if (layout.ShardSize(peer) > 0) {
            QTRAIN_RETURN_IF_ERROR(op.Recv(peer, full.data() + layout.ShardBegin(peer),
                                           layout.ShardSize(peer) * sizeof(float), 1)
                                       .status());
          }
          if (!shard.empty()) {
            QTRAIN_RETURN_IF_ERROR(op.Send(peer, own, shard.size() * sizeof(float), 1).status());
          }
        }
        return op.WaitAll();
      });
}

absl::Status GlooCommunicatorImpl::AllGatherV(std::span<const double> mine, std::span<double> all,
                                              std::span<const int64_t> counts) {
  const int size = world_size();
  const int me = rank();
  int64_t sum = 0;
  bool valid = static_cast<int>(counts.size()) == size;
  for (int64_t c : counts) {
    valid = valid && c >= 0;
    sum += c;
  }
  valid = valid && counts[me] == static_cast<int64_t>(mine.size()) &&
          sum == static_cast<int64_t>(all.size());
  if (!valid) {
    return Precheck(absl::InvalidArgumentError(absl::StrCat(
        "collective AllGatherV: ", mine.size(), " values on rank ", me, " into ", all.size(),
        " with counts [", absl::StrJoin(counts, ", "), "] (a group of ", size, ")")));
  }
  return Run(
      CollectiveOp::kAllGatherV, {sum, 0}, static_cast<int64_t>(mine.size()), counts,
      [&](Op& op) -> absl::Status {
        std::vector<int64_t> offset(size + 1, 0);
        for (int r = 0; r < size; ++r) offset[r + 1] = offset[r] + counts[r];
        if (!mine.empty()) {
          std::memmove(all.data() + offset[me], mine.data(), mine.size() * sizeof(double));
        }
        for (int peer = 0; peer < size; ++peer) {
          if (peer == me) continue;
          if (counts[peer] > 0) {
            QTRAIN_RETURN_IF_ERROR(
                op.Recv(peer, all.data() + offset[peer], counts[peer] * sizeof(double), 1)
                    .status());
          }
          if (!mine.empty()) {
            QTRAIN_RETURN_IF_ERROR(
                op.Send(peer, all.data() + offset[me], mine.size() * sizeof(double), 1).status());
          }
        }
        return op.WaitAll();
      });
}

absl::Status ValidateOptions(const GlooOptions& o) {
  std::string problem;
  if (o.world_size < 1) {
    problem = absl::StrCat("world_size ", o.world_size, " (must be >= 1)");
  } else if (o.rank < 0 || o.rank >= o.world_size) {
    problem = absl::StrCat("rank ", o.rank, " of a group of ", o.world_size);
  } else if (o.store == nullptr) {
    problem = "no rendezvous store";
  } else if (o.listen_host.empty()) {
    problem = "empty listen_host";
  } else if (o.connect_timeout <= absl::ZeroDuration() ||
             o.connect_timeout == absl::InfiniteDuration()) {
    problem = absl::StrCat("connect_timeout ", absl::FormatDuration(o.connect_timeout),
                           " (must be positive and finite)");
  } else if (o.op_timeout <= absl::ZeroDuration() || o.op_timeout == absl::InfiniteDuration()) {
    problem = absl::StrCat("op_timeout ", absl::FormatDuration(o.op_timeout),
                           " (must be positive and finite)");
  }
  if (problem.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("gloo communicator: ", problem));
}

std::chrono::milliseconds ToChrono(absl::Duration d) {
  return std::chrono::milliseconds(std::max<int64_t>(1, absl::ToInt64Milliseconds(d)));
}

// The ranks whose addresses are not in the store now (Gloo's keys are the ranks' numbers).
std::vector<int> MissingRanks(const GlooOptions& o) {
  std::vector<int> missing;
  for (int r = 0; r < o.world_size; ++r) {
    if (r == o.rank) continue;
    if (!o.store->Get(absl::StrCat(o.prefix, r), absl::Now()).ok()) missing.push_back(r);
  }
  return missing;
}

// A failed connectFullMesh as a status.
absl::Status ConnectError(const GlooOptions& o, const GlooStoreAdapter& store,
                          const std::string& what) {
  const std::string who = absl::StrCat("rank ", o.rank, " of ", o.world_size);
  absl::Status store_error = store.error();
  if (store_error.code() == absl::StatusCode::kDeadlineExceeded) {
    std::vector<int> missing = MissingRanks(o);
    return absl::DeadlineExceededError(absl::StrCat(
        "collectives rendezvous (", who, "): rank", missing.size() == 1 ? " " : "s ",
        missing.empty() ? "?" : absl::StrJoin(missing, ", "), " did not show up within ",
        absl::FormatDuration(o.connect_timeout), " (", store_error.message(), ")"));
  }
  if (!store_error.ok()) {
    if (store_error.code() == absl::StatusCode::kCancelled) return store_error;
    return absl::Status(store_error.code(), absl::StrCat("collectives rendezvous (", who,
                                                         "): ", store_error.message()));
  }
  if (Mentions(what, "timed out") || Mentions(what, "timeout")) {
    return absl::DeadlineExceededError(
        absl::StrCat("collectives rendezvous (", who, "): connecting to the peers timed out after ",
                     absl::FormatDuration(o.connect_timeout), ": ", what));
  }
  return absl::UnavailableError(
      absl::StrCat("collectives rendezvous (", who, "): connecting to the peers failed: ", what));
}

// Gloo crashes on a host name that does not resolve and throws on one it cannot bind, so the
// address is checked here first: it must resolve to an address this machine can listen on.
absl::Status CheckListenHost(const std::string& host) {
  struct addrinfo hints = {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  struct addrinfo* result = nullptr;
  const int rv = ::getaddrinfo(host.c_str(), nullptr, &hints, &result);
  if (rv != 0) {
    return absl::InvalidArgumentError(absl::StrCat("gloo communicator: listen host '", host,
                                                   "' does not resolve: ", ::gai_strerror(rv)));
  }
  bool bindable = false;
  for (struct addrinfo* a = result; a != nullptr && !bindable; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    bindable = ::bind(fd, a->ai_addr, a->ai_addrlen) == 0;  // port 0: any free port
    ::close(fd);
  }
  ::freeaddrinfo(result);
  if (!bindable) {
    return absl::InvalidArgumentError(absl::StrCat("gloo communicator: listen host '", host,
                                                   "' is not an address of this machine"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> GlooCommunicator::Connect(
    const GlooOptions& options) {
  QTRAIN_RETURN_IF_ERROR(ValidateOptions(options));
  QTRAIN_RETURN_IF_ERROR(CheckListenHost(options.listen_host));
  // A peer that dies mid-transfer must be an error of the op, not a SIGPIPE that ends the
  // process: keep the default action away unless the program chose one.
  struct sigaction current;
  if (::sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) {
    ::signal(SIGPIPE, SIG_IGN);
  }
  std::shared_ptr<gloo::transport::Device> device;
  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = options.listen_host;
    device = gloo::transport::tcp::CreateDevice(attr);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("gloo communicator: cannot listen on '",
                                                   options.listen_host, "': ", e.what()));
  }
  auto context = std::make_shared<gloo::rendezvous::Context>(options.rank, options.world_size);
  context->setTimeout(ToChrono(options.connect_timeout));
  GlooStoreAdapter store(options.store, options.prefix, absl::Now() + options.connect_timeout,
                         options.cancel);
  try {
    context->connectFullMesh(store, device);
  } catch (const std::exception& e) {
    absl::Status status = ConnectError(options, store, e.what());
    QTRAIN_LOG(WARNING) << status.message();
    return status;
  }
  context->setTimeout(ToChrono(options.op_timeout));
  QTRAIN_LOG(INFO) << "collectives connected: rank " << options.rank << " of " << options.world_size
                   << " on " << device->str();
  return std::unique_ptr<Communicator>(
      new GlooCommunicatorImpl(std::move(device), std::move(context), options.op_timeout));
}

}  // namespace qtrain::comm
