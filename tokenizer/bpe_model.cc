#include "tokenizer/bpe_model.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "tokenizer/byte_level.h"

namespace qtrain::tokenizer {

void PairTable::Reserve(size_t count) {
  size_t cap = 16;
  while (cap < count * 3) cap <<= 1;  // load factor at most 1/3
  if (cap <= slots_.size()) return;
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(cap, Slot{});
  mask_ = cap - 1;
  size_ = 0;
  for (const Slot& s : old) {
    if (s.key == kEmpty) continue;
    Insert(static_cast<uint32_t>(s.key >> 32), static_cast<uint32_t>(s.key),
           static_cast<uint32_t>(s.value >> 32), static_cast<uint32_t>(s.value));
  }
}

void PairTable::Insert(uint32_t left, uint32_t right, uint32_t rank, uint32_t merged) {
  if ((size_ + 1) * 3 > slots_.size()) Reserve(size_ + 1);
  const uint64_t key = (static_cast<uint64_t>(left) << 32) | right;
  size_t slot = Hash(key) & mask_;
  while (slots_[slot].key != kEmpty && slots_[slot].key != key) slot = (slot + 1) & mask_;
  if (slots_[slot].key == kEmpty) ++size_;
  slots_[slot].key = key;
  slots_[slot].value = (static_cast<uint64_t>(rank) << 32) | merged;
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
  EncodePieceWith(piece, MergeLoop::kAuto, 0, ids);
}

void BpeModel::EncodePieceWith(std::string_view piece, MergeLoop loop, size_t heap_slack,
                               std::vector<uint32_t>* ids) const {
  if (piece.empty()) return;
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
  if (loop == MergeLoop::kAuto) {
    loop = piece.size() <= kMaxShortPiece ? MergeLoop::kShort : MergeLoop::kLong32;
  }
  if (loop == MergeLoop::kShort && piece.size() <= kMaxShortPiece) {
    MergeSmall(piece, ids);
  } else if (loop != MergeLoop::kLong64 && piece.size() <= std::numeric_limits<uint32_t>::max()) {
    MergeLong<uint32_t>(piece, heap_slack, ids);
  } else {
    MergeLong<uint64_t>(piece, heap_slack, ids);
  }
}

// Arrays of symbols and of the rank of each adjacent pair; each merge rescans for the minimum,
// which beats a heap for short pieces.
void BpeModel::MergeSmall(std::string_view piece, std::vector<uint32_t>* ids) const {
  uint32_t sym[kMaxShortPiece];
  uint32_t rank[kMaxShortPiece];
  uint32_t merged[kMaxShortPiece];
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

namespace {

// Heap keys that order candidate merges by (rank, position), packed into one integer where the
// position fits in 32 bits.
template <typename Pos>
struct MergeKey;

template <>
struct MergeKey<uint32_t> {
  using Type = uint64_t;
  static Type Make(uint32_t rank, uint32_t pos) {
    return (static_cast<uint64_t>(rank) << 32) | pos;
  }
  static uint32_t Rank(Type key) { return static_cast<uint32_t>(key >> 32); }
  static uint32_t Pos(Type key) { return static_cast<uint32_t>(key); }
};

template <>
struct MergeKey<uint64_t> {
  using Type = std::pair<uint32_t, uint64_t>;
  static Type Make(uint32_t rank, uint64_t pos) { return {rank, pos}; }
  static uint32_t Rank(const Type& key) { return key.first; }
  static uint64_t Pos(const Type& key) { return key.second; }
};

// A 4-ary min-heap in a vector whose capacity the caller fixes: shallower than a binary heap,
// with a node's children next to each other in memory, which matters once it holds millions of
// entries. It never grows its vector; the caller sweeps out stale entries (Filter) when full.
template <typename Key>
class QuadHeap {
 public:
  explicit QuadHeap(size_t capacity) { keys_.reserve(capacity); }

  // Adds `key` while building; Heapify() must follow before the other operations.
  void AddUnordered(const Key& key) { keys_.push_back(key); }
  void Heapify() {
    for (size_t i = keys_.size() / 4 + 1; i-- > 0;) {
      if (i < keys_.size()) SiftDown(i, keys_[i]);
    }
  }

  bool empty() const { return keys_.empty(); }
  bool full() const { return keys_.size() == keys_.capacity(); }
  const Key& top() const { return keys_[0]; }
  void Pop() {
    const Key last = keys_.back();
    keys_.pop_back();
    if (!keys_.empty()) SiftDown(0, last);
  }
  // Pop() then Push(key), in one pass.
  void ReplaceTop(const Key& key) { SiftDown(0, key); }
  // Requires !full().
  void Push(const Key& key) {
    keys_.push_back(key);
    SiftUp(keys_.size() - 1, key);
  }
  // Keeps only the keys for which keep(key) is true.
  template <typename Keep>
  void Filter(Keep&& keep) {
    size_t kept = 0;
    for (size_t i = 0; i < keys_.size(); ++i) {
      if (keep(keys_[i])) keys_[kept++] = keys_[i];
    }
    keys_.resize(kept);
    Heapify();
  }

 private:
  void SiftDown(size_t i, const Key key) {
    const size_t n = keys_.size();
    while (true) {
      const size_t first = 4 * i + 1;
      if (first >= n) break;
      const size_t last = std::min(first + 4, n);
      size_t best = first;
      for (size_t c = first + 1; c < last; ++c) {
        if (keys_[c] < keys_[best]) best = c;
      }
      if (!(keys_[best] < key)) break;
      keys_[i] = keys_[best];
      i = best;
    }
    keys_[i] = key;
  }
  void SiftUp(size_t i, const Key key) {
    while (i > 0) {
      const size_t parent = (i - 1) / 4;
      if (!(key < keys_[parent])) break;
      keys_[i] = keys_[parent];
      i = parent;
    }
    keys_[i] = key;
  }

  std::vector<Key> keys_;
};

}  // namespace

// Symbols live at the byte where they start. For a live symbol [s, e): sym[s] is its id and
// next[s] == e (n at the end), so next[s] > s. For a byte k inside a symbol next[k] <= k, and
// the last byte of a symbol of two or more bytes holds the symbol's start there, which finds the
// previous symbol without a third array.
//
// Candidate merges sit in a heap ordered by (rank, position), as in the reference; entries that
// earlier merges made stale are recognised when they come to the top (the symbol at that
// position is gone, or its pair with the next one is not the one of that rank any more: a pair's
// bytes only grow, so a position never gets the same pair back). Each merge adds at most two
// entries; when the heap's fixed room runs out, stale entries are swept out. Every live pair has
// at most one current entry, so a sweep leaves at most n - 1 - (merges so far) entries, and room
// for an eighth of n more keeps the sweeps rare: each is followed by at least n / 8 merges.
//
// Memory per byte: 4 (sym) + sizeof(Pos) (next) + 9/8 of a heap key: 17 bytes for 32-bit
// positions, 30 for 64-bit ones.
template <typename Pos>
void BpeModel::MergeLong(std::string_view piece, size_t heap_slack,
                         std::vector<uint32_t>* ids) const {
  using Key = MergeKey<Pos>;
  using KeyType = typename Key::Type;
  const Pos n = static_cast<Pos>(piece.size());
  std::vector<uint32_t> sym(n);
  std::vector<Pos> next(n);
  for (Pos k = 0; k < n; ++k) {
    sym[k] = byte_id_[static_cast<uint8_t>(piece[k])];
    next[k] = k + 1;
  }
  if (heap_slack == 0) heap_slack = std::max<size_t>(static_cast<size_t>(n / 8), 16);
  QuadHeap<KeyType> heap(static_cast<size_t>(n - 1) + heap_slack);
  uint32_t merged = 0;
  for (Pos k = 0; k + 1 < n; ++k) {
    const uint32_t r = pairs_.Find(sym[k], sym[k + 1], &merged);
    if (r != kNoRank) heap.AddUnordered(Key::Make(r, k));
  }
  heap.Heapify();

  // The rank of the pair that starts at `pos` (kNoRank if `pos` is inside a symbol, is the last
  // symbol, or its pair has no merge).
  auto rank_at = [&](Pos pos, uint32_t* merged_id) {
    const Pos right = next[pos];
    if (right <= pos || right >= n) return kNoRank;
    return pairs_.Find(sym[pos], sym[right], merged_id);
  };
  auto is_current = [&](const KeyType& key) {
    uint32_t unused;
    return rank_at(Key::Pos(key), &unused) == Key::Rank(key);
  };
  while (!heap.empty()) {
    const KeyType top = heap.top();
    const Pos pos = Key::Pos(top);
    if (rank_at(pos, &merged) != Key::Rank(top)) {
      heap.Pop();  // stale
      continue;
    }
    // Merge [pos, right) and [right, end) into [pos, end).
    const Pos right = next[pos];
    const Pos end = next[right];
    sym[pos] = merged;
    next[pos] = end;
    next[right] = pos;    // inside now
    next[end - 1] = pos;  // the last byte knows the start (may be `right` itself)
    // The new pairs (previous symbol, pos) and (pos, end); the first replaces the top entry.
    KeyType fresh[2];
    int count = 0;
    if (pos > 0) {
      const Pos before = next[pos - 1] > pos - 1 ? pos - 1 : next[pos - 1];
      const uint32_t r = rank_at(before, &merged);
      if (r != kNoRank) fresh[count++] = Key::Make(r, before);
    }
    const uint32_t r = rank_at(pos, &merged);
    if (r != kNoRank) fresh[count++] = Key::Make(r, pos);
    if (count == 0) {
      heap.Pop();
      continue;
    }
    heap.ReplaceTop(fresh[0]);
    if (count == 2) {
      if (heap.full()) heap.Filter(is_current);
      heap.Push(fresh[1]);
    }
  }
  for (Pos k = 0; k < n; k = next[k]) ids->push_back(sym[k]);
}

}  // namespace qtrain::tokenizer
