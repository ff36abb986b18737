// The ranks of an in-process group meet in a shared table of slots: each op, a rank deposits a
// description of its buffers and waits until every rank has deposited for the same op; then
// each rank reads the others' buffers directly and writes only its own; last, every rank waits
// until all have finished reading, so no buffer goes away while a peer reads it.
#include "worker/comm/in_process_communicator.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <numeric>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "worker/comm/tree_sum.h"

namespace qtrain::comm {
namespace {

// What one rank brings to an op; compared across ranks before anything is read.
struct Deposit {
  const char* op = "";
  const void* in = nullptr;  // this rank's input buffer
  int64_t count = 0;         // its elements
  int root = 0;
  const int64_t* counts = nullptr;  // AllGatherV
  int64_t layout_total = 0;
  int64_t layout_blocks = 0;
};

struct SharedGroup {
  SharedGroup(int world_size, absl::Duration op_timeout)
      : world_size(world_size), op_timeout(op_timeout), slots(world_size) {}
  struct Slot {
    int64_t arrived = 0;    // the op sequence number of the deposit (0: none yet)
    int64_t departed = 0;   // the last op this rank has finished reading for
    int64_t withdrawn = 0;  // the last op this rank gave up waiting for (it did arrive)
    Deposit deposit;
  };
  const int world_size;
  const absl::Duration op_timeout;
  absl::Mutex mu;
  std::vector<Slot> slots ABSL_GUARDED_BY(mu);
  int closed_by ABSL_GUARDED_BY(mu) = -1;  // the rank that aborted the group
};

std::string RankList(const std::vector<int>& ranks) {
  return absl::StrCat(ranks.size() == 1 ? "rank " : "ranks ", absl::StrJoin(ranks, ", "));
}

// A local argument error breaks this rank's communicator before the op starts (the peers then
// time out, or fail once this rank aborts).
#define QTRAIN_COMM_RETURN_IF_ERROR(expr)     \
  do {                                        \
    absl::Status _status = (expr);            \
    if (!_status.ok()) return Break(_status); \
  } while (false)

class InProcessCommunicator final : public Communicator {
 public:
  InProcessCommunicator(std::shared_ptr<SharedGroup> group, int rank)
      : group_(std::move(group)), rank_(rank) {}

  int rank() const override { return rank_; }
  int world_size() const override { return group_->world_size; }
  std::string_view backend() const override { return "in-process"; }

  absl::Status Barrier() override {
    return Run({.op = "barrier"}, [](std::span<const Deposit>) { return absl::OkStatus(); });
  }

  absl::Status Broadcast(std::span<std::byte> data, int root) override {
    if (root < 0 || root >= world_size()) {
      return Break(absl::InvalidArgumentError(
          absl::StrCat("broadcast: root ", root, " of ", world_size(), " ranks")));
    }
    const Deposit mine{.op = "broadcast",
                       .in = data.data(),
                       .count = static_cast<int64_t>(data.size()),
                       .root = root};
    const absl::Status status = Run(mine, [&](std::span<const Deposit> all) {
      if (rank_ != root && !data.empty()) std::memcpy(data.data(), all[root].in, data.size());
      return absl::OkStatus();
    });
    if (status.ok() && rank_ != root) stats_.bytes_received += static_cast<int64_t>(data.size());
    if (status.ok() && rank_ == root) {
      stats_.bytes_sent += static_cast<int64_t>(data.size()) * (world_size() - 1);
    }
    return status;
  }

  absl::Status AllReduceSum(std::span<float> data) override { return AllReduce<float>(data); }
  absl::Status AllReduceSum(std::span<double> data) override { return AllReduce<double>(data); }

  absl::Status ReduceScatterSum(std::span<const float> partial, std::span<float> shard,
                                const ShardLayout& layout) override {
    QTRAIN_COMM_RETURN_IF_ERROR(
        CheckLayout("reduce-scatter", layout, partial.size(), shard.size()));
    const int64_t begin = layout.ShardBegin(rank_);
    const absl::Status status = Run(
        LayoutDeposit("reduce-scatter", partial.data(), layout), [&](std::span<const Deposit> all) {
          std::vector<float> column(all.size());
          for (size_t i = 0; i < shard.size(); ++i) {
            for (size_t q = 0; q < all.size(); ++q) {
              column[q] = static_cast<const float*>(all[q].in)[begin + static_cast<int64_t>(i)];
            }
            shard[i] = TreeSumOf<float>(column);
          }
          return absl::OkStatus();
        });
    if (status.ok()) {
      const int64_t mine = layout.ShardSize(rank_);
      stats_.bytes_sent += (layout.total() - mine) * static_cast<int64_t>(sizeof(float));
      stats_.bytes_received += mine * (world_size() - 1) * static_cast<int64_t>(sizeof(float));
    }
    return status;
  }

