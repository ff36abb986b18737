// The BPE model: vocabulary, merge ranks, and the merge loop for one pre-tokenized piece.
//
// Tokens are kept as raw bytes (the byte-level strings of tokenizer.json decoded through
// byte_level.h). A piece starts as one symbol per byte; the adjacent pair with the lowest merge
// rank is merged (the leftmost one on ties) until no pair has a merge, as the reference does.
//
// Cost per piece of n bytes: pieces of up to 128 bytes use fixed arrays on the stack; longer
// ones take O(n log n) time and at most about 17n bytes while merging (30n for pieces of 4 GiB
// or more).
#ifndef QTRAIN_TOKENIZER_BPE_MODEL_H_
#define QTRAIN_TOKENIZER_BPE_MODEL_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace qtrain::tokenizer {

inline constexpr uint32_t kNoRank = UINT32_MAX;

// Open-addressing map (left id, right id) -> (rank, merged id), sized for fast lookups.
class PairTable {
 public:
  void Reserve(size_t count);
  // Later insertions of the same pair replace earlier ones (as the reference's map does).
  void Insert(uint32_t left, uint32_t right, uint32_t rank, uint32_t merged);
  // Rank (kNoRank if the pair has no merge) and the merged id.
  inline uint32_t Find(uint32_t left, uint32_t right, uint32_t* merged) const {
    const uint64_t key = (static_cast<uint64_t>(left) << 32) | right;
    size_t slot = Hash(key) & mask_;
    while (true) {
      const Slot& s = slots_[slot];
      if (s.key == key) {
        *merged = static_cast<uint32_t>(s.value);
        return static_cast<uint32_t>(s.value >> 32);
      }
      if (s.key == kEmpty) return kNoRank;
      slot = (slot + 1) & mask_;
    }
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  static size_t Hash(uint64_t key) {
    return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 20);
  }
  // Key and value side by side: one cache miss per lookup on long pieces, whose pairs are
  // spread over the whole table.
  struct Slot {
    uint64_t key = kEmpty;
    uint64_t value = 0;  // rank << 32 | merged id
  };
  std::vector<Slot> slots_ = std::vector<Slot>(16);
  size_t mask_ = 15;
  size_t size_ = 0;
};

class BpeModel {
 public:
  struct Options {
    // The reference's ignore_merges: a piece that is itself in the vocabulary is one token.
    bool ignore_merges = false;
  };

  // `vocab`: (byte-level token string, id); `merges`: pairs of byte-level strings in rank order.
  // Every merge's parts and their concatenation must be in the vocabulary, and so must all 256
  // byte symbols.
  static absl::StatusOr<BpeModel> Create(
      const std::vector<std::pair<std::string, uint32_t>>& vocab,
      const std::vector<std::pair<std::string, std::string>>& merges, Options options);

  // Appends the ids of one piece (raw bytes, non-empty).
  void EncodePiece(std::string_view piece, std::vector<uint32_t>* ids) const;

  // The merge loops behind EncodePiece, selectable so that tests can check them against each
  // other and against a plain reference on the same pieces (all give the same ids).
  enum class MergeLoop {
    kAuto,    // what EncodePiece uses
    kShort,   // pieces of at most kMaxShortPiece bytes
    kLong32,  // pieces of fewer than 2^32 bytes
    kLong64,  // any piece
  };
  static constexpr size_t kMaxShortPiece = 128;
  // `heap_slack`: spare heap entries of the long loops before stale ones are swept out (0: the
  // default, an eighth of the piece); small values exercise the sweeps.
  void EncodePieceWith(std::string_view piece, MergeLoop loop, size_t heap_slack,
                       std::vector<uint32_t>* ids) const;

  uint32_t byte_id(uint8_t b) const { return byte_id_[b]; }
  // One past the largest id.
  uint32_t id_limit() const { return static_cast<uint32_t>(tokens_.size()); }
  bool HasId(uint32_t id) const { return id < tokens_.size() && present_[id]; }
  // The byte-level string of `id` (must satisfy HasId).
  const std::string& Token(uint32_t id) const { return tokens_[id]; }
  std::optional<uint32_t> TokenToId(std::string_view token) const;
  size_t vocab_count() const { return token_to_id_.size(); }
  size_t merge_count() const { return merges_.size(); }
  const std::vector<std::pair<uint32_t, uint32_t>>& merges() const { return merges_; }
  const Options& options() const { return options_; }

 private:
  void MergeSmall(std::string_view piece, std::vector<uint32_t>* ids) const;
  template <typename Pos>
  void MergeLong(std::string_view piece, size_t heap_slack, std::vector<uint32_t>* ids) const;

  Options options_;
  uint32_t byte_id_[256] = {};
  PairTable pairs_;
  std::vector<std::string> tokens_;  // by id; empty where no token has that id
  std::vector<bool> present_;
  absl::flat_hash_map<std::string, uint32_t> token_to_id_;
  absl::flat_hash_map<std::string, uint32_t> bytes_to_id_;  // only with ignore_merges
  std::vector<std::pair<uint32_t, uint32_t>> merges_;       // (left, right) ids in rank order
};

}  // namespace qtrain::tokenizer

#endif  // QTRAIN_TOKENIZER_BPE_MODEL_H_
