#include "tokenizer/trainer.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <queue>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "tokenizer/added_tokens.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/corpus_reader.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/utf8.h"
#include "tokenizer/work_pool.h"

namespace qtrain::tokenizer {
namespace {

uint64_t PairKey(uint32_t a, uint32_t b) { return (static_cast<uint64_t>(a) << 32) | b; }

struct Word {
  std::vector<uint32_t> symbols;
  uint64_t count;
};

class Trainer {
 public:
  explicit Trainer(const BpeTrainerOptions& options) : options_(options) {}

  absl::StatusOr<Tokenizer> Run(const absl::flat_hash_map<std::string, uint64_t>& counts) {
    const size_t specials = options_.special_tokens.size();
    if (options_.vocab_size < 256 + specials) {
      return absl::InvalidArgumentError(
          absl::StrFormat("vocab size %d is below the 256 byte tokens plus %d special tokens",
                          options_.vocab_size, specials));
    }
    const size_t target = options_.vocab_size - specials;
    for (int i = 0; i < 256; ++i) {
      const uint8_t b = ByteAtAlphabetPosition(i);
      tokens_.emplace_back(1, static_cast<char>(b));
      byte_id_[b] = static_cast<uint32_t>(i);
      bytes_to_id_.emplace(tokens_.back(), i);
    }
    // Words in a fixed order (by bytes), so that the result does not depend on hashing.
    std::vector<std::pair<std::string_view, uint64_t>> sorted;
    sorted.reserve(counts.size());
    for (const auto& [piece, n] : counts) sorted.emplace_back(piece, n);
    std::sort(sorted.begin(), sorted.end());
    words_.reserve(sorted.size());
    for (const auto& [piece, n] : sorted) {
      if (piece.size() < 2) continue;
      Word w{{}, n};
      for (unsigned char c : piece) w.symbols.push_back(byte_id_[c]);
      words_.push_back(std::move(w));
    }
    for (uint32_t w = 0; w < words_.size(); ++w) {
      const Word& word = words_[w];
      for (size_t k = 0; k + 1 < word.symbols.size(); ++k) {
        const uint64_t key = PairKey(word.symbols[k], word.symbols[k + 1]);
        pair_count_[key] += static_cast<int64_t>(word.count);
        where_[key].push_back(w);
      }
    }
    for (const auto& [key, n] : pair_count_) heap_.push({n, key});
    const auto start = std::chrono::steady_clock::now();
    while (tokens_.size() < target) {
      uint64_t key;
      int64_t n;
      if (!PopBest(&key, &n)) break;
      if (n < static_cast<int64_t>(std::max<uint64_t>(options_.min_frequency, 1))) break;
      ApplyMerge(key);
      if (options_.progress && merges_.size() % 1000 == 0) {
        const double secs =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        std::fprintf(stderr, "train-tokenizer: %zu / %zu tokens, %.1f s\n", tokens_.size(), target,
                     secs);
      }
    }
    return Build();
  }

 private:
  struct Entry {
    int64_t count;
    uint64_t key;
  };
  // Highest count first; on ties the pair whose byte strings sort first.
  struct Lower {
    const Trainer* t;
    bool operator()(const Entry& x, const Entry& y) const {
      if (x.count != y.count) return x.count < y.count;
      return t->PairBytesLess(y.key, x.key);
    }
  };

  bool PairBytesLess(uint64_t x, uint64_t y) const {
    const std::string& xa = tokens_[x >> 32];
    const std::string& ya = tokens_[y >> 32];
    if (xa != ya) return xa < ya;
    return tokens_[static_cast<uint32_t>(x)] < tokens_[static_cast<uint32_t>(y)];
  }

  // Pops until an entry matches the pair's current count (stale ones are dropped).
  bool PopBest(uint64_t* key, int64_t* n) {
    while (!heap_.empty()) {
      const Entry e = heap_.top();
      heap_.pop();
      auto it = pair_count_.find(e.key);
      if (it == pair_count_.end() || it->second != e.count) continue;
      *key = e.key;
      *n = e.count;
      return true;
    }
    return false;
  }

