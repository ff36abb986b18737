#include "tokenizer/tokenize_corpus.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <span>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "tokenizer/corpus_reader.h"
#include "tokenizer/shard_writer.h"
#include "tokenizer/work_pool.h"

namespace qtrain::tokenizer {
namespace {

using Clock = std::chrono::steady_clock;

struct Batch {
  std::vector<TextChunk> chunks;
  std::vector<uint32_t> ids;
  uint64_t documents = 0;
  absl::Status status;
};

void EncodeBatch(const Tokenizer& tok, uint32_t eos_id, Batch* b) {
  for (const TextChunk& c : b->chunks) {
    const absl::Status s = tok.Encode(c.text, &b->ids);
    if (!s.ok()) {
      b->status = Annotate(s, c.source);
      return;
    }
    if (c.ends_document) {
      b->ids.push_back(eos_id);
      ++b->documents;
    }
  }
}

// Encodes one chunk on the calling thread, handing its ids to the writer as they are made.
absl::Status EncodeStreamed(const Tokenizer& tok, uint32_t eos_id, const TextChunk& chunk,
                            ShardWriter* writer) {
  const absl::Status s = tok.EncodeTo(
      chunk.text, [writer](std::span<const uint32_t> ids) { return writer->Append(ids); });
  if (!s.ok()) return Annotate(s, chunk.source);
  if (chunk.ends_document) {
    QTRAIN_RETURN_IF_ERROR(writer->Append(std::span<const uint32_t>(&eos_id, 1)));
    writer->CountDocuments(1);
  }
  return absl::OkStatus();
}

class Progress {
 public:
  explicit Progress(bool enabled) : enabled_(enabled), tty_(isatty(STDERR_FILENO) == 1) {}
  void Report(uint64_t done, uint64_t total, uint64_t tokens, bool final) {
    if (!enabled_) return;
    const auto now = Clock::now();
    if (!final && now - last_ < std::chrono::seconds(tty_ ? 1 : 10)) return;
    last_ = now;
    const double secs = std::chrono::duration<double>(now - start_).count();
    const double pct = total > 0 ? 100.0 * static_cast<double>(done) / total : 100.0;
    std::fprintf(stderr, "%stokenize: %.1f / %.1f MB (%.0f%%), %llu tokens, %.1f MB/s%s",
                 tty_ ? "\r" : "", done / 1e6, total / 1e6, pct,
                 static_cast<unsigned long long>(tokens), secs > 0 ? done / 1e6 / secs : 0.0,
                 tty_ && !final ? "" : "\n");
    std::fflush(stderr);
  }

 private:
  bool enabled_;
  bool tty_;
  Clock::time_point start_ = Clock::now();
  Clock::time_point last_ = Clock::now();
};

}  // namespace

absl::StatusOr<TokenizeCorpusResult> TokenizeCorpus(const Tokenizer& tok,
                                                    const TokenizeCorpusOptions& options) {
  const auto start = Clock::now();
  const std::optional<uint32_t> eos = tok.TokenToId(options.eos_token);
  if (!eos.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the tokenizer has no token '", options.eos_token, "' to end documents"));
  }
  const int jobs = std::max(1, options.jobs);
  bool newline_in_added = false;
  for (const AddedToken& a : tok.added_tokens()) {
    newline_in_added = newline_in_added || a.content.find('\n') != std::string::npos;
  }
  constexpr size_t kChunkBytes = size_t{1} << 20;
  QTRAIN_ASSIGN_OR_RETURN(CorpusReader reader,
                          CorpusReader::Open(options.inputs, kChunkBytes, !newline_in_added));
  ShardWriter::Options wo;
  wo.dir = options.out_dir;
  wo.shard_tokens = options.shard_tokens;
  wo.tokenizer_sha256 = options.tokenizer_sha256;
  wo.vocab_size = tok.vocab_size();
  wo.eos_token = options.eos_token;
  wo.eos_id = *eos;
  wo.inputs = options.inputs;
  QTRAIN_ASSIGN_OR_RETURN(ShardWriter writer, ShardWriter::Create(std::move(wo)));
  Progress progress(options.progress);
  WorkPool pool(jobs);

  // A round holds about round_bytes of text in at most jobs x 4 batches, encoded in parallel and
  // appended in order. A chunk of stream_bytes or more (a long document or line without a safe
  // cut; NextBatch ends a batch with it) ends the round and is encoded alone after it, its ids
  // streamed to the shards, so memory stays bounded by the round plus that one chunk.
  const size_t max_batches = static_cast<size_t>(jobs) * 4;
  const size_t round_bytes = max_batches * kChunkBytes;
  const size_t stream_bytes = std::max<size_t>(options.stream_bytes, 1);
  bool more = true;
  while (more) {
    std::vector<Batch> batches;
    size_t bytes = 0;
    TextChunk large;
    bool have_large = false;
    while (more && batches.size() < max_batches && bytes < round_bytes && !have_large) {
      Batch& b = batches.emplace_back();
      QTRAIN_ASSIGN_OR_RETURN(more, reader.NextBatch(kChunkBytes, &b.chunks));
      for (const TextChunk& c : b.chunks) bytes += c.text.size();
      if (!b.chunks.empty() && b.chunks.back().text.size() >= stream_bytes) {
        large = std::move(b.chunks.back());
        b.chunks.pop_back();
        have_large = true;
      }
    }
    pool.Run(batches.size(), [&](size_t k) { EncodeBatch(tok, *eos, &batches[k]); });
    for (Batch& b : batches) {
      QTRAIN_RETURN_IF_ERROR(b.status);
      QTRAIN_RETURN_IF_ERROR(writer.Append(b.ids));
      writer.CountDocuments(b.documents);
      b = Batch();  // free its memory before a large chunk is encoded
    }
    if (have_large) QTRAIN_RETURN_IF_ERROR(EncodeStreamed(tok, *eos, large, &writer));
    progress.Report(reader.bytes_read(), reader.total_bytes(), writer.num_tokens(), false);
  }
  QTRAIN_RETURN_IF_ERROR(writer.Finish());
  progress.Report(reader.total_bytes(), reader.total_bytes(), writer.num_tokens(), true);
  TokenizeCorpusResult result;
  result.manifest = writer.manifest();
  result.bytes = reader.total_bytes();
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return result;
}

}  // namespace qtrain::tokenizer
