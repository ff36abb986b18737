// Test fixtures: a real tokenizer.json and a token-shard dataset of many small shards, written
// into a directory, and a job spec over them for a model that trains in well under a second.
#ifndef QTRAIN_WORKER_TRAIN_TEST_DATASET_H_
#define QTRAIN_WORKER_TRAIN_TEST_DATASET_H_

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "tokenizer/shard_writer.h"
#include "tokenizer/trainer.h"

namespace qtrain::train::testing {

struct TestDataset {
  std::string tokenizer_path;
  std::string manifest_path;
  uint32_t vocab_size = 0;
};

// Writes `dir`/tok/tokenizer.json (+ tokenizer_config.json) and `dir`/data/ with `tokens`
// tokens of a learnable stream (mostly a fixed successor function) in shards of
// `shard_tokens`.
inline absl::StatusOr<TestDataset> WriteTestDataset(const std::string& dir, int64_t tokens,
                                                    uint64_t shard_tokens) {
  const absl::flat_hash_map<std::string, uint64_t> counts = {
      {"the", 50}, {"then", 20}, {"token", 30}, {"tokens", 12}, {"shard", 9}};
  tokenizer::BpeTrainerOptions bpe;
  bpe.vocab_size = 264;
  QTRAIN_ASSIGN_OR_RETURN(tokenizer::Tokenizer tok, tokenizer::TrainBpe(counts, bpe));
  std::filesystem::create_directories(dir + "/tok");
  TestDataset out;
  out.tokenizer_path = dir + "/tok/tokenizer.json";
  const std::string json = tok.ToJson();
  QTRAIN_RETURN_IF_ERROR(WriteFileAtomically(out.tokenizer_path, json));
  QTRAIN_RETURN_IF_ERROR(WriteFileAtomically(dir + "/tok/tokenizer_config.json",
                                             tokenizer::TrainedTokenizerConfig(tok)));
  out.vocab_size = tok.vocab_size();
  tokenizer::ShardWriter::Options options;
  options.dir = dir + "/data";
  options.shard_tokens = shard_tokens;
  options.tokenizer_sha256 = Sha256Hex(json);
  options.vocab_size = tok.vocab_size();
  options.eos_token = "<|endoftext|>";
  options.eos_id = tok.vocab_size() - 1;
  QTRAIN_ASSIGN_OR_RETURN(tokenizer::ShardWriter writer, tokenizer::ShardWriter::Create(options));
  std::vector<uint32_t> stream(static_cast<size_t>(tokens));
  uint64_t rng = 12345;
  uint32_t previous = 0;
  for (uint32_t& t : stream) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    t = (rng >> 60) == 0 ? static_cast<uint32_t>((rng >> 40) % 32) : (previous * 5 + 3) % 32;
    previous = t;
  }
  QTRAIN_RETURN_IF_ERROR(writer.Append(stream));
  writer.CountDocuments(1);
  QTRAIN_RETURN_IF_ERROR(writer.Finish());
  out.manifest_path = options.dir + "/manifest.json";
  return out;
}

// Two stages (seq_len 16 then 32), 4 + 3 steps of 256 tokens, over `data`.
inline std::string TestJobSpec(const TestDataset& data, const std::string& name = "stage-test") {
  return absl::StrCat(R"(
name: )",
                      name, R"(
seed: 3
model: {config: {vocab_size: 272, hidden_size: 16, intermediate_size: 24, num_hidden_layers: 2,
                 num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 256}}
tokenizer: )",
                      data.tokenizer_path, R"(
data: {manifest: )",
                      data.manifest_path, R"(, validation_fraction: 0.1}
curriculum:
  - {name: short, seq_len: 16, tokens: 1024, micro_batch: 4}
  - {name: long, seq_len: 32, tokens: 768, micro_batch: 2, rope_theta: 20000}
batch: {global_tokens: 256}
checkpoint: {every_steps: 2, keep_last: 2}
eval: {every_steps: 3, batches: 2}
optimizer: {lr: 1e-2, min_lr: 1e-3, warmup_steps: 2}
)");
}

}  // namespace qtrain::train::testing

#endif  // QTRAIN_WORKER_TRAIN_TEST_DATASET_H_