  void ApplyMerge(uint64_t key) {
    const auto a = static_cast<uint32_t>(key >> 32);
    const auto b = static_cast<uint32_t>(key);
    std::string merged_bytes = tokens_[a] + tokens_[b];
    uint32_t c;
    auto existing = bytes_to_id_.find(merged_bytes);
    if (existing != bytes_to_id_.end()) {
      c = existing->second;  // another pair already made these bytes
    } else {
      c = static_cast<uint32_t>(tokens_.size());
      tokens_.push_back(merged_bytes);
      bytes_to_id_.emplace(std::move(merged_bytes), c);
    }
    merges_.emplace_back(a, b);
    std::vector<uint32_t> affected = std::move(where_[key]);
    where_.erase(key);
    std::sort(affected.begin(), affected.end());
    affected.erase(std::unique(affected.begin(), affected.end()), affected.end());
    absl::flat_hash_map<uint64_t, int64_t> delta;
    for (uint32_t w : affected) {
      Word& word = words_[w];
      std::vector<uint32_t>& s = word.symbols;
      bool found = false;
      for (size_t k = 0; k + 1 < s.size(); ++k) found = found || (s[k] == a && s[k + 1] == b);
      if (!found) continue;  // stale entry
      const auto cnt = static_cast<int64_t>(word.count);
      for (size_t k = 0; k + 1 < s.size(); ++k) delta[PairKey(s[k], s[k + 1])] -= cnt;
      std::vector<uint32_t> out;
      out.reserve(s.size());
      for (size_t k = 0; k < s.size();) {
        if (k + 1 < s.size() && s[k] == a && s[k + 1] == b) {
          out.push_back(c);
          k += 2;
        } else {
          out.push_back(s[k++]);
        }
      }
      s = std::move(out);
      for (size_t k = 0; k + 1 < s.size(); ++k) {
        const uint64_t p = PairKey(s[k], s[k + 1]);
        delta[p] += cnt;
        if (s[k] == c || s[k + 1] == c) where_[p].push_back(w);
      }
    }
    for (const auto& [p, d] : delta) {
      if (d == 0) continue;
      int64_t& n = pair_count_[p];
      n += d;
      if (n <= 0) {
        pair_count_.erase(p);
      } else {
        heap_.push({n, p});
      }
    }
    pair_count_.erase(key);
  }

  absl::StatusOr<Tokenizer> Build() {
    std::vector<std::pair<std::string, uint32_t>> vocab;
    vocab.reserve(tokens_.size());
    for (uint32_t id = 0; id < tokens_.size(); ++id) {
      vocab.emplace_back(BytesToByteLevel(tokens_[id]), id);
    }
    std::vector<std::pair<std::string, std::string>> merges;
    merges.reserve(merges_.size());
    for (const auto& [a, b] : merges_) {
      merges.emplace_back(BytesToByteLevel(tokens_[a]), BytesToByteLevel(tokens_[b]));
    }
    QTRAIN_ASSIGN_OR_RETURN(BpeModel model, BpeModel::Create(vocab, merges, {}));
    std::vector<AddedToken> added;
    for (const std::string& s : options_.special_tokens) {
      added.push_back({static_cast<uint32_t>(tokens_.size() + added.size()), s, true});
    }
    return Tokenizer::Create(std::move(model), std::move(added), {.nfc = options_.nfc});
  }

