#include "tokenizer/bpe_model.h"

#include <algorithm>
#include <cstring>
#include <queue>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "tokenizer/byte_level.h"

namespace qtrain::tokenizer {

void PairTable::Reserve(size_t count) {
  size_t cap = 16;
  while (cap < count * 3) cap <<= 1;  // load factor at most 1/3
  if (cap <= keys_.size()) return;
  std::vector<uint64_t> old_keys = std::move(keys_);
  std::vector<uint64_t> old_values = std::move(values_);
  keys_.assign(cap, kEmpty);
  values_.assign(cap, 0);
  mask_ = cap - 1;
  size_ = 0;
  for (size_t i = 0; i < old_keys.size(); ++i) {
    if (old_keys[i] == kEmpty) continue;
    Insert(static_cast<uint32_t>(old_keys[i] >> 32), static_cast<uint32_t>(old_keys[i]),
           static_cast<uint32_t>(old_values[i] >> 32), static_cast<uint32_t>(old_values[i]));
  }
}

void PairTable::Insert(uint32_t left, uint32_t right, uint32_t rank, uint32_t merged) {
  if ((size_ + 1) * 3 > keys_.size()) Reserve(size_ + 1);
  const uint64_t key = (static_cast<uint64_t>(left) << 32) | right;
  size_t slot = Hash(key) & mask_;
  while (keys_[slot] != kEmpty && keys_[slot] != key) slot = (slot + 1) & mask_;
  if (keys_[slot] == kEmpty) ++size_;
  keys_[slot] = key;
  values_[slot] = (static_cast<uint64_t>(rank) << 32) | merged;
}

absl::StatusOr<BpeModel> BpeModel::Create(
    const std::vector<std::pair<std::string, uint32_t>>& vocab,
    const std::vector<std::pair<std::string, std::string>>& merges, Options options) {
  BpeModel m;
  m.options_ = options;
  uint32_t limit = 0;
  for (const auto& [token, id] : vocab) {
    if (id == UINT32_MAX) return absl::InvalidArgumentError("vocab: id 4294967295 is too large");
    limit = std::max(limit, id + 1);
  }
  // Holes in the id range are allowed, but not so many that a tiny file could demand gigabytes.
  if (limit > 4 * vocab.size() + 65536) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "vocab: largest id %d is far beyond the %d entries (sparse ids are not supported)",
        limit - 1, vocab.size()));
  }
  m.tokens_.resize(limit);
  m.present_.assign(limit, false);
  m.token_to_id_.reserve(vocab.size());
  for (const auto& [token, id] : vocab) {
    if (m.present_[id]) {
      return absl::InvalidArgumentError(
          absl::StrFormat("vocab: id %d is used by both '%s' and '%s'", id, m.tokens_[id], token));
    }
    m.tokens_[id] = token;
    m.present_[id] = true;
    m.token_to_id_.emplace(token, id);
  }
  std::string scratch;
  for (int b = 0; b < 256; ++b) {
    scratch.clear();
    const std::string symbol = BytesToByteLevel(std::string(1, static_cast<char>(b)));
    auto it = m.token_to_id_.find(symbol);
    if (it == m.token_to_id_.end()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "vocab: the byte-level symbol '%s' (byte 0x%02X) is missing; every byte needs a token",
          symbol, b));
    }
    m.byte_id_[b] = it->second;
  }
  if (options.ignore_merges) {
    for (const auto& [token, id] : vocab) {
      if (ByteLevelToBytes(token, &scratch)) m.bytes_to_id_.emplace(scratch, id);
    }
  }
  m.pairs_.Reserve(merges.size());
  m.merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    auto ia = m.token_to_id_.find(a);
    auto ib = m.token_to_id_.find(b);
    auto iab = m.token_to_id_.find(absl::StrCat(a, b));
    if (ia == m.token_to_id_.end() || ib == m.token_to_id_.end() || iab == m.token_to_id_.end()) {
      const std::string missing = ia == m.token_to_id_.end()   ? a
                                  : ib == m.token_to_id_.end() ? b
                                                               : absl::StrCat(a, b);
      return absl::InvalidArgumentError(absl::StrFormat(
          "merges[%d] ('%s' '%s'): token '%s' is not in the vocabulary", rank, a, b, missing));
    }
    m.pairs_.Insert(ia->second, ib->second, static_cast<uint32_t>(rank), iab->second);
    m.merges_.emplace_back(ia->second, ib->second);
  }
  return m;
}

