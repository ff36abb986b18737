#include "tokenizer/tokenizer.h"

#include <atomic>

#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/utf8.h"

namespace qtrain::tokenizer {
namespace {

std::atomic<uint64_t> next_instance_id{1};

// Recently encoded pieces of one thread. Pieces longer than kMaxCachedPiece are rare and cheap
// to skip; the cache is dropped whole when it grows past kMaxEntries (simple and bounded).
struct PieceCache {
  static constexpr size_t kMaxCachedPiece = 256;
  static constexpr size_t kMaxEntries = size_t{1} << 20;

  uint64_t owner = 0;
  absl::flat_hash_map<std::string, std::pair<uint32_t, uint32_t>> map;  // -> (offset, count)
  std::vector<uint32_t> ids;

  void Reset(uint64_t new_owner) {
    owner = new_owner;
    map.clear();
    ids.clear();
  }
};

thread_local PieceCache piece_cache;

// Appends the ids of one piece, through the cache for short pieces.
void EncodePieceCached(const BpeModel& model, uint64_t owner, std::string_view piece,
                       PieceCache* cache, std::vector<uint32_t>* ids) {
  if (piece.size() == 1) {
    ids->push_back(model.byte_id(static_cast<uint8_t>(piece[0])));
    return;
  }
  if (piece.size() > PieceCache::kMaxCachedPiece) {
    model.EncodePiece(piece, ids);
    return;
  }
  auto it = cache->map.find(absl::string_view(piece.data(), piece.size()));
  if (it != cache->map.end()) {
    const uint32_t* p = cache->ids.data() + it->second.first;
    ids->insert(ids->end(), p, p + it->second.second);
    return;
  }
  const size_t before = ids->size();
  model.EncodePiece(piece, ids);
  if (cache->map.size() >= PieceCache::kMaxEntries) cache->Reset(owner);
  const auto offset = static_cast<uint32_t>(cache->ids.size());
  cache->ids.insert(cache->ids.end(), ids->begin() + static_cast<ptrdiff_t>(before), ids->end());
  cache->map.emplace(std::string(piece),
                     std::make_pair(offset, static_cast<uint32_t>(ids->size() - before)));
}

}  // namespace

absl::StatusOr<Tokenizer> Tokenizer::Create(BpeModel model, std::vector<AddedToken> added,
                                            Options options) {
  Tokenizer t;
  t.options_ = options;
  uint32_t limit = model.id_limit();
  for (const AddedToken& a : added) {
    if (a.content.empty()) return absl::InvalidArgumentError("added_tokens: empty content");
    if (a.id == UINT32_MAX) return absl::InvalidArgumentError("added_tokens: id too large");
    limit = std::max(limit, a.id + 1);
  }
  if (limit > 4 * (model.vocab_count() + added.size()) + 65536) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "added_tokens: id %d is far beyond the vocabulary (sparse ids are not supported)",
        limit - 1));
  }
  t.added_index_.assign(limit, -1);
  for (size_t k = 0; k < added.size(); ++k) {
    const AddedToken& a = added[k];
    if (t.added_index_[a.id] >= 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("added_tokens: id %d is used twice ('%s' and '%s')", a.id,
                          added[t.added_index_[a.id]].content, a.content));
    }
    if (model.HasId(a.id) && model.Token(a.id) != a.content) {
      return absl::InvalidArgumentError(
          absl::StrFormat("added_tokens: '%s' has id %d, which the vocabulary gives to '%s'",
                          a.content, a.id, model.Token(a.id)));
    }
    const std::optional<uint32_t> vocab_id = model.TokenToId(a.content);
    if (vocab_id.has_value() && *vocab_id != a.id) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "added_tokens: '%s' has id %d but id %d in the vocabulary", a.content, a.id, *vocab_id));
    }
    t.added_index_[a.id] = static_cast<int32_t>(k);
  }
  t.vocab_size_ = limit;
  // What the byte-level decoder outputs for each token: the bytes its characters stand for, or
  // its UTF-8 text when some character is outside the byte alphabet.
  t.decode_bytes_.resize(limit);
  std::string bytes;
  for (uint32_t id = 0; id < limit; ++id) {
    const std::string* text = nullptr;
    if (t.added_index_[id] >= 0) {
      text = &added[t.added_index_[id]].content;
    } else if (model.HasId(id)) {
      text = &model.Token(id);
    }
    if (text == nullptr) continue;
    t.decode_bytes_[id] = ByteLevelToBytes(*text, &bytes) ? bytes : *text;
  }
  t.matcher_ = AddedTokenMatcher(added);
  t.added_ = std::move(added);
  t.model_ = std::move(model);
  t.instance_id_ = next_instance_id.fetch_add(1);
  return t;
}

