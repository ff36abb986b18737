// Data-parallel training throughput: one rank of a group of W processes of this machine trains a
// model for a few steps through the trainer (the production step: micro-batches, reduce-scatter,
// ZeRO-1 AdamW on the rank's shard, all-gather), the ranks connected by Gloo over the loopback
// and finding each other through a shared directory. After the warm-up steps it prints one JSON
// line: the group's tokens/s and the share of step time spent in collectives.
// bench/data_parallel.py runs it at several group shapes beside PyTorch DDP.
//
//   data_parallel_bench --rank 0 --world-size 2 --store-dir /tmp/rdv --run-dir /tmp/run
//       --preset qwen2-tiny --seq 512 --global-batch 4 --micro-batch 1 --steps 3 --warmup 1
//
// With W > 1, start W processes with the same flags but --rank 0..W-1 (same --run-dir and
// --store-dir; a fresh store directory, or a fresh --prefix, for every group).
#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/job_spec.h"
#include "common/runtime_env.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/comm/communicator.h"
#include "worker/comm/gloo_communicator.h"
#include "worker/comm/rendezvous_store.h"
#include "worker/model/model_source.h"
#include "worker/train/token_source.h"
#include "worker/train/trainer.h"

namespace {

using qtrain::train::StepReport;

struct Flags {
  int rank = 0;
  int world_size = 1;
  std::string store_dir;
  std::string prefix = "data-parallel-bench/";
  std::string run_dir;
  std::string label;  // names the configuration in the output; default: preset or "custom"
  std::string preset = "qwen2-tiny";
  // An explicit model instead of the preset when hidden > 0 (every size then required).
  int64_t vocab = 0;
  int64_t hidden = 0;
  int64_t intermediate = 0;
  int64_t layers = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t seq = 512;
  int64_t global_batch = 4;  // sequences per optimizer step, over all ranks
  int64_t micro_batch = 1;   // sequences per forward/backward
  int64_t steps = 3;         // measured steps
  int64_t warmup = 1;        // steps run first and not measured
  std::string tokens_file;   // int32 little-endian token ids; default: generated
  uint64_t seed = 1;
  double timeout_seconds = 300;
};

absl::Status CheckFlags(const Flags& f) {
  if (f.world_size < 1) return absl::InvalidArgumentError("--world-size must be >= 1");
  if (f.rank < 0 || f.rank >= f.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("--rank ", f.rank, " is not in [0, ", f.world_size, ")"));
  }
  if (f.world_size > 1 && f.store_dir.empty()) {
    return absl::InvalidArgumentError("--store-dir is required when --world-size > 1");
  }
  if (f.run_dir.empty()) return absl::InvalidArgumentError("--run-dir is required");
  if (f.seq <= 0 || f.global_batch <= 0 || f.micro_batch <= 0 || f.steps <= 0 || f.warmup < 0) {
    return absl::InvalidArgumentError(
        "--seq, --global-batch, --micro-batch and --steps must be positive, --warmup >= 0");
  }
  if (f.global_batch % (f.micro_batch * f.world_size) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--global-batch ", f.global_batch,
        " is not a multiple of --micro-batch x --world-size = ", f.micro_batch * f.world_size));
  }
  if (!(f.timeout_seconds > 0 && f.timeout_seconds <= 86400)) {
    return absl::InvalidArgumentError("--timeout-seconds must be in (0, 86400]");
  }
  if (f.hidden > 0 &&
      (f.vocab <= 0 || f.intermediate <= 0 || f.layers <= 0 || f.heads <= 0 || f.kv_heads <= 0)) {
    return absl::InvalidArgumentError(
        "an explicit model (--hidden) needs --vocab, --intermediate, --layers, --heads and "
        "--kv-heads too");
  }
  return absl::OkStatus();
}

std::string ModelYaml(const Flags& f) {
  if (f.hidden <= 0) return absl::StrCat("{preset: ", f.preset, "}");
  return absl::StrCat("{config: {vocab_size: ", f.vocab, ", hidden_size: ", f.hidden,
                      ", intermediate_size: ", f.intermediate, ", num_hidden_layers: ", f.layers,
                      ", num_attention_heads: ", f.heads, ", num_key_value_heads: ", f.kv_heads,
                      ", max_position_embeddings: ", std::max<int64_t>(f.seq, 32768), "}}");
}

// One stage of exactly warmup + steps optimizer steps; no evaluation, one checkpoint (the
// stage's end, after the measured steps).
std::string SpecYaml(const Flags& f) {
  const int64_t global_tokens = f.global_batch * f.seq;
  return absl::StrCat("name: data-parallel-bench\nseed: ", f.seed, "\nmodel: ", ModelYaml(f),
                      "\ntokenizer: unused.json\n"
                      "data: {manifest: unused.json, validation_fraction: 0}\n"
                      "curriculum:\n  - {name: bench, seq_len: ",
                      f.seq, ", tokens: ", global_tokens * (f.warmup + f.steps),
                      ", micro_batch: ", f.micro_batch, "}\nbatch: {global_tokens: ", global_tokens,
                      "}\ncheckpoint: {every_steps: 0, keep_last: 1}\n"
                      "eval: {every_steps: 0, batches: 0}\n"
                      "optimizer: {lr: 1e-3, min_lr: 1e-4, warmup_steps: 1}\n"
                      "world: {min_workers: ",
                      f.world_size, ", max_workers: ", f.world_size, "}\n");
}