  const BpeTrainerOptions& options_;
  std::vector<std::string> tokens_;  // raw bytes by id
  absl::flat_hash_map<std::string, uint32_t> bytes_to_id_;
  uint32_t byte_id_[256] = {};
  std::vector<Word> words_;
  absl::flat_hash_map<uint64_t, int64_t> pair_count_;
  absl::flat_hash_map<uint64_t, std::vector<uint32_t>> where_;
  std::priority_queue<Entry, std::vector<Entry>, Lower> heap_{Lower{this}};
  std::vector<std::pair<uint32_t, uint32_t>> merges_;
};

absl::Status CheckSpecialTokens(const std::vector<std::string>& specials) {
  absl::flat_hash_set<std::string> seen;
  for (const std::string& s : specials) {
    if (s.empty()) return absl::InvalidArgumentError("special tokens must not be empty");
    if (!ValidateUtf8(s).ok()) {
      return absl::InvalidArgumentError("special tokens must be valid UTF-8");
    }
    if (!seen.insert(s).second) {
      return absl::InvalidArgumentError(absl::StrCat("special token '", s, "' given twice"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

PieceCounter::PieceCounter(std::vector<std::string> special_tokens, bool nfc)
    : special_tokens_(std::move(special_tokens)), nfc_(nfc) {}

absl::Status PieceCounter::Add(std::string_view text) {
  std::vector<AddedToken> added;
  for (const std::string& s : special_tokens_) added.push_back({0, s, true});
  const AddedTokenMatcher matcher(added);
  std::string scratch;
  size_t pos = 0;
  while (pos <= text.size()) {
    const AddedTokenMatcher::Match m = matcher.Find(text, pos);
    const size_t end = m.begin == std::string_view::npos ? text.size() : m.begin;
    const std::string_view segment = text.substr(pos, end - pos);
    std::string_view normalized = segment;
    if (nfc_) {
      QTRAIN_ASSIGN_OR_RETURN(normalized, NormalizeNfc(segment, &scratch));
    } else {
      QTRAIN_RETURN_IF_ERROR(ValidateUtf8(segment));
    }
    SplitQwen2(normalized, [&](std::string_view piece) {
      ++counts_[absl::string_view(piece.data(), piece.size())];
    });
    if (m.begin == std::string_view::npos) break;
    pos = m.begin + m.length;
  }
  return absl::OkStatus();
}

void PieceCounter::Merge(PieceCounter&& other) {
  if (counts_.empty()) {
    counts_ = std::move(other.counts_);
    return;
  }
  for (auto& [piece, n] : other.counts_) counts_[piece] += n;
  other.counts_.clear();
}

absl::StatusOr<Tokenizer> TrainBpe(const absl::flat_hash_map<std::string, uint64_t>& counts,
                                   const BpeTrainerOptions& options) {
  QTRAIN_RETURN_IF_ERROR(CheckSpecialTokens(options.special_tokens));
  Trainer trainer(options);
  return trainer.Run(counts);
}

absl::StatusOr<Tokenizer> TrainBpeOnFiles(const std::vector<std::string>& paths,
                                          const BpeTrainerOptions& options) {
  QTRAIN_RETURN_IF_ERROR(CheckSpecialTokens(options.special_tokens));
  constexpr size_t kChunkBytes = size_t{1} << 20;
  bool newline_in_special = false;
  for (const std::string& s : options.special_tokens) {
    newline_in_special = newline_in_special || s.find('\n') != std::string::npos;
  }
  QTRAIN_ASSIGN_OR_RETURN(CorpusReader reader,
                          CorpusReader::Open(paths, kChunkBytes, !newline_in_special));
  const int jobs = std::max(1, options.jobs);
  WorkPool pool(jobs);
  PieceCounter total(options.special_tokens, options.nfc);
  bool more = true;
  while (more) {
    std::vector<std::vector<TextChunk>> batches(static_cast<size_t>(jobs) * 2);
    size_t used = 0;
    for (; used < batches.size() && more; ++used) {
      QTRAIN_ASSIGN_OR_RETURN(more, reader.NextBatch(kChunkBytes, &batches[used]));
    }
    std::vector<PieceCounter> counters(used, PieceCounter(options.special_tokens, options.nfc));
    std::vector<absl::Status> status(used);
    pool.Run(used, [&](size_t k) {
      for (const TextChunk& c : batches[k]) {
        status[k] = Annotate(counters[k].Add(c.text), c.source);
        if (!status[k].ok()) return;
      }
    });
    for (size_t k = 0; k < used; ++k) {
      QTRAIN_RETURN_IF_ERROR(status[k]);
      total.Merge(std::move(counters[k]));
    }
    if (options.progress) {
      std::fprintf(stderr, "train-tokenizer: counted %.1f / %.1f MB, %zu distinct pieces\n",
                   reader.bytes_read() / 1e6, reader.total_bytes() / 1e6, total.counts().size());
    }
  }
  return TrainBpe(total.counts(), options);
}

std::string TrainedTokenizerConfig(const Tokenizer& tokenizer) {
  nlohmann::ordered_json j;
  j["add_prefix_space"] = false;
  nlohmann::ordered_json decoder = nlohmann::ordered_json::object();
  for (const AddedToken& a : tokenizer.added_tokens()) {
    decoder[std::to_string(a.id)] = {{"content", a.content}, {"lstrip", false},
                                     {"normalized", false},  {"rstrip", false},
                                     {"single_word", false}, {"special", a.special}};
  }
  j["added_tokens_decoder"] = std::move(decoder);
  j["bos_token"] = nullptr;
  j["clean_up_tokenization_spaces"] = false;
  if (!tokenizer.added_tokens().empty()) {
    j["eos_token"] = tokenizer.added_tokens()[0].content;
    j["pad_token"] = tokenizer.added_tokens()[0].content;
  }
  j["errors"] = "replace";
  j["model_max_length"] = 32768;
  j["split_special_tokens"] = false;
  j["tokenizer_class"] = "Qwen2Tokenizer";
  j["unk_token"] = nullptr;
  return j.dump(2) + "\n";
}

}  // namespace qtrain::tokenizer