absl::Status Tokenizer::Encode(std::string_view text, std::vector<uint32_t>* ids) const {
  return EncodeImpl(text, ids, nullptr);
}

absl::Status Tokenizer::EncodeTo(std::string_view text, IdSink sink) const {
  std::vector<uint32_t> ids;
  absl::Status sink_status;
  auto spill_ids = [&](std::vector<uint32_t>* gathered) {
    sink_status = sink(*gathered);
    gathered->clear();
    return sink_status.ok();
  };
  const Spill spill(spill_ids);
  const absl::Status status = EncodeImpl(text, &ids, &spill);
  QTRAIN_RETURN_IF_ERROR(sink_status);
  QTRAIN_RETURN_IF_ERROR(status);
  return ids.empty() ? absl::OkStatus() : sink(ids);
}

absl::Status Tokenizer::EncodeImpl(std::string_view text, std::vector<uint32_t>* ids,
                                   const Spill* spill) const {
  size_t pos = 0;
  while (pos < text.size()) {
    const AddedTokenMatcher::Match m = matcher_.Find(text, pos);
    const size_t end = m.begin == std::string_view::npos ? text.size() : m.begin;
    if (end > pos) {
      const absl::Status s = EncodeSegment(text.substr(pos, end - pos), ids, spill);
      if (absl::IsCancelled(s)) return s;  // stopped by the sink
      if (!s.ok()) {
        // Report the offset in the whole text, not in the segment.
        return Annotate(s, absl::StrFormat("text segment starting at byte %d", pos));
      }
    }
    if (m.begin == std::string_view::npos) break;
    ids->push_back(m.id);
    if (spill != nullptr && ids->size() >= kStreamIds && !(*spill)(ids)) {
      return absl::CancelledError("stopped by the id sink");
    }
    pos = m.begin + m.length;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint32_t>> Tokenizer::Encode(std::string_view text) const {
  std::vector<uint32_t> ids;
  QTRAIN_RETURN_IF_ERROR(Encode(text, &ids));
  return ids;
}

absl::Status Tokenizer::EncodeSegment(std::string_view text, std::vector<uint32_t>* ids,
                                      const Spill* spill) const {
  std::string scratch;
  std::string_view normalized = text;
  if (options_.nfc) {
    QTRAIN_ASSIGN_OR_RETURN(normalized, NormalizeNfc(text, &scratch));
  } else {
    QTRAIN_RETURN_IF_ERROR(ValidateUtf8(text));
  }
  PieceCache& cache = piece_cache;
  if (cache.owner != instance_id_) cache.Reset(instance_id_);
  bool stopped = false;
  SplitQwen2(normalized, [&](std::string_view piece) {
    EncodePieceCached(model_, instance_id_, piece, &cache, ids);
    if (spill != nullptr && ids->size() >= kStreamIds && !(*spill)(ids)) {
      stopped = true;
      return false;
    }
    return true;
  });
  return stopped ? absl::CancelledError("stopped by the id sink") : absl::OkStatus();
}

std::optional<uint32_t> Tokenizer::TokenToId(std::string_view token) const {
  for (const AddedToken& a : added_) {
    if (a.content == token) return a.id;
  }
  return model_.TokenToId(token);
}

std::optional<std::string> Tokenizer::IdToToken(uint32_t id) const {
  if (id < added_index_.size() && added_index_[id] >= 0) return added_[added_index_[id]].content;
  if (model_.HasId(id)) return model_.Token(id);
  return std::nullopt;
}

bool Tokenizer::IsSpecial(uint32_t id) const {
  return id < added_index_.size() && added_index_[id] >= 0 && added_[added_index_[id]].special;
}

}  // namespace qtrain::tokenizer
