#include "worker/comm/in_process_communicator.h"

#include <cstring>
#include <functional>
#include <random>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/comm/tree_sum.h"

namespace qtrain::comm {
namespace {

using ::testing::HasSubstr;

// Runs body(rank, communicator) on one thread per rank; returns each rank's status.
std::vector<absl::Status> OnEveryRank(std::vector<std::unique_ptr<Communicator>>& group,
                                      const std::function<absl::Status(int, Communicator&)>& body) {
  std::vector<absl::Status> results(group.size());
  std::vector<std::thread> threads;
  for (size_t r = 0; r < group.size(); ++r) {
    threads.emplace_back([&, r] { results[r] = body(static_cast<int>(r), *group[r]); });
  }
  for (std::thread& t : threads) t.join();
  return results;
}

std::vector<float> Values(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng) * std::ldexp(1.0f, static_cast<int>(rng() % 30) - 15);
  return v;
}

bool SameBytes(std::span<const float> a, std::span<const float> b) {
  // memcmp must not see the null pointer of an empty span (a rank that owns nothing).
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

TEST(InProcessGroupTest, ReduceScatterIsTheTreeSumInRankOrderAndAllGatherRestoresIt) {
  // (4 ranks over 2 blocks: ranks 0 and 2 own nothing.)
  for (auto sizes : {std::tuple<int, int64_t, int64_t>{1, 1000, 64},
                     {2, 1000, 64},
                     {3, 1000, 64},
                     {4, 1000, 64},
                     {4, 100, 64}}) {
    // Plain variables, not structured bindings: a lambda below captures them, which clang 14
    // refuses for bindings.
    const int w = std::get<0>(sizes);
    const int64_t kTotal = std::get<1>(sizes);
    const int64_t block = std::get<2>(sizes);
    SCOPED_TRACE(absl::StrCat(w, " ranks, ", kTotal, " elements"));
    auto layout = ShardLayout::Create(kTotal, w, block);
    ASSERT_TRUE(layout.ok());
    std::vector<std::vector<float>> partials;
    for (int r = 0; r < w; ++r) partials.push_back(Values(kTotal, 7u + r));
    std::vector<float> expected(kTotal);
    std::vector<std::span<const float>> leaves(partials.begin(), partials.end());
    TreeSumInto<float>(leaves, expected);
    std::vector<std::vector<float>> gathered(w, std::vector<float>(kTotal, -1.0f));
    auto group = MakeInProcessGroup(w, absl::Seconds(10));
    const auto results = OnEveryRank(group, [&](int r, Communicator& c) -> absl::Status {
      EXPECT_EQ(c.rank(), r);
      EXPECT_EQ(c.world_size(), w);
      std::vector<float> shard(static_cast<size_t>(layout->ShardSize(r)));
      if (absl::Status s = c.ReduceScatterSum(partials[r], shard, *layout); !s.ok()) return s;
      EXPECT_TRUE(
          SameBytes(shard, std::span(expected).subspan(layout->ShardBegin(r), shard.size())));
      // In place: the shard already sits at its range of the full buffer.
      std::copy(shard.begin(), shard.end(), gathered[r].begin() + layout->ShardBegin(r));
      return c.AllGather(std::span(gathered[r]).subspan(layout->ShardBegin(r), shard.size()),
                         gathered[r], *layout);
    });
    for (int r = 0; r < w; ++r) {
      ASSERT_TRUE(results[r].ok()) << results[r];
      EXPECT_TRUE(SameBytes(gathered[r], expected)) << "rank " << r;
    }
  }
}

TEST(InProcessGroupTest, SmallCollectives) {
  constexpr int kW = 3;
  auto group = MakeInProcessGroup(kW, absl::Seconds(10));
  std::vector<std::vector<double>> gathered(kW);
  std::vector<std::vector<double>> reduced(kW);
  std::vector<std::vector<float>> reduced_f(kW);
  std::vector<uint64_t> broadcast(kW);
  const auto results = OnEveryRank(group, [&](int r, Communicator& c) -> absl::Status {
    if (absl::Status s = c.Barrier(); !s.ok()) return s;
    // Rank r gives r + 1 values.
    std::vector<double> mine(static_cast<size_t>(r + 1), 10.0 * r);
    const std::vector<int64_t> counts = {1, 2, 3};
    gathered[r].assign(6, 0);
    if (absl::Status s = c.AllGatherV(mine, gathered[r], counts); !s.ok()) return s;
    reduced[r] = {1e16, 1.0 * r, -1e16};
    if (absl::Status s = c.AllReduceSum(std::span<double>(reduced[r])); !s.ok()) return s;
    reduced_f[r] = {0.1f * static_cast<float>(r + 1)};
    if (absl::Status s = c.AllReduceSum(std::span<float>(reduced_f[r])); !s.ok()) return s;
    broadcast[r] = r == 1 ? 0x0123456789abcdefull : 0;
    return c.Broadcast(std::as_writable_bytes(std::span(&broadcast[r], 1)), /*root=*/1);
  });
  const std::vector<double> e0 = {1e16, 1e16, -1e16};
  for (int r = 0; r < kW; ++r) {
    ASSERT_TRUE(results[r].ok()) << results[r];
    EXPECT_EQ(gathered[r], (std::vector<double>{0, 10, 10, 20, 20, 20}));
    // TreeSum of 3: (x0 + x1) + x2.
    EXPECT_EQ(reduced[r][0], (1e16 + 1e16) + 1e16);
    EXPECT_EQ(reduced[r][1], (0.0 + 1.0) + 2.0);
    EXPECT_EQ(reduced_f[r][0], (0.1f + 0.2f) + 0.3f * 1.0f);
    EXPECT_EQ(broadcast[r], 0x0123456789abcdefull);
    EXPECT_GT(group[r]->stats().bytes_received, 0);
  }
  EXPECT_EQ(group[0]->backend(), "in-process");
}

TEST(InProcessGroupTest, AMissingRankIsADeadlineNamingItAndBreaksTheCommunicator) {
  auto group = MakeInProcessGroup(3, absl::Milliseconds(200));
  const auto results = OnEveryRank(group, [&](int r, Communicator& c) -> absl::Status {
    if (r == 2) return absl::OkStatus();  // never arrives
    return c.Barrier();
  });
  for (int r : {0, 1}) {
    EXPECT_EQ(results[r].code(), absl::StatusCode::kDeadlineExceeded) << results[r];
    EXPECT_THAT(std::string(results[r].message()),
                HasSubstr("collective barrier timed out after 200ms waiting for rank 2"));
    const absl::Status later = group[r]->Barrier();
    EXPECT_EQ(later.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(later.message()), HasSubstr("timed out"));
  }
}

TEST(InProcessGroupTest, AbortEndsABlockedOpOnEveryRankAtOnce) {
  auto group = MakeInProcessGroup(3, absl::Seconds(60));
  const absl::Time start = absl::Now();
  const auto results = OnEveryRank(group, [&](int r, Communicator& c) -> absl::Status {
    if (r == 2) {
      absl::SleepFor(absl::Milliseconds(100));
      c.Abort();
      c.Abort();  // idempotent
      return c.Barrier();
    }
    return c.Barrier();
  });
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_EQ(results[2].code(), absl::StatusCode::kCancelled) << results[2];
  for (int r : {0, 1}) {
    EXPECT_EQ(results[r].code(), absl::StatusCode::kUnavailable) << results[r];
    EXPECT_THAT(std::string(results[r].message()), HasSubstr("rank 2 closed the group"));
  }
}

TEST(InProcessGroupTest, AbortFromAnotherThreadCancelsTheOwnBlockedOp) {
  auto group = MakeInProcessGroup(2, absl::Seconds(60));
  absl::Status blocked;
  std::thread waiter([&] { blocked = group[0]->Barrier(); });
  absl::SleepFor(absl::Milliseconds(100));
  group[0]->Abort();
  waiter.join();
  EXPECT_EQ(blocked.code(), absl::StatusCode::kCancelled) << blocked;
  EXPECT_EQ(group[1]->Barrier().code(), absl::StatusCode::kUnavailable);
}

TEST(InProcessGroupTest, MismatchedArgumentsAreInvalid) {
  auto group = MakeInProcessGroup(2, absl::Seconds(10));
  const auto results = OnEveryRank(group, [&](int r, Communicator& c) -> absl::Status {
    std::vector<double> data(static_cast<size_t>(r + 1));
    return c.AllReduceSum(std::span<double>(data));
  });
  for (int r : {0, 1}) EXPECT_EQ(results[r].code(), absl::StatusCode::kInvalidArgument);

  auto other = MakeInProcessGroup(2, absl::Milliseconds(100));
  auto layout = ShardLayout::Create(10, 3);
  std::vector<float> buffer(10);
  EXPECT_EQ(other[0]->AllGather(buffer, buffer, *layout).code(),
            absl::StatusCode::kInvalidArgument);
  std::byte b{};
  EXPECT_EQ(other[1]->Broadcast(std::span(&b, 1), 2).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace qtrain::comm