// Enough windows of seq + 1 tokens for every step, without wrapping into a second epoch.
int64_t TokensNeeded(const Flags& f) { return (f.warmup + f.steps) * f.global_batch * f.seq + 1; }

// Uniform ids from a seeded SplitMix64 stream (what bench/data_parallel.py writes too).
std::vector<int32_t> SyntheticTokens(int64_t count, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> tokens(static_cast<size_t>(count));
  uint64_t state = seed;
  for (int32_t& t : tokens) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    t = static_cast<int32_t>(z % static_cast<uint64_t>(vocab));
  }
  return tokens;
}

absl::StatusOr<std::vector<int32_t>> ReadTokens(const std::string& path, int64_t vocab) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError(absl::StrCat("--tokens-file ", path, ": cannot open"));
  const std::streamoff bytes = in.tellg();
  if (bytes % 4 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--tokens-file ", path, ": ", bytes,
                                                   " bytes is not a whole number of int32 ids"));
  }
  std::vector<int32_t> tokens(static_cast<size_t>(bytes / 4));
  in.seekg(0);
  if (!in.read(reinterpret_cast<char*>(tokens.data()), bytes)) {
    return absl::DataLossError(absl::StrCat("--tokens-file ", path, ": short read"));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("--tokens-file ", path, ": token ", i, " is ",
                                                     tokens[i], ", outside [0, ", vocab,
                                                     ") (the model's vocabulary)"));
    }
  }
  return tokens;
}

// CPU time of the process (all its threads), seconds: beside the wall time it shows whether a
// slow step computed more or waited for a core (a loaded machine).
double ProcessCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

absl::StatusOr<std::unique_ptr<qtrain::comm::Communicator>> ConnectGroup(const Flags& f) {
  if (f.world_size == 1) return nullptr;  // the trainer's own group of one
  QTRAIN_ASSIGN_OR_RETURN(std::shared_ptr<qtrain::comm::RendezvousStore> store,
                          qtrain::comm::MakeDirectoryStore(f.store_dir));
  const absl::Duration timeout = absl::Seconds(f.timeout_seconds);
  return qtrain::comm::GlooCommunicator::Connect({.rank = f.rank,
                                                  .world_size = f.world_size,
                                                  .store = std::move(store),
                                                  .prefix = f.prefix,
                                                  .listen_host = "127.0.0.1",
                                                  .connect_timeout = timeout,
                                                  .op_timeout = timeout});
}

// cpu_at_step[i]: the process's CPU seconds when step i was reported; cpu_at_start before
// the first step.
nlohmann::json Summarize(const Flags& f, const std::vector<StepReport>& reports,
                         const std::vector<double>& cpu_at_step, double cpu_at_start,
                         const qtrain::comm::Communicator* comm) {
  double step = 0, comm_seconds = 0, data = 0;
  nlohmann::json step_seconds = nlohmann::json::array();
  for (size_t i = static_cast<size_t>(f.warmup); i < reports.size(); ++i) {
    step += reports[i].step_seconds;
    comm_seconds += reports[i].comm_seconds;
    data += reports[i].data_seconds;
    step_seconds.push_back(reports[i].step_seconds);
  }
  const double measured = static_cast<double>(reports.size()) - static_cast<double>(f.warmup);
  const double per_step = step / measured;
  const double cpu_before = f.warmup > 0 ? cpu_at_step[f.warmup - 1] : cpu_at_start;
  nlohmann::json out = {
      {"impl", "qtrain"},
      {"config", f.label.empty() ? (f.hidden > 0 ? "custom" : f.preset) : f.label},
      {"rank", f.rank},
      {"world_size", f.world_size},
      {"seq", f.seq},
      {"global_batch", f.global_batch},
      {"micro_batch", f.micro_batch},
      {"steps", static_cast<int64_t>(measured)},
      {"seconds_per_step", per_step},
      {"tokens_per_second", static_cast<double>(f.global_batch * f.seq) / per_step},
      {"comm_seconds_per_step", comm_seconds / measured},
      {"cpu_seconds_per_step", (cpu_at_step.back() - cpu_before) / measured},
      {"comm_share", step > 0 ? comm_seconds / step : 0.0},
      {"data_share", step > 0 ? data / step : 0.0},
      {"step_seconds", step_seconds},
      {"first_loss", reports.front().loss},
      {"last_loss", reports.back().loss}};
  if (comm != nullptr) {
    const qtrain::comm::CommStats stats = comm->stats();
    out["bytes_sent"] = stats.bytes_sent;  // the whole run: steps and the final checkpoint
    out["bytes_received"] = stats.bytes_received;
  }
  return out;
}

