// The group of one: collectives are copies.
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "worker/comm/communicator.h"

namespace qtrain::comm {
namespace {

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  std::string_view backend() const override { return "local"; }

  absl::Status Barrier() override { return Check(); }
  absl::Status Broadcast(std::span<std::byte>, int root) override {
    if (root != 0)
      return absl::InvalidArgumentError(absl::StrCat("broadcast: root ", root, " of 1"));
    return Check();
  }
  absl::Status AllReduceSum(std::span<float>) override { return Check(); }
  absl::Status AllReduceSum(std::span<double>) override { return Check(); }

  absl::Status ReduceScatterSum(std::span<const float> partial, std::span<float> shard,
                                const ShardLayout& layout) override {
    if (absl::Status s = CheckLayout(layout, partial.size(), shard.size()); !s.ok()) return s;
    std::copy(partial.begin(), partial.end(), shard.begin());
    return Check();
  }
  absl::Status AllGather(std::span<const float> shard, std::span<float> full,
                         const ShardLayout& layout) override {
    if (absl::Status s = CheckLayout(layout, full.size(), shard.size()); !s.ok()) return s;
    if (shard.data() != full.data()) std::copy(shard.begin(), shard.end(), full.begin());
    return Check();
  }
  absl::Status AllGatherV(std::span<const double> mine, std::span<double> all,
                          std::span<const int64_t> counts) override {
    if (counts.size() != 1 || counts[0] != static_cast<int64_t>(mine.size()) ||
        all.size() != mine.size()) {
      return absl::InvalidArgumentError(absl::StrCat("all-gather: ", mine.size(), " values into ",
                                                     all.size(), " with ", counts.size(),
                                                     " counts (a group of 1)"));
    }
    if (mine.data() != all.data()) std::copy(mine.begin(), mine.end(), all.begin());
    return Check();
  }
  void Abort() override { aborted_ = true; }
  CommStats stats() const override { return {}; }

 private:
  absl::Status Check() const {
    if (aborted_) return absl::CancelledError("the communicator was aborted");
    return absl::OkStatus();
  }
  static absl::Status CheckLayout(const ShardLayout& layout, size_t full, size_t shard) {
    if (layout.world_size() != 1 || static_cast<int64_t>(full) != layout.total() || shard != full) {
      return absl::InvalidArgumentError(absl::StrCat(
          "collective: buffers of ", full, " and ", shard, " elements for a layout of ",
          layout.total(), " over ", layout.world_size(), " ranks (a group of 1)"));
    }
    return absl::OkStatus();
  }
  bool aborted_ = false;
};

}  // namespace

std::unique_ptr<Communicator> MakeLocalCommunicator() {
  return std::make_unique<LocalCommunicator>();
}

}  // namespace qtrain::comm
