#include "worker/train/job_setup.h"

#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "tokenizer/tokenizer.h"
#include "worker/model/checkpoint_io.h"
#include "worker/model/model_source.h"

namespace qtrain::train {
namespace {

namespace fs = std::filesystem;

absl::StatusOr<TokenizerFiles> ReadTokenizerFiles(const std::string& tokenizer_path) {
  TokenizerFiles files;
  absl::StatusOr<std::string> json =
      ReadFileToString(tokenizer_path, tokenizer::kMaxTokenizerFileBytes);
  if (!json.ok()) return Annotate(json.status(), "tokenizer");
  files.tokenizer_json = *std::move(json);
  const std::string config =
      (fs::path(tokenizer_path).parent_path() / "tokenizer_config.json").string();
  absl::StatusOr<std::string> text = ReadFileToString(config, size_t{16} << 20);
  if (text.ok()) {
    files.tokenizer_config_json = *std::move(text);
  } else if (!absl::IsNotFound(text.status())) {
    return text.status();
  }
  return files;
}

}  // namespace

absl::StatusOr<PreparedJob> PrepareJob(const v1::JobSpec& spec,
                                       const v1::DataAssignment* assignment) {
  PreparedJob job;
  QTRAIN_ASSIGN_OR_RETURN(job.config, model::ResolveModelConfig(spec.model()));
  if (spec.model().has_init_from()) {
    QTRAIN_ASSIGN_OR_RETURN(model::LoadedModel loaded,
                            model::LoadCheckpoint(spec.model().init_from()));
    job.initial_params = std::move(loaded.params);
  }
  // The tokenizer is read once: the bytes parsed are the bytes hashed and exported.
  QTRAIN_ASSIGN_OR_RETURN(job.tokenizer_files, ReadTokenizerFiles(spec.tokenizer()));
  absl::StatusOr<tokenizer::Tokenizer> parsed =
      tokenizer::Tokenizer::FromJson(job.tokenizer_files.tokenizer_json);
  if (!parsed.ok()) return Annotate(parsed.status(), spec.tokenizer());
  job.tokenizer_vocab_size = parsed->vocab_size();
  job.tokenizer_sha256 = Sha256Hex(job.tokenizer_files.tokenizer_json);
  job.tokenizer = std::make_unique<tokenizer::Tokenizer>(*std::move(parsed));
  // The shards must come from this tokenizer: same sha256, same vocabulary size.
  tokenizer::DatasetOptions data_options;
  data_options.tokenizer_sha256 = job.tokenizer_sha256;
  data_options.vocab_size = job.tokenizer_vocab_size;
  absl::StatusOr<ShardTokenSource> data =
      assignment != nullptr
          ? ShardTokenSource::OpenAssigned(spec.data().manifest(), *assignment, data_options)
          : ShardTokenSource::Open(spec.data().manifest(), data_options);
  if (!data.ok()) return data.status();
  job.data = std::make_unique<ShardTokenSource>(*std::move(data));
  if (job.tokenizer_vocab_size > job.config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("model: vocab_size ", job.config.vocab_size,
                                                   " is smaller than the tokenizer's ",
                                                   job.tokenizer_vocab_size, " tokens"));
  }
  return job;
}

absl::Status WriteTokenizerFiles(const TokenizerFiles& files, const std::string& out_dir) {
  QTRAIN_RETURN_IF_ERROR(WriteFileAtomically(out_dir + "/tokenizer.json", files.tokenizer_json));
  if (files.tokenizer_config_json) {
    QTRAIN_RETURN_IF_ERROR(
        WriteFileAtomically(out_dir + "/tokenizer_config.json", *files.tokenizer_config_json));
  }
  return absl::OkStatus();
}

}  // namespace qtrain::train
