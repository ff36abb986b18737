#include "worker/comm/rendezvous_store.h"

#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain::comm {
namespace {

using ::testing::HasSubstr;

std::string FreshDir(const std::string& name) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/", name, "-", ::getpid());
  std::filesystem::remove_all(dir);
  return dir;
}

void ExpectBlockingGet(RendezvousStore& reader, RendezvousStore& writer) {
  std::thread setter([&] {
    absl::SleepFor(absl::Milliseconds(100));
    EXPECT_TRUE(writer.Set("jobs/1/rounds/2/0", "addr zero").ok());
  });
  const absl::Time start = absl::Now();
  absl::StatusOr<std::string> got = reader.Get("jobs/1/rounds/2/0", start + absl::Seconds(10));
  setter.join();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "addr zero");
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(90));
  // Replaced values are read back, binary ones too.
  const std::string binary("a\0b\xff", 4);
  ASSERT_TRUE(writer.Set("jobs/1/rounds/2/0", binary).ok());
  got = reader.Get("jobs/1/rounds/2/0", absl::Now());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, binary);
  // A key that is never set: DEADLINE_EXCEEDED naming it, on time.
  const absl::Time before = absl::Now();
  got = reader.Get("jobs/1/rounds/2/never", before + absl::Milliseconds(200));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(got.status().message(), HasSubstr("jobs/1/rounds/2/never"));
  EXPECT_GE(absl::Now() - before, absl::Milliseconds(190));
  EXPECT_LT(absl::Now() - before, absl::Seconds(2));
}

TEST(InMemoryStoreTest, GetWaitsForSetAndTimesOut) {
  auto store = MakeInMemoryStore();
  ExpectBlockingGet(*store, *store);
}

TEST(DirectoryStoreTest, GetWaitsForSetAndTimesOut) {
  const std::string dir = FreshDir("dir-store") + "/nested/deeper";
  auto a = MakeDirectoryStore(dir);
  auto b = MakeDirectoryStore(dir);
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  ExpectBlockingGet(**a, **b);
  // Keys are file names that stay inside the directory, whatever their bytes.
  ASSERT_TRUE((*a)->Set("../escape", "x").ok());
  ASSERT_TRUE((*a)->Set(".hidden/..", "y").ok());
  EXPECT_EQ(*(*b)->Get("../escape", absl::Now()), "x");
  EXPECT_EQ(*(*b)->Get(".hidden/..", absl::Now()), "y");
  EXPECT_FALSE(std::filesystem::exists(dir + "/../escape"));
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    EXPECT_TRUE(entry.is_regular_file()) << entry.path();
    EXPECT_EQ(entry.path().filename().string().rfind("k-", 0), 0u) << entry.path();
  }
  EXPECT_EQ((*a)->Set("", "v").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*a)->Set(std::string(300, 'k'), "v").code(), absl::StatusCode::kInvalidArgument);
}

TEST(DirectoryStoreTest, AcrossProcesses) {
  const std::string dir = FreshDir("dir-store-fork");
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::alarm(20);
    auto store = MakeDirectoryStore(dir);
    if (!store.ok()) ::_exit(2);
    auto ping = (*store)->Get("ping", absl::Now() + absl::Seconds(10));
    if (!ping.ok() || *ping != "from parent") ::_exit(3);
    ::_exit((*store)->Set("pong", "from child").ok() ? 0 : 4);
  }
  auto store = MakeDirectoryStore(dir);
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE((*store)->Set("ping", "from parent").ok());
  auto pong = (*store)->Get("pong", absl::Now() + absl::Seconds(10));
  int wstatus = 0;
  ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
  ASSERT_TRUE(pong.ok()) << pong.status();
  EXPECT_EQ(*pong, "from child");
  EXPECT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0);
}

TEST(DirectoryStoreTest, NotADirectory) {
  const std::string dir = FreshDir("dir-store-file");
  std::filesystem::create_directories(dir);
  ASSERT_TRUE(MakeDirectoryStore(dir).ok());
  auto file_store = MakeDirectoryStore(dir);
  ASSERT_TRUE((*file_store)->Set("a", "b").ok());
  absl::StatusOr<std::shared_ptr<RendezvousStore>> bad = MakeDirectoryStore(dir + "/k-a");
  EXPECT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("k-a"));
  EXPECT_EQ(MakeDirectoryStore("").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace qtrain::comm