  absl::Status AllGather(std::span<const float> shard, std::span<float> full,
                         const ShardLayout& layout) override {
    QTRAIN_COMM_RETURN_IF_ERROR(CheckLayout("all-gather", layout, full.size(), shard.size()));
    const absl::Status status =
        Run(LayoutDeposit("all-gather", shard.data(), layout), [&](std::span<const Deposit> all) {
          for (int q = 0; q < world_size(); ++q) {
            const auto* from = static_cast<const float*>(all[q].in);
            float* to = full.data() + layout.ShardBegin(q);
            const auto bytes = static_cast<size_t>(layout.ShardSize(q)) * sizeof(float);
            // This rank's shard may already be in place (the trainer gathers in place).
            if (from != to && bytes > 0) std::memmove(to, from, bytes);
          }
          return absl::OkStatus();
        });
    if (status.ok()) {
      const int64_t mine = layout.ShardSize(rank_);
      stats_.bytes_sent += mine * (world_size() - 1) * static_cast<int64_t>(sizeof(float));
      stats_.bytes_received += (layout.total() - mine) * static_cast<int64_t>(sizeof(float));
    }
    return status;
  }

  absl::Status AllGatherV(std::span<const double> mine, std::span<double> all,
                          std::span<const int64_t> counts) override {
    const int64_t sum = std::accumulate(counts.begin(), counts.end(), int64_t{0});
    const bool negative =
        std::any_of(counts.begin(), counts.end(), [](int64_t c) { return c < 0; });
    if (static_cast<int>(counts.size()) != world_size() || negative ||
        counts[rank_] != static_cast<int64_t>(mine.size()) ||
        sum != static_cast<int64_t>(all.size())) {
      return Break(absl::InvalidArgumentError(absl::StrCat(
          "all-gather-v: rank ", rank_, " gives ", mine.size(), " values into ", all.size(),
          " with counts [", absl::StrJoin(counts, ", "), "] for ", world_size(), " ranks")));
    }
    const Deposit deposit{.op = "all-gather-v",
                          .in = mine.data(),
                          .count = static_cast<int64_t>(mine.size()),
                          .counts = counts.data()};
    const absl::Status status = Run(deposit, [&](std::span<const Deposit> deposits) {
      int64_t offset = 0;
      for (int q = 0; q < world_size(); ++q) {
        if (!std::equal(counts.begin(), counts.end(), deposits[q].counts)) {
          return absl::InvalidArgumentError(
              absl::StrCat("all-gather-v: rank ", q, " gives other counts than rank ", rank_));
        }
        const auto* from = static_cast<const double*>(deposits[q].in);
        if (counts[q] > 0 && from != all.data() + offset) {
          std::memmove(all.data() + offset, from, static_cast<size_t>(counts[q]) * sizeof(double));
        }
        offset += counts[q];
      }
      return absl::OkStatus();
    });
    if (status.ok()) {
      stats_.bytes_sent += static_cast<int64_t>(mine.size() * sizeof(double)) * (world_size() - 1);
      stats_.bytes_received += static_cast<int64_t>((all.size() - mine.size()) * sizeof(double));
    }
    return status;
  }

  void Abort() override {
    aborted_.store(true);
    absl::MutexLock lock(&group_->mu);
    if (group_->closed_by < 0) group_->closed_by = rank_;
  }

  CommStats stats() const override { return stats_; }

