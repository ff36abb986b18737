#include "common/safetensors.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string SmallFile() {
  SafetensorsWriter writer;
  const std::vector<float> a = {1, 2, 3, 4, 5, 6};
  const std::vector<float> b = {-1.5f};
  EXPECT_TRUE(writer.AddFloat("a", {2, 3}, a).ok());
  EXPECT_TRUE(writer.AddFloat("b", {1}, b).ok());
  writer.SetMetadata("format", "pt");
  return writer.Serialize();
}

// Builds a file from a header text and a data buffer size.
std::string WithHeader(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + std::string(data_bytes, '\0');
}

absl::Status ParseStatus(const std::string& bytes) {
  return SafetensorsFile::FromBuffer(bytes, "test.safetensors").status();
}

TEST(SafetensorsTest, RoundTripsThroughFile) {
  const std::string path = ::testing::TempDir() + "/roundtrip.safetensors";
  SafetensorsWriter writer;
  const std::vector<float> w = {0.5f, -0.25f, 3.0f, 4.0f};
  const std::vector<int64_t> ids = {1, 151643, -100};
  ASSERT_TRUE(writer.AddFloat("model.norm.weight", {2, 2}, w).ok());
  ASSERT_TRUE(writer.Add("ids", DType::kI64, {3}, std::as_bytes(std::span(ids))).ok());
  writer.SetMetadata("format", "pt");
  ASSERT_TRUE(writer.WriteFile(path).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->metadata().at("format"), "pt");
  ASSERT_EQ(file->tensors().size(), 2u);
  auto values = file->ReadAsFloat("model.norm.weight", std::vector<int64_t>{2, 2});
  ASSERT_TRUE(values.ok()) << values.status();
  EXPECT_EQ(*values, w);
  auto info = file->Find("ids");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ((*info)->dtype, DType::kI64);
  std::vector<int64_t> read_ids(3);
  std::memcpy(read_ids.data(), file->Data(**info).data(), 24);
  EXPECT_EQ(read_ids, ids);
  // The data buffer starts 8-byte aligned.
  const std::string bytes = writer.Serialize();
  uint64_t header_size;
  std::memcpy(&header_size, bytes.data(), 8);
  EXPECT_EQ((8 + header_size) % 8, 0u);
}

TEST(SafetensorsTest, ReadsTheReferenceWritersOutput) {
  auto file = SafetensorsFile::Open("common/testdata/reference.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->tensors().size(), 6u);
  EXPECT_THAT(*file->ReadAsFloat("f32"), ElementsAre(0, 0.25, 0.5, 0.75, 1.0, 1.25));
  EXPECT_THAT(*file->ReadAsFloat("f16"), ElementsAre(1.5, -2.25, 65504.0, std::ldexp(1.0f, -14)));
  EXPECT_THAT(*file->ReadAsFloat("scalar"), ElementsAre(3.0f));
  EXPECT_TRUE(file->ReadAsFloat("empty")->empty());
  auto i64 = file->Find("i64");
  ASSERT_TRUE(i64.ok());
  EXPECT_THAT((*i64)->shape, ElementsAre(1, 2));
  int64_t v[2];
  std::memcpy(v, file->Data(**i64).data(), 16);
  EXPECT_EQ(v[0], -1);
  EXPECT_EQ(v[1], int64_t{1} << 40);
  EXPECT_THAT(file->ReadAsFloat("i32").status().message(), HasSubstr("integer dtype"));
  EXPECT_EQ(file->ReadAsFloat("missing").status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(file->ReadAsFloat("f32", std::vector<int64_t>{3, 2}).status().message(),
              HasSubstr("expected [3, 2]"));
}

TEST(SafetensorsTest, EveryTruncationIsRejected) {
  const std::string bytes = SmallFile();
  ASSERT_TRUE(ParseStatus(bytes).ok());
  for (size_t n = 0; n < bytes.size(); ++n) {
    const absl::Status status = ParseStatus(bytes.substr(0, n));
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << "length " << n;
  }
}

TEST(SafetensorsTest, LyingHeadersAreRejectedWithTheReason) {
  struct Case {
    std::string header;
    size_t data_bytes;
    std::string reason;
  };
  const Case cases[] = {
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4, "outside"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}})", 12, "need 8"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
       8, "overlaps"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8, "belong to no tensor"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 8, "trailing"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", 8, "outside"},
      {R"({"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}})", 4, "unsupported dtype"},
      {R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4, "non-negative"},
      {R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})", 4,
       "overflows"},
      {R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4, "non-negative integer"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4, "data_offsets"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":1}})", 4, "unknown field"},
      {R"({"a":{"shape":[1],"data_offsets":[0,4]}})", 4, "dtype"},
      {R"({"a":[1,2]})", 0, "not an object"},
      {R"({"__metadata__":{"k":1}})", 0, "not a string"},
      {R"([1,2,3])", 0, "not a JSON object"},
      {R"({"a":)", 0, "not valid JSON"},
  };
  for (const Case& c : cases) {
    const absl::Status status = ParseStatus(WithHeader(c.header, c.data_bytes));
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.header;
    EXPECT_THAT(status.message(), HasSubstr(c.reason)) << c.header;
    EXPECT_THAT(status.message(), HasSubstr("test.safetensors")) << c.header;
  }
}

