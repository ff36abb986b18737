#include "cli/job_client.h"

#include <set>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain::cli {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

TEST(JobResourceNameTest, IdOrResourceName) {
  EXPECT_EQ(JobResourceName("demo-1").value(), "jobs/demo-1");
  EXPECT_EQ(JobResourceName("jobs/demo-1").value(), "jobs/demo-1");
  for (const char* bad : {"", "jobs/", "jobs/a/b", "a/b", "has space", "workers/w-1"}) {
    absl::StatusOr<std::string> name = JobResourceName(bad);
    ASSERT_FALSE(name.ok()) << bad;
    EXPECT_THAT(name.status().message(), HasSubstr("jobs/ID")) << bad;
  }
}

TEST(NewRequestIdTest, RandomVersion4Uuids) {
  std::set<std::string> ids;
  for (int i = 0; i < 100; ++i) {
    const std::string id = NewRequestId();
    EXPECT_THAT(id, MatchesRegex("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-"
                                 "[0-9a-f]{12}"));
    ids.insert(id);
  }
  EXPECT_EQ(ids.size(), 100u);
}

TEST(JobClientTest, UnreachableCoordinatorIsOneLineWithinTheDeadline) {
  ChannelOptions options;
  options.address = "127.0.0.1:1";  // nothing listens on port 1
  absl::StatusOr<JobClient> client = JobClient::Connect(options, absl::Seconds(5));
  ASSERT_TRUE(client.ok()) << client.status();
  const absl::Time start = absl::Now();
  absl::StatusOr<v1::Job> job = client->GetJob("jobs/x-1");
  EXPECT_LT(absl::Now() - start, absl::Seconds(6));
  ASSERT_FALSE(job.ok());
  EXPECT_TRUE(absl::IsUnavailable(job.status()) || absl::IsDeadlineExceeded(job.status()))
      << job.status();
  EXPECT_THAT(job.status().message(), HasSubstr("127.0.0.1:1"));
  EXPECT_EQ(job.status().message().find('\n'), absl::string_view::npos);
}

TEST(JobClientTest, BadAddressIsRefused) {
  ChannelOptions options;
  options.address = "no-port";
  EXPECT_FALSE(JobClient::Connect(options, absl::Seconds(1)).ok());
}

}  // namespace
}  // namespace qtrain::cli