 private:
  absl::Status CheckLayout(const char* op, const ShardLayout& layout, size_t full,
                           size_t shard) const {
    if (layout.world_size() != world_size() || static_cast<int64_t>(full) != layout.total() ||
        static_cast<int64_t>(shard) != layout.ShardSize(rank_)) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": rank ", rank_, " gives buffers of ", full, " and ", shard,
                       " elements for a layout of ", layout.total(), " over ", layout.world_size(),
                       " ranks (a group of ", world_size(), ")"));
    }
    return absl::OkStatus();
  }

  static Deposit LayoutDeposit(const char* op, const float* in, const ShardLayout& layout) {
    return {.op = op,
            .in = in,
            .layout_total = layout.total(),
            .layout_blocks = layout.block_elements()};
  }

  template <typename T>
  absl::Status AllReduce(std::span<T> data) {
    std::vector<T> sum(data.size());
    const Deposit mine{
        .op = "all-reduce", .in = data.data(), .count = static_cast<int64_t>(data.size())};
    const absl::Status status = Run(mine, [&](std::span<const Deposit> all) {
      std::vector<T> column(all.size());
      for (size_t i = 0; i < data.size(); ++i) {
        for (size_t q = 0; q < all.size(); ++q) column[q] = static_cast<const T*>(all[q].in)[i];
        sum[i] = TreeSumOf<T>(column);
      }
      return absl::OkStatus();
    });
    if (!status.ok()) return status;
    // Written only now: the peers read `data` until every rank has left the op.
    std::copy(sum.begin(), sum.end(), data.begin());
    const auto bytes = static_cast<int64_t>(data.size() * sizeof(T)) * (world_size() - 1);
    stats_.bytes_sent += bytes;
    stats_.bytes_received += bytes;
    return absl::OkStatus();
  }

  absl::Status Break(absl::Status status) {
    if (broken_.ok()) broken_ = status;
    return status;
  }

  // One op: deposit `mine`, wait for every rank, check that they agree, run `work` (which
  // reads the deposits and writes only this rank's buffers), wait until every rank is done.
  absl::Status Run(const Deposit& mine,
                   const std::function<absl::Status(std::span<const Deposit>)>& work) {
    if (aborted_.load()) return Break(absl::CancelledError("the communicator was aborted"));
    if (!broken_.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("the communicator failed earlier: ", broken_.ToString()));
    }
    const absl::Time start = absl::Now();
    const int64_t seq = ++seq_;
    std::vector<Deposit> all;
    {
      absl::MutexLock lock(&group_->mu);
      SharedGroup& g = *group_;
      g.slots[rank_].deposit = mine;
      g.slots[rank_].arrived = seq;
      const auto all_arrived = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu) {
        return std::all_of(g.slots.begin(), g.slots.end(),
                           [&](const SharedGroup::Slot& s) { return s.arrived == seq; });
      };
      const auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu) {
        return all_arrived() || g.closed_by >= 0;
      };
      g.mu.AwaitWithDeadline(absl::Condition(&ready), start + g.op_timeout);
      if (!all_arrived()) {
        g.slots[rank_].arrived = seq - 1;  // withdrawn: no peer reads this rank's buffers
        g.slots[rank_].withdrawn = seq;
        stats_.time_in_ops += absl::Now() - start;
        if (g.closed_by == rank_) {
          return Break(absl::CancelledError(
              absl::StrCat("collective ", mine.op, " cancelled: the communicator was aborted")));
        }
        if (g.closed_by >= 0) {
          return Break(absl::UnavailableError(
              absl::StrCat("collective ", mine.op, ": rank ", g.closed_by, " closed the group")));
        }
        std::vector<int> missing;
        for (int q = 0; q < g.world_size; ++q) {
          if (g.slots[q].arrived != seq && g.slots[q].withdrawn != seq) missing.push_back(q);
        }
        return Break(absl::DeadlineExceededError(
            absl::StrCat("collective ", mine.op, " timed out after ",
                         absl::FormatDuration(g.op_timeout), " waiting for ", RankList(missing))));
      }
      for (const SharedGroup::Slot& s : g.slots) all.push_back(s.deposit);
    }
    absl::Status result = Agree(all);
    if (result.ok()) result = work(all);
    {
      absl::MutexLock lock(&group_->mu);
      SharedGroup& g = *group_;
      g.slots[rank_].departed = seq;
      // No deadline: every rank has arrived, and reading does not block.
      const auto all_departed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu) {
        return std::all_of(g.slots.begin(), g.slots.end(),
                           [&](const SharedGroup::Slot& s) { return s.departed >= seq; });
      };
      g.mu.Await(absl::Condition(&all_departed));
    }
    stats_.time_in_ops += absl::Now() - start;
    if (!result.ok()) return Break(result);
    return absl::OkStatus();
  }

  // Every rank must be in the same op with matching sizes.
  absl::Status Agree(std::span<const Deposit> all) const {
    const Deposit& mine = all[rank_];
    for (int q = 0; q < world_size(); ++q) {
      const Deposit& d = all[q];
      if (std::strcmp(d.op, mine.op) != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("collective ", mine.op, ": rank ", q, " is in ", d.op, " instead"));
      }
      const bool same_count = std::strcmp(mine.op, "all-gather-v") == 0 || d.count == mine.count;
      if (!same_count || d.root != mine.root || d.layout_total != mine.layout_total ||
          d.layout_blocks != mine.layout_blocks) {
        return absl::InvalidArgumentError(
            absl::StrCat("collective ", mine.op, ": rank ", q, " gives ", d.count,
                         " elements (layout ", d.layout_total, "), rank ", rank_, " ", mine.count,
                         " (layout ", mine.layout_total, ")"));
      }
    }
    return absl::OkStatus();
  }

  std::shared_ptr<SharedGroup> group_;
  const int rank_;
  int64_t seq_ = 0;
  std::atomic<bool> aborted_{false};
  absl::Status broken_;  // the first error (ops are called from one thread)
  CommStats stats_;
};

#undef QTRAIN_COMM_RETURN_IF_ERROR

}  // namespace

std::vector<std::unique_ptr<Communicator>> MakeInProcessGroup(int world_size,
                                                              absl::Duration op_timeout) {
  auto group = std::make_shared<SharedGroup>(std::max(world_size, 1), op_timeout);
  std::vector<std::unique_ptr<Communicator>> members;
  for (int r = 0; r < group->world_size; ++r) {
    members.push_back(std::make_unique<InProcessCommunicator>(group, r));
  }
  return members;
}

}  // namespace qtrain::comm