TEST(SafetensorsTest, HeaderSizeIsCheckedBeforeAnything) {
  std::string huge(16, '\0');
  const uint64_t n = std::numeric_limits<uint64_t>::max();
  std::memcpy(huge.data(), &n, 8);
  EXPECT_THAT(ParseStatus(huge).message(), HasSubstr("exceeds the limit"));
  const uint64_t past_end = 1000;
  std::memcpy(huge.data(), &past_end, 8);
  EXPECT_THAT(ParseStatus(huge).message(), HasSubstr("past the end"));
  EXPECT_THAT(ParseStatus("abc").message(), HasSubstr("too small"));
}

TEST(SafetensorsTest, OpenErrors) {
  EXPECT_EQ(SafetensorsFile::Open("no/such/file.safetensors").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(SafetensorsFile::Open(".").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(SafetensorsFile::Open(".").status().message(),
              HasSubstr(". is a directory, not a regular file"));
}

// Opening a FIFO for reading waits for a writer; it is refused at once instead, as are devices.
TEST(SafetensorsTest, FifoAndDevicesAreRefusedWithoutBlocking) {
  const std::string fifo = ::testing::TempDir() + "/fifo_" + std::to_string(::getpid());
  ::unlink(fifo.c_str());
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  ::alarm(20);  // a blocked open fails the test instead of hanging it
  const absl::Status fifo_status = SafetensorsFile::Open(fifo).status();
  const absl::Status zero_status = SafetensorsFile::Open("/dev/zero").status();
  ::alarm(0);
  ::unlink(fifo.c_str());
  EXPECT_EQ(fifo_status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(fifo_status.message(), HasSubstr("is a FIFO, not a regular file"));
  EXPECT_THAT(zero_status.message(), HasSubstr("/dev/zero is a character device"));
}

TEST(SafetensorsTest, WriterRejectsBadTensors) {
  SafetensorsWriter writer;
  const std::vector<float> three = {1, 2, 3};
  EXPECT_EQ(writer.AddFloat("x", {2, 2}, three).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(writer.AddFloat("x", {3}, three).ok());
  EXPECT_EQ(writer.AddFloat("x", {3}, three).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(writer.AddFloat("__metadata__", {3}, three).code(), absl::StatusCode::kInvalidArgument);
}

TEST(SafetensorsTest, MovedFileKeepsItsData) {
  auto file = SafetensorsFile::FromBuffer(SmallFile());
  ASSERT_TRUE(file.ok());
  SafetensorsFile moved = std::move(*file);
  EXPECT_THAT(*moved.ReadAsFloat("b"), ElementsAre(-1.5f));
}

TEST(HalfPrecisionTest, Bf16RoundsToNearestEven) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(Bf16ToFloat(0x3f80), 1.0f);
  // 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties go to even (1.0).
  EXPECT_EQ(FloatToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(FloatToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(std::nanf("")))));
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(-INFINITY)), -INFINITY);
}

TEST(HalfPrecisionTest, F16ExactValuesAndRounding) {
  for (float v : {0.0f, 1.0f, -2.5f, 65504.0f, std::ldexp(1.0f, -14), std::ldexp(1.0f, -24)}) {
    EXPECT_EQ(F16ToFloat(FloatToF16(v)), v) << v;
  }
  EXPECT_EQ(FloatToF16(1.0f), 0x3c00);
  EXPECT_EQ(F16ToFloat(FloatToF16(70000.0f)), INFINITY);
  EXPECT_EQ(F16ToFloat(FloatToF16(std::ldexp(1.0f, -26))), 0.0f);  // below half the smallest
  EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(std::nanf("")))));
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even.
  EXPECT_EQ(FloatToF16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
}

}  // namespace
}  // namespace qtrain