absl::Status Run(const Flags& f) {
  QTRAIN_RETURN_IF_ERROR(CheckFlags(f));
  QTRAIN_ASSIGN_OR_RETURN(qtrain::v1::JobSpec spec,
                          qtrain::ParseJobSpec(SpecYaml(f), "data_parallel_bench spec",
                                               qtrain::model::ModelAwareJobSpecOptions()));
  QTRAIN_ASSIGN_OR_RETURN(qtrain::model::ModelConfig config,
                          qtrain::model::ResolveModelConfig(spec.model()));
  std::vector<int32_t> tokens;
  if (f.tokens_file.empty()) {
    tokens = SyntheticTokens(TokensNeeded(f), config.vocab_size, f.seed);
  } else {
    QTRAIN_ASSIGN_OR_RETURN(tokens, ReadTokens(f.tokens_file, config.vocab_size));
    if (static_cast<int64_t>(tokens.size()) < TokensNeeded(f)) {
      return absl::InvalidArgumentError(absl::StrCat("--tokens-file ", f.tokens_file, " holds ",
                                                     tokens.size(), " tokens; the run needs ",
                                                     TokensNeeded(f)));
    }
  }
  const qtrain::train::InMemoryTokenSource data(std::move(tokens), "data-parallel-bench");
  QTRAIN_ASSIGN_OR_RETURN(std::unique_ptr<qtrain::comm::Communicator> comm, ConnectGroup(f));

  std::vector<StepReport> reports;
  std::vector<double> cpu_at_step;
  qtrain::train::TrainerOptions options;
  options.run_dir = f.run_dir;
  options.rank = f.rank;
  options.world_size = f.world_size;
  options.communicator = comm.get();
  options.resume_from_step = -1;  // always from the initialization
  options.on_step = [&reports, &cpu_at_step](const StepReport& r) {
    reports.push_back(r);
    cpu_at_step.push_back(ProcessCpuSeconds());
  };
  QTRAIN_ASSIGN_OR_RETURN(
      std::unique_ptr<qtrain::train::Trainer> trainer,
      qtrain::train::Trainer::Create(spec, config, std::nullopt, data, std::move(options)));
  const double cpu_at_start = ProcessCpuSeconds();
  QTRAIN_ASSIGN_OR_RETURN(qtrain::train::TrainerSummary summary, trainer->Run());
  if (static_cast<int64_t>(reports.size()) != f.warmup + f.steps) {
    return absl::InternalError(absl::StrCat("trained ", reports.size(), " steps of ",
                                            f.warmup + f.steps, " (", summary.steps, " done)"));
  }
  std::printf("%s\n", Summarize(f, reports, cpu_at_step, cpu_at_start, comm.get()).dump().c_str());
  std::fflush(stdout);
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  qtrain::ConfigureRuntimeEnvironment(argv);
  CLI::App app{"Data-parallel training throughput of qtrain (one rank of a group)"};
  Flags f;
  app.add_option("--rank", f.rank)->capture_default_str();
  app.add_option("--world-size", f.world_size)->capture_default_str();
  app.add_option("--store-dir", f.store_dir, "Rendezvous directory shared by the group");
  app.add_option("--prefix", f.prefix, "Rendezvous key prefix")->capture_default_str();
  app.add_option("--run-dir", f.run_dir, "Training run directory (shared by the group)");
  app.add_option("--label", f.label, "Configuration name in the output");
  app.add_option("--preset", f.preset)->capture_default_str();
  app.add_option("--vocab", f.vocab);
  app.add_option("--hidden", f.hidden, "Explicit model: hidden size (then all sizes)");
  app.add_option("--intermediate", f.intermediate);
  app.add_option("--layers", f.layers);
  app.add_option("--heads", f.heads);
  app.add_option("--kv-heads", f.kv_heads);
  app.add_option("--seq", f.seq)->capture_default_str();
  app.add_option("--global-batch", f.global_batch, "Sequences per step over all ranks")
      ->capture_default_str();
  app.add_option("--micro-batch", f.micro_batch)->capture_default_str();
  app.add_option("--steps", f.steps, "Measured steps")->capture_default_str();
  app.add_option("--warmup", f.warmup, "Unmeasured steps first")->capture_default_str();
  app.add_option("--tokens-file", f.tokens_file, "int32 little-endian token ids");
  app.add_option("--seed", f.seed)->capture_default_str();
  app.add_option("--timeout-seconds", f.timeout_seconds, "Rendezvous and collective timeout")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  const absl::Status status = Run(f);
  if (!status.ok()) {
    std::fprintf(stderr, "data_parallel_bench (rank %d): %s\n", f.rank, status.ToString().c_str());
    return 1;
  }
  return 0;
}
