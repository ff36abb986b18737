#include "worker/comm/shard_layout.h"

#include "gtest/gtest.h"

namespace qtrain::comm {
namespace {

TEST(ShardLayoutTest, ShardsAreContiguousBlockAlignedAndCoverTheBuffer) {
  for (int64_t total : {0, 1, 5, 16, 17, 100, 1000}) {
    for (int w : {1, 2, 3, 4, 7}) {
      auto layout = ShardLayout::Create(total, w, /*block_elements=*/4);
      ASSERT_TRUE(layout.ok());
      int64_t next = 0;
      for (int r = 0; r < w; ++r) {
        EXPECT_EQ(layout->ShardBegin(r), next);
        EXPECT_TRUE(layout->ShardBegin(r) % 4 == 0 || layout->ShardBegin(r) == total);
        next = layout->ShardEnd(r);
        EXPECT_GE(layout->ShardSize(r), 0);
      }
      EXPECT_EQ(next, total) << total << " over " << w;
    }
  }
}

TEST(ShardLayoutTest, RefusesBadSizes) {
  EXPECT_FALSE(ShardLayout::Create(-1, 1).ok());
  EXPECT_FALSE(ShardLayout::Create(10, 0).ok());
  EXPECT_FALSE(ShardLayout::Create(10, 2, 0).ok());
}

}  // namespace
}  // namespace qtrain::comm
