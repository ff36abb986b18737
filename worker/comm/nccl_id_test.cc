#include "worker/comm/nccl_id.h"

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain::comm {
namespace {

using ::testing::HasSubstr;

NcclUniqueIdBytes RandomId(uint32_t seed) {
  std::mt19937 rng(seed);
  NcclUniqueIdBytes id;
  for (char& c : id) c = static_cast<char>(rng() & 0xff);
  id[0] = '\0';  // ids hold zeros and high bytes: the encoding must keep both
  id[1] = static_cast<char>(0xff);
  return id;
}

TEST(NcclIdTest, EncodingRoundTripsEveryByte) {
  const NcclUniqueIdBytes id = RandomId(1);
  const std::string text = EncodeNcclId(id, 8);
  EXPECT_THAT(text, ::testing::StartsWith("nccl-id v1 world=8 00ff"));
  EXPECT_EQ(text.size(), std::string("nccl-id v1 world=8 ").size() + 2 * kNcclUniqueIdBytes);
  absl::StatusOr<NcclUniqueIdBytes> back = DecodeNcclId(text, 8);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, id);
}

TEST(NcclIdTest, BadValuesAreRefusedNamingTheProblem) {
  const std::string good = EncodeNcclId(RandomId(2), 4);
  const std::string hex = good.substr(good.rfind(' ') + 1);
  struct Case {
    std::string value;
    std::string says;
  };
  const std::vector<Case> cases = {
      {"", "expected \"nccl-id v1"},
      {"127.0.0.1:4242", "expected \"nccl-id v1"},
      {"gloo-id v1 world=4 " + hex, "expected"},
      {"nccl-id v2 world=4 " + hex, "version \"v2\""},
      {"nccl-id v1 world=x " + hex, "\"world=x\" is not world=<W>"},
      {"nccl-id v1 size=4 " + hex, "is not world=<W>"},
      {"nccl-id v1 world=04 " + hex, "is not world=<W>"},
      {"nccl-id v1 world=+4 " + hex, "is not world=<W>"},
      {"nccl-id v1 world=4\n " + hex, "is not world=<W>"},
      {"nccl-id v1 world= " + hex, "is not world=<W>"},
      {"nccl-id v1 world=2 " + hex, "group of 2 ranks, this rank was started for 4"},
      {"nccl-id v1 world=4 " + hex.substr(2), "254 hex digits, expected 256"},
      {"nccl-id v1 world=4 " + hex + "00", "258 hex digits"},
      {"nccl-id v1 world=4 zz" + hex.substr(2), "offset 0"},
      {"nccl-id v1 world=4 0" + std::string("G") + hex.substr(2), "offset 1"},
      {"nccl-id v1 world=4  " + hex, "expected"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<NcclUniqueIdBytes> got = DecodeNcclId(c.value, 4);
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << c.value;
    EXPECT_THAT(got.status().message(), HasSubstr(c.says)) << c.value;
  }
}

TEST(NcclIdTest, EveryRankGetsRankZerosIdAndOnlyRankZeroMakesIt) {
  auto store = MakeInMemoryStore();
  constexpr int kWorld = 4;
  std::atomic<int> made{0};
  std::vector<absl::StatusOr<NcclUniqueIdBytes>> got(kWorld);
  std::vector<std::thread> ranks;
  // The others wait before rank 0 sets the id: Get must block, not fail.
  for (int rank = kWorld - 1; rank >= 0; --rank) {
    ranks.emplace_back([&, rank] {
      if (rank == 0) absl::SleepFor(absl::Milliseconds(200));
      got[rank] = ExchangeNcclId({.rank = rank,
                                  .world_size = kWorld,
                                  .store = store.get(),
                                  .prefix = "g/",
                                  .deadline = absl::Now() + absl::Seconds(20)},
                                 [&]() -> absl::StatusOr<NcclUniqueIdBytes> {
                                   ++made;
                                   return RandomId(3);
                                 });
    });
  }
  for (std::thread& t : ranks) t.join();
  EXPECT_EQ(made.load(), 1);
  for (int rank = 0; rank < kWorld; ++rank) {
    ASSERT_TRUE(got[rank].ok()) << rank << ": " << got[rank].status();
    EXPECT_EQ(*got[rank], RandomId(3)) << rank;
  }
  absl::StatusOr<std::string> stored = store->Get("g/nccl-unique-id", absl::Now());
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(*stored, EncodeNcclId(RandomId(3), kWorld));
}

TEST(NcclIdTest, GroupsUnderDifferentPrefixesDoNotShareAnId) {
  auto store = MakeInMemoryStore();
  for (int round = 1; round <= 2; ++round) {
    const std::string prefix = "rounds/" + std::to_string(round) + "/";
    ASSERT_TRUE(ExchangeNcclId({.rank = 0, .world_size = 2, .store = store.get(), .prefix = prefix},
                               [&]() -> absl::StatusOr<NcclUniqueIdBytes> {
                                 return RandomId(10 + round);
                               })
                    .ok());
  }
  for (int round = 1; round <= 2; ++round) {
    absl::StatusOr<NcclUniqueIdBytes> got = ExchangeNcclId(
        {.rank = 1,
         .world_size = 2,
         .store = store.get(),
         .prefix = "rounds/" + std::to_string(round) + "/",
         .deadline = absl::Now() + absl::Seconds(5)},
        []() -> absl::StatusOr<NcclUniqueIdBytes> { return absl::InternalError("not rank 0"); });
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, RandomId(10 + round));
  }
}

TEST(NcclIdTest, AMissingRankZeroTimesOutNamingTheKey) {
  auto store = MakeInMemoryStore();
  const absl::Time start = absl::Now();
  absl::StatusOr<NcclUniqueIdBytes> got = ExchangeNcclId(
      {.rank = 2, .world_size = 3, .store = store.get(), .prefix = "jobs/7/",
       .deadline = start + absl::Milliseconds(300)},
      []() -> absl::StatusOr<NcclUniqueIdBytes> { return RandomId(4); });
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(got.status().message(), HasSubstr("jobs/7/nccl-unique-id"));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(290));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST(NcclIdTest, ACancelledWaitReturnsSoon) {
  auto store = MakeInMemoryStore();
  std::atomic<bool> cancel{false};
  std::thread canceller([&] {
    absl::SleepFor(absl::Milliseconds(100));
    cancel = true;
  });
  const absl::Time start = absl::Now();
  absl::StatusOr<NcclUniqueIdBytes> got = ExchangeNcclId(
      {.rank = 1, .world_size = 2, .store = store.get(), .cancel = &cancel},
      []() -> absl::StatusOr<NcclUniqueIdBytes> { return RandomId(5); });
  canceller.join();
  EXPECT_EQ(got.status().code(), absl::StatusCode::kCancelled);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST(NcclIdTest, RankZerosFailureAndBadValuesReachTheCaller) {
  auto store = MakeInMemoryStore();
  absl::StatusOr<NcclUniqueIdBytes> got =
      ExchangeNcclId({.rank = 0, .world_size = 2, .store = store.get()},
                     []() -> absl::StatusOr<NcclUniqueIdBytes> {
                       return absl::UnavailableError("ncclGetUniqueId: no network");
                     });
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(store->Get("nccl-unique-id", absl::Now()).ok()) << "nothing set on failure";
  // A rank started for another world size, or a corrupted value: INVALID_ARGUMENT at once.
  ASSERT_TRUE(store->Set("nccl-unique-id", EncodeNcclId(RandomId(6), 3)).ok());
  got = ExchangeNcclId({.rank = 1, .world_size = 2, .store = store.get(),
                        .deadline = absl::Now() + absl::Seconds(5)},
                       []() -> absl::StatusOr<NcclUniqueIdBytes> { return RandomId(6); });
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(got.status().message(), HasSubstr("group of 3 ranks"));
  // Bad options.
  for (const NcclIdExchange& bad : {NcclIdExchange{.rank = 0, .world_size = 1},
                                    NcclIdExchange{.rank = 2, .world_size = 2, .store = store.get()},
                                    NcclIdExchange{.rank = -1, .world_size = 2, .store = store.get()},
                                    NcclIdExchange{.rank = 0, .world_size = 0, .store = store.get()}}) {
    got = ExchangeNcclId(bad, []() -> absl::StatusOr<NcclUniqueIdBytes> { return RandomId(7); });
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace qtrain::comm
