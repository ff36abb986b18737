// Without a GPU (CI): bad options and a missing device fail cleanly and at once. With one
// (tests/gpu/run.sh's machine has a single GPU, and NCCL refuses two ranks on one device), a
// group of one runs every op on device memory, and a bad call breaks it as communicator.h says.
#include "worker/comm/nccl_communicator.h"

#include <cuda_runtime_api.h>

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain::comm {
namespace {

using ::testing::HasSubstr;

bool HaveGpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

TEST(NcclCommunicatorTest, BadOptionsAreRefused) {
  auto store = MakeInMemoryStore();
  for (const NcclOptions& bad :
       {NcclOptions{.rank = 0, .world_size = 1},
        NcclOptions{.rank = 1, .world_size = 1, .store = store},
        NcclOptions{.rank = 0, .world_size = 0, .store = store},
        NcclOptions{.rank = 0, .world_size = 1, .store = store, .device = -1},
        NcclOptions{.rank = 0, .world_size = 1, .store = store, .chunk_elements = 0}}) {
    absl::StatusOr<std::unique_ptr<Communicator>> comm = NcclCommunicator::Connect(bad);
    EXPECT_EQ(comm.status().code(), absl::StatusCode::kInvalidArgument) << comm.status();
  }
}

TEST(NcclCommunicatorTest, NoDeviceIsUnavailableNotACrash) {
  if (HaveGpu()) GTEST_SKIP() << "this machine has a GPU";
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<Communicator>> comm = NcclCommunicator::Connect(
      {.rank = 0, .world_size = 1, .store = MakeInMemoryStore(), .device = 0});
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kUnavailable) << comm.status();
  EXPECT_THAT(comm.status().message(), HasSubstr("CUDA device 0"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));
}

// Device memory holding `values`.
template <typename T>
class DeviceVector {
 public:
  explicit DeviceVector(const std::vector<T>& values) : size_(values.size()) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&data_), std::max<size_t>(1, size_) * sizeof(T)),
              cudaSuccess);
    EXPECT_EQ(cudaMemcpy(data_, values.data(), size_ * sizeof(T), cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  ~DeviceVector() { cudaFree(data_); }
  std::span<T> span() { return {data_, size_}; }
  std::vector<T> Read() const {
    std::vector<T> out(size_);
    EXPECT_EQ(cudaMemcpy(out.data(), data_, size_ * sizeof(T), cudaMemcpyDeviceToHost),
              cudaSuccess);
    return out;
  }

 private:
  T* data_ = nullptr;
  size_t size_;
};

TEST(NcclCommunicatorTest, AGroupOfOneRunsEveryOpOnDeviceMemory) {
  if (!HaveGpu()) GTEST_SKIP() << "no GPU here";
  absl::StatusOr<std::unique_ptr<Communicator>> made = NcclCommunicator::Connect(
      {.rank = 0, .world_size = 1, .store = MakeInMemoryStore(), .chunk_elements = 3});
  ASSERT_TRUE(made.ok()) << made.status();
  Communicator& comm = **made;
  EXPECT_EQ(comm.backend(), "nccl");
  EXPECT_TRUE(comm.Barrier().ok());

  const std::vector<float> values = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -1e-3f, 42.0f};
  DeviceVector<float> data(values);
  ASSERT_TRUE(comm.AllReduceSum(data.span()).ok());
  EXPECT_EQ(data.Read(), values);
  DeviceVector<double> doubles(std::vector<double>{1.0, 2.0});
  ASSERT_TRUE(comm.AllReduceSum(doubles.span()).ok());
  EXPECT_EQ(doubles.Read(), (std::vector<double>{1.0, 2.0}));

  absl::StatusOr<ShardLayout> layout = ShardLayout::Create(7, 1, 2);
  ASSERT_TRUE(layout.ok());
  DeviceVector<float> shard(std::vector<float>(7, -1.0f));
  ASSERT_TRUE(comm.ReduceScatterSum(data.span(), shard.span(), *layout).ok());
  EXPECT_EQ(shard.Read(), values);
  DeviceVector<float> full(std::vector<float>(7, 0.0f));
  ASSERT_TRUE(comm.AllGather(shard.span(), full.span(), *layout).ok());
  EXPECT_EQ(full.Read(), values);

  DeviceVector<std::byte> bytes(std::vector<std::byte>{std::byte{1}, std::byte{2}});
  EXPECT_TRUE(comm.Broadcast(bytes.span(), 0).ok());
  DeviceVector<double> mine(std::vector<double>{4.0, 5.0});
  DeviceVector<double> all(std::vector<double>{0.0, 0.0});
  const std::vector<int64_t> counts = {2};
  ASSERT_TRUE(comm.AllGatherV(mine.span(), all.span(), counts).ok());
  EXPECT_EQ(all.Read(), (std::vector<double>{4.0, 5.0}));
  EXPECT_GT(comm.stats().time_in_ops, absl::ZeroDuration());

  // A bad call is INVALID_ARGUMENT and breaks the group; Abort is idempotent.
  DeviceVector<float> wrong(std::vector<float>(3, 0.0f));
  absl::Status bad = comm.ReduceScatterSum(data.span(), wrong.span(), *layout);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument) << bad;
  absl::Status after = comm.Barrier();
  EXPECT_EQ(after.code(), absl::StatusCode::kFailedPrecondition) << after;
  EXPECT_THAT(after.message(), HasSubstr("broken by an earlier error"));
  comm.Abort();
  comm.Abort();
  EXPECT_EQ(comm.Barrier().code(), absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace qtrain::comm