std::optional<uint32_t> BpeModel::TokenToId(std::string_view token) const {
  auto it = token_to_id_.find(absl::string_view(token.data(), token.size()));
  if (it == token_to_id_.end()) return std::nullopt;
  return it->second;
}

void BpeModel::EncodePiece(std::string_view piece, std::vector<uint32_t>* ids) const {
  if (piece.size() == 1) {
    ids->push_back(byte_id_[static_cast<uint8_t>(piece[0])]);
    return;
  }
  if (options_.ignore_merges) {
    auto it = bytes_to_id_.find(absl::string_view(piece.data(), piece.size()));
    if (it != bytes_to_id_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  if (piece.size() <= 128) {
    MergeSmall(piece, ids);
  } else {
    MergeLarge(piece, ids);
  }
}

// Arrays of symbols and of the rank of each adjacent pair; each merge rescans for the minimum,
// which beats a heap for short pieces.
void BpeModel::MergeSmall(std::string_view piece, std::vector<uint32_t>* ids) const {
  uint32_t sym[128];
  uint32_t rank[128];
  uint32_t merged[128];
  size_t m = piece.size();
  for (size_t k = 0; k < m; ++k) sym[k] = byte_id_[static_cast<uint8_t>(piece[k])];
  for (size_t k = 0; k + 1 < m; ++k) rank[k] = pairs_.Find(sym[k], sym[k + 1], &merged[k]);
  while (m > 1) {
    size_t best = 0;
    uint32_t best_rank = rank[0];
    for (size_t k = 1; k + 1 < m; ++k) {
      if (rank[k] < best_rank) {
        best_rank = rank[k];
        best = k;
      }
    }
    if (best_rank == kNoRank) break;
    sym[best] = merged[best];
    // Remove symbol best+1 and pair best (the pair (best, best+1) is now a symbol).
    std::memmove(&sym[best + 1], &sym[best + 2], (m - best - 2) * sizeof(uint32_t));
    if (best + 2 < m) {
      std::memmove(&rank[best + 1], &rank[best + 2], (m - best - 3) * sizeof(uint32_t));
      std::memmove(&merged[best + 1], &merged[best + 2], (m - best - 3) * sizeof(uint32_t));
    }
    --m;
    if (best > 0) rank[best - 1] = pairs_.Find(sym[best - 1], sym[best], &merged[best - 1]);
    if (best + 1 < m) rank[best] = pairs_.Find(sym[best], sym[best + 1], &merged[best]);
  }
  ids->insert(ids->end(), sym, sym + m);
}

// Linked symbols and a heap of candidate merges ordered by (rank, position); entries made stale
// by earlier merges are recognised and dropped when popped. O(n log n) for very long pieces.
void BpeModel::MergeLarge(std::string_view piece, std::vector<uint32_t>* ids) const {
  const size_t n = piece.size();
  std::vector<uint32_t> sym(n);
  std::vector<int64_t> prev(n), next(n);
  for (size_t k = 0; k < n; ++k) {
    sym[k] = byte_id_[static_cast<uint8_t>(piece[k])];
    prev[k] = static_cast<int64_t>(k) - 1;
    next[k] = k + 1 < n ? static_cast<int64_t>(k + 1) : -1;
  }
  using Entry = std::pair<uint32_t, uint64_t>;  // (rank, position)
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap;
  auto push = [&](size_t pos) {
    if (next[pos] < 0) return;
    uint32_t merged = 0;
    const uint32_t r = pairs_.Find(sym[pos], sym[next[pos]], &merged);
    if (r != kNoRank) heap.emplace(r, pos);
  };
  for (size_t k = 0; k + 1 < n; ++k) push(k);
  std::vector<bool> alive(n, true);
  while (!heap.empty()) {
    const auto [r, pos] = heap.top();
    heap.pop();
    if (!alive[pos] || next[pos] < 0) continue;
    uint32_t merged = 0;
    if (pairs_.Find(sym[pos], sym[next[pos]], &merged) != r) continue;  // stale
    const int64_t right = next[pos];
    sym[pos] = merged;
    alive[right] = false;
    next[pos] = next[right];
    if (next[pos] >= 0) prev[next[pos]] = static_cast<int64_t>(pos);
    if (prev[pos] >= 0) push(static_cast<size_t>(prev[pos]));
    push(pos);
  }
  for (int64_t k = 0; k >= 0; k = next[k]) ids->push_back(sym[k]);
}

}  // namespace qtrain::tokenizer
