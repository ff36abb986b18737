// What a job needs before its trainer is created, read and checked the same way by `qtrain
// train` and by a worker's training child: the model configuration, the init_from weights, the
// tokenizer files (read once: the bytes parsed are the bytes hashed and exported beside the
// final model) and the dataset, opened with the tokenizer's sha256 and vocabulary checks.
//
//   QTRAIN_ASSIGN_OR_RETURN(PreparedJob job, PrepareJob(spec));
//   ... Trainer::Create(spec, job.config, std::move(job.initial_params), *job.data, ...) ...
//   QTRAIN_RETURN_IF_ERROR(WriteTokenizerFiles(job.tokenizer_files, summary.final_dir));
#ifndef QTRAIN_WORKER_TRAIN_JOB_SETUP_H_
#define QTRAIN_WORKER_TRAIN_JOB_SETUP_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "qtrain/v1/jobs.pb.h"
#include "qtrain/v1/worker.pb.h"
#include "tokenizer/tokenizer.h"
#include "worker/model/config.h"
#include "worker/train/shard_token_source.h"

namespace qtrain::train {

// The tokenizer files exported beside the final model, read before training starts so that a
// missing or unreadable tokenizer_config.json fails the run at once, not after the last step.
struct TokenizerFiles {
  std::string tokenizer_json;
  std::optional<std::string> tokenizer_config_json;  // when the tokenizer's directory has one
};

struct PreparedJob {
  model::ModelConfig config;
  // model.init_from's weights, when the spec has one.
  std::optional<std::vector<float>> initial_params;
  TokenizerFiles tokenizer_files;
  std::string tokenizer_sha256;
  uint32_t tokenizer_vocab_size = 0;
  // The tokenizer parsed from tokenizer_files (TrainerOptions::tokenizer, for eval.tasks).
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
  // Heap-held: the trainer keeps a pointer to it, and a PreparedJob may move.
  std::unique_ptr<ShardTokenSource> data;
};

// Prepares `spec` (valid, defaults applied). With `assignment`, opens only its shards
// (ShardTokenSource::OpenAssigned); otherwise the whole dataset. Errors name the file at fault:
// NOT_FOUND for a missing file, INVALID_ARGUMENT for a bad tokenizer or a model whose
// vocabulary is smaller than the tokenizer's, FAILED_PRECONDITION for shards made by another
// tokenizer or a manifest that changed since the assignment was planned, DATA_LOSS for a
// damaged shard.
absl::StatusOr<PreparedJob> PrepareJob(const v1::JobSpec& spec,
                                       const v1::DataAssignment* assignment = nullptr);

// Writes tokenizer.json (and tokenizer_config.json when there was one) into `out_dir`.
absl::Status WriteTokenizerFiles(const TokenizerFiles& files, const std::string& out_dir);

}  // namespace qtrain::train

#endif  // QTRAIN_WORKER_TRAIN_JOB_SETUP_H_
