// `qtrain tokenize`: text files -> token shards + manifest, on several threads.
//
// The reader hands out chunks in order (corpus_reader.h); rounds of about `jobs` x 4 chunks of
// ~1 MiB are encoded in parallel and appended in input order, with the end-of-text token after
// every document, so the output does not depend on the number of threads. Tokens go to the
// shards round by round; a chunk of 8 MiB or more (stream_bytes: a long document or a line with
// no place to cut it) is encoded alone with its ids streamed to the shards. Memory is therefore
// bounded by the round and the largest such chunk, whatever the size of the corpus.
#ifndef QTRAIN_TOKENIZER_TOKENIZE_CORPUS_H_
#define QTRAIN_TOKENIZER_TOKENIZE_CORPUS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tokenizer/shard_format.h"
#include "tokenizer/tokenizer.h"

namespace qtrain::tokenizer {

struct TokenizeCorpusOptions {
  std::vector<std::string> inputs;
  std::string out_dir;
  uint64_t shard_tokens = uint64_t{1} << 24;
  int jobs = 1;
  std::string eos_token = "<|endoftext|>";
  std::string tokenizer_sha256;  // recorded in the manifest
  bool progress = true;          // progress lines on stderr
  // A chunk of at least this many bytes is encoded alone, its ids streamed to the shards.
  size_t stream_bytes = size_t{8} << 20;
};

struct TokenizeCorpusResult {
  ShardManifest manifest;
  uint64_t bytes = 0;
  double seconds = 0;
};

absl::StatusOr<TokenizeCorpusResult> TokenizeCorpus(const Tokenizer& tokenizer,
                                                    const TokenizeCorpusOptions& options);

}  // namespace qtrain::tokenizer

#endif  // QTRAIN_TOKENIZER_TOKENIZE_CORPUS_H_
