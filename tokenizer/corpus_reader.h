// Reads training text as a stream of chunks, file by file, in order.
//
//   *.jsonl, *.ndjson  one document per non-blank line, from its "text" string field
//   anything else      the whole file is one document (UTF-8 text)
//
// A plain file is handed out in chunks of about `chunk_bytes`, cut only between a newline and a
// printable ASCII character: no pre-token, normalization stretch or (newline-free) added token
// spans such a cut, so encoding the chunks one by one gives the ids of the whole file.
//
// Inputs must be regular files (a FIFO or device is refused without blocking); a .jsonl line may
// be at most kMaxLineBytes (64 MiB) long; read errors are errors, never the end of a file.
#ifndef QTRAIN_TOKENIZER_CORPUS_READER_H_
#define QTRAIN_TOKENIZER_CORPUS_READER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/file_util.h"
#include "common/line_reader.h"

namespace qtrain::tokenizer {

struct TextChunk {
  std::string text;
  bool ends_document = false;
  std::string source;  // "file" or "file:line", for error messages
};

class CorpusReader {
 public:
  // Checks that every input is a readable regular file and sums their sizes (for progress).
  static absl::StatusOr<CorpusReader> Open(std::vector<std::string> paths,
                                           size_t chunk_bytes = size_t{1} << 20,
                                           bool split_plain_files = true);

  // The next chunk; false at the end of the last file.
  absl::StatusOr<bool> Next(TextChunk* chunk);

  // Appends chunks to *batch until about `bytes` of text (counting one per chunk end) are in it
  // or the corpus ends; false once the corpus has ended.
  absl::StatusOr<bool> NextBatch(size_t bytes, std::vector<TextChunk>* batch);

  uint64_t total_bytes() const { return total_bytes_; }
  uint64_t bytes_read() const { return done_bytes_ + file_offset_; }

 private:
  CorpusReader() = default;
  // Opens paths_[index_] and resets the per-file state.
  absl::Status OpenCurrent();
  absl::StatusOr<bool> NextJsonl(TextChunk* chunk);
  absl::StatusOr<bool> NextPlain(TextChunk* chunk);

  std::vector<std::string> paths_;
  size_t chunk_bytes_ = 0;
  bool split_ = true;
  uint64_t total_bytes_ = 0;
  uint64_t done_bytes_ = 0;          // bytes of the files already finished
  uint64_t file_offset_ = 0;         // bytes consumed from the current file
  size_t index_ = 0;                 // current file
  std::optional<RegularFile> file_;  // the current file, while open
  std::optional<LineReader> lines_;  // its lines, for .jsonl files
  bool eof_ = false;                 // the current plain file has been read to its end
  bool jsonl_ = false;
  std::string carry_;  // plain text read but not yet handed out
};

}  // namespace qtrain::tokenizer

#endif  // QTRAIN_TOKENIZER_CORPUS_READER_H_
