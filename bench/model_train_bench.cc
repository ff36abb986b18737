// Training-step throughput of the CPU model: forward + backward + AdamW over one batch of random
// tokens, repeated. Prints one JSON line (tokens/s, seconds per step, loss) so that
// bench/model_peer.py can put it beside PyTorch; run it under /usr/bin/time -v for peak RSS.
//
//   model_train_bench --preset qwen2-tiny --batch 4 --seq 512 --steps 5 [--recompute]
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "common/runtime_env.h"
#include "common/status_macros.h"
#include "kernels/ops.h"
#include "worker/model/config.h"
#include "worker/model/init.h"
#include "worker/model/model.h"

namespace {

struct Flags {
  std::string preset = "qwen2-tiny";
  int64_t batch = 4;
  int64_t seq = 512;
  int64_t steps = 5;
  int64_t warmup = 1;
  bool recompute = false;
  bool no_optimizer = false;
  int64_t lm_head_chunk = qtrain::model::ModelOptions{}.lm_head_chunk_tokens;
};

absl::Status Run(const Flags& flags) {
  using namespace qtrain::model;
  QTRAIN_ASSIGN_OR_RETURN(ModelConfig config, PresetConfig(flags.preset));
  QTRAIN_ASSIGN_OR_RETURN(Model model,
                          Model::Create(config, {.recompute_activations = flags.recompute,
                                                 .lm_head_chunk_tokens = flags.lm_head_chunk}));
  InitializeParameters(config, model.layout(), 1, model.params());
  const int64_t n = model.layout().total_size();
  std::vector<float> adam_m(n, 0.0f), adam_v(n, 0.0f);

  const int64_t rows = flags.batch * flags.seq;
  std::vector<int32_t> ids(rows), targets(rows);
  NormalStream stream(7);
  for (int64_t i = 0; i < rows; ++i) {
    ids[i] = static_cast<int32_t>(static_cast<uint64_t>(std::abs(stream.Next()) * 1e6) %
                                  config.vocab_size);
  }
  for (int64_t i = 0; i < rows; ++i) {
    targets[i] = (i + 1) % flags.seq == 0 ? kIgnoreIndex : ids[i + 1];
  }
  const Batch batch{
      .batch_size = flags.batch, .seq_len = flags.seq, .ids = ids, .targets = targets};
  qtrain::kernels::Backend& backend = model.backend();
  double seconds = 0, loss = 0;
  for (int64_t step = 0; step < flags.warmup + flags.steps; ++step) {
    const auto start = std::chrono::steady_clock::now();
    QTRAIN_RETURN_IF_ERROR(model.ZeroGrads());
    QTRAIN_ASSIGN_OR_RETURN(ForwardResult result, model.ForwardBackward(batch));
    if (!flags.no_optimizer) {
      qtrain::kernels::AdamWParams adam;
      adam.step = step + 1;
      QTRAIN_RETURN_IF_OP_ERROR(backend.AdamWStep(model.params().data(), model.grads().data(),
                                                  adam_m.data(), adam_v.data(), n, adam));
    }
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (step >= flags.warmup) seconds += elapsed;
    loss = result.loss;
  }
  const double per_step = seconds / static_cast<double>(flags.steps);
  std::printf(
      "{\"impl\": \"qtrain\", \"preset\": \"%s\", \"batch\": %lld, \"seq\": %lld, "
      "\"recompute\": %s, \"seconds_per_step\": %.6f, \"tokens_per_second\": %.1f, "
      "\"loss\": %.6f}\n",
      flags.preset.c_str(), static_cast<long long>(flags.batch), static_cast<long long>(flags.seq),
      flags.recompute ? "true" : "false", per_step, static_cast<double>(rows) / per_step, loss);
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  qtrain::ConfigureRuntimeEnvironment(argv);
  CLI::App app{"Training-step throughput of qtrain's CPU model"};
  Flags flags;
  app.add_option("--preset", flags.preset)->capture_default_str();
  app.add_option("--batch", flags.batch)->capture_default_str();
  app.add_option("--seq", flags.seq)->capture_default_str();
  app.add_option("--steps", flags.steps)->capture_default_str();
  app.add_option("--warmup", flags.warmup)->capture_default_str();
  app.add_flag("--recompute", flags.recompute, "Recompute activations in backward");
  app.add_flag("--no-optimizer", flags.no_optimizer, "Forward + backward only");
  app.add_option("--lm-head-chunk", flags.lm_head_chunk, "Tokens per LM-head/loss chunk")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (flags.batch <= 0 || flags.seq <= 0 || flags.steps <= 0 || flags.warmup < 0 ||
      flags.lm_head_chunk <= 0) {
    std::fprintf(stderr, "model_train_bench: sizes must be positive\n");
    return 2;
  }
  const absl::Status status = Run(flags);
  if (!status.ok()) {
    std::fprintf(stderr, "model_train_bench: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
