#include "cli/watch.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain::cli {
namespace {

using ::testing::HasSubstr;

const std::vector<std::string> kStages = {"short", "long"};

v1::JobEvent At(int64_t seconds) {
  v1::JobEvent event;
  event.set_job("jobs/demo-1");
  event.set_sequence(1);
  event.mutable_time()->set_seconds(seconds);
  return event;
}

TEST(FormatEventLineTest, StateChange) {
  v1::JobEvent e = At(1796124015);  // 2026-12-01T11:20:15Z
  e.mutable_state_changed()->set_from(v1::JOB_STATE_RUNNING);
  e.mutable_state_changed()->set_to(v1::JOB_STATE_FAILED);
  e.mutable_state_changed()->set_message("rank 0: out of memory");
  EXPECT_EQ(FormatEventLine(e, kStages),
            "2026-12-01T11:20:15Z state RUNNING -> FAILED: rank 0: out of memory");
}

TEST(FormatEventLineTest, StageStartedNamesTheStage) {
  v1::JobEvent e = At(0);
  e.clear_time();
  e.mutable_stage_started()->set_stage(1);
  e.mutable_stage_started()->set_step(256);
  e.mutable_stage_started()->mutable_spec()->set_seq_len(512);
  EXPECT_EQ(FormatEventLine(e, kStages), "- stage 1 'long' started at step 256 (seq_len 512)");
  // A stage the spec does not name is shown by index.
  e.mutable_stage_started()->set_stage(7);
  EXPECT_THAT(FormatEventLine(e, kStages), HasSubstr("stage 7 started"));
}

TEST(FormatEventLineTest, CheckpointRestartEval) {
  v1::JobEvent c = At(10);
  v1::Checkpoint* ckpt = c.mutable_checkpoint();
  ckpt->set_name("jobs/demo-1/checkpoints/step-000000000100");
  ckpt->set_state(v1::CHECKPOINT_STATE_COMMITTED);
  ckpt->set_step(100);
  ckpt->set_stage(0);
  ckpt->set_tokens_seen(409600);
  EXPECT_THAT(FormatEventLine(c, kStages),
              HasSubstr("checkpoint step-000000000100 committed: step 100, stage 0 'short', "
                        "409600 tokens"));

  v1::JobEvent r = At(10);
  r.mutable_restarted()->set_restarts(2);
  r.mutable_restarted()->set_round(5);
  r.mutable_restarted()->set_reason("workers/w-1 lost");
  r.mutable_restarted()->set_resume_checkpoint("jobs/demo-1/checkpoints/step-000000000100");
  EXPECT_THAT(FormatEventLine(r, kStages),
              HasSubstr("restart 2 (round 5): workers/w-1 lost; resuming from step-000000000100"));
  r.mutable_restarted()->clear_resume_checkpoint();
  EXPECT_THAT(FormatEventLine(r, kStages), HasSubstr("starting from scratch"));

  v1::JobEvent ev = At(10);
  ev.mutable_eval_metrics()->set_stage(1);
  ev.mutable_eval_metrics()->set_step(80);
  ev.mutable_eval_metrics()->set_loss(3.14159);
  ev.mutable_eval_metrics()->set_tokens(4096);
  EXPECT_THAT(FormatEventLine(ev, kStages),
              HasSubstr("eval at step 80 (stage 1 'long'): loss 3.1416, 4096 tokens seen"));
}

TEST(FormatEventLineTest, EvalTaskResults) {
  v1::JobEvent e = At(10);
  v1::EvalTaskResult* r = e.mutable_eval_task();
  r->set_stage(0);
  r->set_step(12);
  r->set_name("hellaswag");
  r->set_task("multiple-choice");
  (*r->mutable_metrics())["count"] = 40;
  (*r->mutable_metrics())["acc_norm"] = 0.75;
  (*r->mutable_metrics())["acc"] = 0.5;
  EXPECT_THAT(FormatEventLine(e, kStages),
              HasSubstr("eval hellaswag (multiple-choice) at step 12, stage 0 'short': acc 0.5, "
                        "acc_norm 0.75, count 40"));
  v1::JobEvent needle = At(11);
  v1::EvalTaskResult* n = needle.mutable_eval_task();
  n->set_stage(1);
  n->set_step(80);
  n->set_name("needle");
  n->set_task("needle");
  n->set_final(true);
  (*n->mutable_metrics())["accuracy"] = 0.625;
  (*n->mutable_metrics())["accuracy/L1024/D0"] = 1;
  (*n->mutable_metrics())["accuracy/L1024/D1"] = 0.25;
  EXPECT_THAT(FormatEventLine(needle, kStages),
              HasSubstr("eval needle (needle) at step 80 (final), stage 1 'long': accuracy "
                        "0.625, 2 cells"));
}

TEST(FormatEventLineTest, StepMetricsAndUnknown) {
  v1::JobEvent e = At(10);
  v1::StepMetrics* m = e.mutable_step_metrics();
  m->set_step(12);
  m->set_total_steps(400);
  m->set_loss(2.5);
  m->set_tokens_per_second(1520.4);
  EXPECT_THAT(FormatEventLine(e, kStages), HasSubstr("step 12/400 stage 0 'short' loss 2.5000"));
  EXPECT_THAT(FormatEventLine(At(10), kStages), HasSubstr("unknown kind"));
}

TEST(FormatProgressTest, StageStepLossThroughputEta) {
  v1::StepMetrics m;
  m.set_step(120);
  m.set_total_steps(400);
  m.set_loss(2.34561);
  m.set_tokens_per_second(1520.4);
  m.set_eta_seconds(80);
  EXPECT_EQ(FormatProgress(m, "short"), "[short] step 120/400 loss 2.3456 1520 tok/s ETA 1m20s");
  m.set_eta_seconds(0);
  EXPECT_EQ(FormatProgress(m, "short"), "[short] step 120/400 loss 2.3456 1520 tok/s ETA -");
}

struct Captured {
  std::string out, err;
  ProgressDisplay Display(bool terminal) {
    return ProgressDisplay(
        terminal, [this](absl::string_view s) { out.append(s.data(), s.size()); },
        [this](absl::string_view s) { err.append(s.data(), s.size()); });
  }
};

TEST(ProgressDisplayTest, PipeGetsAtMostOneLineASecond) {
  Captured c;
  ProgressDisplay d = c.Display(/*terminal=*/false);
  const absl::Time t0 = absl::FromUnixSeconds(100);
  d.Update("p1", t0);
  d.Update("p2", t0 + absl::Milliseconds(300));
  d.Update("p3", t0 + absl::Milliseconds(900));
  EXPECT_EQ(c.err, "p1\n");
  d.Update("p4", t0 + absl::Milliseconds(1000));
  EXPECT_EQ(c.err, "p1\np4\n");
  d.Update("p5", t0 + absl::Milliseconds(1100));
  d.PrintEventLine("event");
  EXPECT_EQ(c.out, "event\n");
  d.Finish();  // the last update is not lost
  EXPECT_EQ(c.err, "p1\np4\np5\n");
  EXPECT_EQ(c.err.find('\r'), std::string::npos);
}

TEST(ProgressDisplayTest, TerminalRedrawsInPlaceAndClearsForEvents) {
  Captured c;
  ProgressDisplay d = c.Display(/*terminal=*/true);
  const absl::Time t0 = absl::FromUnixSeconds(100);
  d.Update("p1", t0);
  EXPECT_EQ(c.err, "\rp1\x1b[K");
  d.Update("p2", t0 + absl::Milliseconds(50));  // too soon: not drawn
  EXPECT_EQ(c.err, "\rp1\x1b[K");
  d.Update("p3", t0 + absl::Milliseconds(200));
  EXPECT_EQ(c.err, "\rp1\x1b[K\rp3\x1b[K");
  c.err.clear();
  d.PrintEventLine("event");
  EXPECT_EQ(c.out, "event\n");
  EXPECT_EQ(c.err, "\r\x1b[K\rp3\x1b[K");  // cleared, then drawn again below the event
  c.err.clear();
  d.Finish();
  EXPECT_EQ(c.err, "\n");
}

TEST(ProgressDisplayTest, NoProgressNoOutput) {
  Captured c;
  ProgressDisplay d = c.Display(/*terminal=*/true);
  d.PrintEventLine("a");
  d.Finish();
  EXPECT_EQ(c.out, "a\n");
  EXPECT_EQ(c.err, "");
}

TEST(WatchCancellerTest, RemembersTheCancel) {
  WatchCanceller canceller;
  EXPECT_FALSE(canceller.cancelled());
  grpc::ClientContext context;
  canceller.SetContext(&context);
  canceller.Cancel();
  EXPECT_TRUE(canceller.cancelled());
  canceller.SetContext(nullptr);
}

}  // namespace
}  // namespace qtrain::cli
