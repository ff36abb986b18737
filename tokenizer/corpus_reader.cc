#include "tokenizer/corpus_reader.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace qtrain::tokenizer {
namespace {

bool IsJsonl(const std::string& path) {
  return absl::EndsWith(path, ".jsonl") || absl::EndsWith(path, ".ndjson");
}

// The last position p in (max(from, 0), s.size()) with s[p-1] == '\n' and s[p] printable ASCII,
// or 0.
size_t LastSafeCut(const std::string& s, size_t from) {
  for (size_t p = s.size(); p-- > std::max<size_t>(from, 1);) {
    const unsigned char c = static_cast<unsigned char>(s[p]);
    if (s[p - 1] == '\n' && c >= 0x21 && c <= 0x7E) return p;
  }
  return 0;
}

}  // namespace

absl::StatusOr<CorpusReader> CorpusReader::Open(std::vector<std::string> paths, size_t chunk_bytes,
                                                bool split_plain_files) {
  if (paths.empty()) return absl::InvalidArgumentError("no input files");
  CorpusReader r;
  for (const std::string& p : paths) {
    // Opened (and closed) now, so that a missing, unreadable or non-regular input is named before
    // any work is done.
    QTRAIN_ASSIGN_OR_RETURN(const RegularFile file, OpenRegularFile(p));
    r.total_bytes_ += file.size;
  }
  r.paths_ = std::move(paths);
  r.chunk_bytes_ = chunk_bytes == 0 ? 1 : chunk_bytes;
  r.split_ = split_plain_files;
  return r;
}

absl::Status CorpusReader::OpenCurrent() {
  QTRAIN_ASSIGN_OR_RETURN(RegularFile file, OpenRegularFile(paths_[index_]));
  file_.emplace(std::move(file));
  jsonl_ = IsJsonl(paths_[index_]);
  if (jsonl_) lines_.emplace(file_->fd.get(), paths_[index_]);
  eof_ = false;
  file_offset_ = 0;
  carry_.clear();
  return absl::OkStatus();
}

absl::StatusOr<bool> CorpusReader::Next(TextChunk* chunk) {
  while (index_ < paths_.size()) {
    if (!file_.has_value()) QTRAIN_RETURN_IF_ERROR(OpenCurrent());
    absl::StatusOr<bool> got = jsonl_ ? NextJsonl(chunk) : NextPlain(chunk);
    if (!got.ok() || *got) return got;
    // End of this file.
    done_bytes_ += file_offset_;
    file_offset_ = 0;
    lines_.reset();
    file_.reset();
    ++index_;
  }
  return false;
}

absl::StatusOr<bool> CorpusReader::NextBatch(size_t bytes, std::vector<TextChunk>* batch) {
  size_t read = 0;
  while (read < bytes) {
    TextChunk chunk;
    QTRAIN_ASSIGN_OR_RETURN(const bool more, Next(&chunk));
    if (!more) return false;
    read += chunk.text.size() + 1;
    batch->push_back(std::move(chunk));
  }
  return true;
}

absl::StatusOr<bool> CorpusReader::NextJsonl(TextChunk* chunk) {
  std::string line;
  while (true) {
    QTRAIN_ASSIGN_OR_RETURN(const bool more, lines_->Next(&line));
    if (!more) return false;
    file_offset_ = lines_->bytes_consumed();
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string source = absl::StrCat(paths_[index_], ":", lines_->line_number());
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON: ", e.what()));
    }
    auto it = j.is_object() ? j.find("text") : j.end();
    if (!j.is_object() || it == j.end() || !it->is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": expected an object with a string field \"text\""));
    }
    chunk->text = std::move(it->get_ref<std::string&>());  // no second copy of a long document
    chunk->ends_document = true;
    chunk->source = source;
    return true;
  }
}

absl::StatusOr<bool> CorpusReader::NextPlain(TextChunk* chunk) {
  if (eof_ && carry_.empty()) return false;
  std::string buf = std::move(carry_);
  carry_.clear();
  while (!eof_) {
    const size_t old = buf.size();
    const size_t want = std::max(chunk_bytes_, old + 1) - old;
    buf.resize(old + want);
    QTRAIN_ASSIGN_OR_RETURN(const size_t got,
                            ReadFully(file_->fd.get(), buf.data() + old, want, paths_[index_]));
    buf.resize(old + got);
    eof_ = got < want;
    file_offset_ += got;
    if (!split_ || eof_) continue;
    if (buf.size() >= chunk_bytes_) {
      const size_t cut = LastSafeCut(buf, old);  // earlier bytes held no cut
      if (cut > 0) {
        carry_.assign(buf, cut, std::string::npos);
        buf.resize(cut);
        chunk->text = std::move(buf);
        chunk->ends_document = false;
        chunk->source = paths_[index_];
        return true;
      }
    }
  }
  // The rest of the file: the end of the document (an empty file is an empty document).
  chunk->text = std::move(buf);
  chunk->ends_document = true;
  chunk->source = paths_[index_];
  carry_.clear();
  return true;
}

}  // namespace qtrain::tokenizer
