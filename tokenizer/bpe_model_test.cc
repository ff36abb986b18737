// The merge loops of BpeModel against a plain reference (rescan all pairs, merge the lowest rank,
// leftmost on ties) on long pieces of the kinds that stress them, and streaming encode
// (Tokenizer::EncodeTo) against Encode.
#include "tokenizer/bpe_model.h"

#include <algorithm>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "gtest/gtest.h"
#include "tokenizer/test_util.h"
#include "tokenizer/tokenizer.h"

namespace qtrain::tokenizer {
namespace {

using MergeLoop = BpeModel::MergeLoop;

// The reference's merge rule written out directly: O(n^2), obviously right.
std::vector<uint32_t> ReferenceMerge(const BpeModel& model, std::string_view piece) {
  static absl::flat_hash_map<std::pair<uint32_t, uint32_t>, uint32_t>* ranks = [&] {
    auto* m = new absl::flat_hash_map<std::pair<uint32_t, uint32_t>, uint32_t>();
    for (size_t r = 0; r < model.merges().size(); ++r) {
      (*m)[model.merges()[r]] = static_cast<uint32_t>(r);  // later duplicates win
    }
    return m;
  }();
  std::vector<uint32_t> sym;
  for (char c : piece) sym.push_back(model.byte_id(static_cast<uint8_t>(c)));
  while (sym.size() > 1) {
    size_t best = 0;
    uint32_t best_rank = kNoRank;
    for (size_t k = 0; k + 1 < sym.size(); ++k) {
      auto it = ranks->find({sym[k], sym[k + 1]});
      if (it != ranks->end() && it->second < best_rank) {
        best_rank = it->second;
        best = k;
      }
    }
    if (best_rank == kNoRank) break;
    const std::optional<uint32_t> merged =
        model.TokenToId(model.Token(sym[best]) + model.Token(sym[best + 1]));
    sym[best] = *merged;
    sym.erase(sym.begin() + static_cast<ptrdiff_t>(best) + 1);
  }
  return sym;
}

std::vector<uint32_t> Encode(const BpeModel& model, std::string_view piece, MergeLoop loop,
                             size_t slack = 0) {
  std::vector<uint32_t> ids;
  model.EncodePieceWith(piece, loop, slack, &ids);
  return ids;
}

// Every loop (with the default heap room and with almost none, which forces sweeps of stale
// entries all the time) against the reference.
void ExpectAllLoopsMatchReference(const BpeModel& model, const std::string& piece) {
  SCOPED_TRACE(testing::Message() << "piece of " << piece.size() << " bytes starting '"
                                  << piece.substr(0, 24) << "'");
  const std::vector<uint32_t> want = ReferenceMerge(model, piece);
  EXPECT_EQ(Encode(model, piece, MergeLoop::kAuto), want);
  EXPECT_EQ(Encode(model, piece, MergeLoop::kLong32), want);
  EXPECT_EQ(Encode(model, piece, MergeLoop::kLong64), want);
  EXPECT_EQ(Encode(model, piece, MergeLoop::kLong32, 1), want);
  EXPECT_EQ(Encode(model, piece, MergeLoop::kLong64, 1), want);
  if (piece.size() <= BpeModel::kMaxShortPiece) {
    EXPECT_EQ(Encode(model, piece, MergeLoop::kShort), want);
  }
}

std::string Repeat(std::string_view unit, size_t bytes) {
  std::string s;
  while (s.size() < bytes) s.append(unit);
  s.resize(bytes);
  return s;
}

const BpeModel& Qwen2Model() { return Qwen2Tokenizer().model(); }

TEST(BpeMergeTest, SingleCharacterRunsMatchReference) {
  for (size_t n : {2, 3, 5, 16, 17, 127, 128, 129, 130, 255, 1000, 1023, 2049}) {
    for (const char* unit : {"a", "z", " ", "=", "0", "\n"}) {
      ExpectAllLoopsMatchReference(Qwen2Model(), Repeat(unit, n));
    }
  }
}

TEST(BpeMergeTest, RepeatingPatternsMatchReference) {
  // Two-byte patterns of letters and of one multi-byte character, and a few longer ones.
  for (const char* unit : {"ab", "ba", "xy", "é", "д", "中", "abc", "aab", "-=", "😀"}) {
    for (size_t n : {129, 400, 1001, 2000}) {
      ExpectAllLoopsMatchReference(Qwen2Model(), Repeat(unit, n));
    }
  }
}

TEST(BpeMergeTest, RandomLettersMatchReference) {
  std::mt19937 rng(7);
  for (const std::string alphabet : {"abcdefghijklmnopqrstuvwxyz", "ab", "aeiou", "etaoinshr"}) {
    for (size_t n : {130, 700, 1800}) {
      std::string piece;
      std::uniform_int_distribution<size_t> pick(0, alphabet.size() - 1);
      for (size_t k = 0; k < n; ++k) piece.push_back(alphabet[pick(rng)]);
      ExpectAllLoopsMatchReference(Qwen2Model(), piece);
    }
  }
}

TEST(BpeMergeTest, RandomBytesMatchReference) {
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> byte(0, 255);
  for (size_t n : {2, 40, 128, 129, 1500}) {
    std::string piece;
    for (size_t k = 0; k < n; ++k) piece.push_back(static_cast<char>(byte(rng)));
    ExpectAllLoopsMatchReference(Qwen2Model(), piece);
  }
}

TEST(BpeMergeTest, ShortPiecesAgreeWithLongLoops) {
  std::mt19937 rng(3);
  const std::string alphabet = "aabbcdeeeilmnorst ";
  std::uniform_int_distribution<size_t> pick(0, alphabet.size() - 1);
  for (int trial = 0; trial < 300; ++trial) {
    std::string piece;
    const size_t n = 2 + trial % BpeModel::kMaxShortPiece;
    for (size_t k = 0; k < n; ++k) piece.push_back(alphabet[pick(rng)]);
    ExpectAllLoopsMatchReference(Qwen2Model(), piece);
  }
}

// Text with many pieces, special tokens, a long piece and non-ASCII, well over kStreamIds ids.
std::string LongMixedText() {
  std::string text;
  for (int k = 0; text.size() < 600000; ++k) {
    text += "Hello world, ça va? 12 + 34 = 46.<|endoftext|>";
    if (k % 997 == 0) {
      text.append(3000, 'q');
      text += "\n\n";
    }
  }
  return text;
}

TEST(EncodeToTest, StreamsTheIdsOfEncodeInBoundedSpans) {
  const Tokenizer& tok = Qwen2Tokenizer();
  const std::string text = LongMixedText();
  absl::StatusOr<std::vector<uint32_t>> want = tok.Encode(text);
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_GT(want->size(), 3 * Tokenizer::kStreamIds);
  std::vector<uint32_t> got;
  size_t spans = 0, largest = 0;
  ASSERT_TRUE(tok.EncodeTo(text,
                           [&](std::span<const uint32_t> ids) {
                             got.insert(got.end(), ids.begin(), ids.end());
                             ++spans;
                             largest = std::max(largest, ids.size());
                             return absl::OkStatus();
                           })
                  .ok());
  EXPECT_EQ(got, *want);
  EXPECT_GE(spans, 3u);
  // At most one piece (here a few thousand ids at most) beyond the span size.
  EXPECT_LT(largest, Tokenizer::kStreamIds + 4096);
}

TEST(EncodeToTest, StopsAtTheSinksErrorAndReportsBadText) {
  const Tokenizer& tok = Qwen2Tokenizer();
  const std::string text = LongMixedText();
  int calls = 0;
  const absl::Status s = tok.EncodeTo(text, [&](std::span<const uint32_t>) {
    ++calls;
    return absl::ResourceExhaustedError("disk full");
  });
  EXPECT_EQ(s, absl::ResourceExhaustedError("disk full"));
  EXPECT_EQ(calls, 1);

  std::string bad = text;
  bad[400000] = '\xff';
  std::vector<uint32_t> ids;
  const absl::Status want = tok.Encode(bad, &ids);
  ASSERT_FALSE(want.ok());
  const absl::Status got =
      tok.EncodeTo(bad, [](std::span<const uint32_t>) { return absl::OkStatus(); });
  EXPECT_EQ(got, want);
  EXPECT_EQ(tok.EncodeTo("", [](std::span<const uint32_t>) { return absl::UnknownError("x"); }),
            absl::OkStatus());
}

}  // namespace
}  // namespace qtrain::tokenizer
