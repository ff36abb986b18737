// The code point classes agree with the reference's regex engine for every code point, and the
// NFC fast path agrees with full normalization.
#include "tokenizer/unicode_class.h"

#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/test_util.h"
#include "tokenizer/utf8.h"
#include "utf8proc.h"

namespace qtrain::tokenizer {
namespace {

TEST(UnicodeClassTest, MatchesReferenceForEveryCodePoint) {
  std::vector<CharClass> expected(0x110000, kOther);
  std::ifstream in(TestDataPath("unicode_classes.txt"));
  ASSERT_TRUE(in.good());
  std::string line;
  int ranges = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string cls;
    uint32_t first, last;
    fields >> cls >> std::hex >> first >> last;
    const CharClass c = cls == "L" ? kLetter : cls == "N" ? kNumber : kSpace;
    for (uint32_t cp = first; cp <= last; ++cp) expected[cp] = c;
    ++ranges;
  }
  EXPECT_GT(ranges, 500);
  int mismatches = 0;
  for (uint32_t cp = 0; cp < 0x110000; ++cp) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    if (ClassOf(cp) != expected[cp] && ++mismatches <= 20) {
      ADD_FAILURE() << "U+" << std::hex << cp << ": class " << int(ClassOf(cp)) << ", reference "
                    << int(expected[cp]);
    }
  }
  EXPECT_EQ(mismatches, 0);
}

// Where utf8proc's Unicode version has a code point assigned, its general category gives the
// same class as the reference (the table only differs on later additions).
TEST(UnicodeClassTest, AgreesWithUtf8procCategoriesOnAssignedCodePoints) {
  int compared = 0;
  for (uint32_t cp = 0; cp < 0x110000; ++cp) {
    const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
    if (cat == UTF8PROC_CATEGORY_CN || cat == UTF8PROC_CATEGORY_CS) continue;
    CharClass expected = kOther;
    if (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) expected = kLetter;
    if (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO) expected = kNumber;
    if ((cat >= UTF8PROC_CATEGORY_ZS && cat <= UTF8PROC_CATEGORY_ZP) ||
        (cp >= 0x09 && cp <= 0x0D) || cp == 0x85) {
      expected = kSpace;
    }
    ASSERT_EQ(ClassOf(cp), expected) << "U+" << std::hex << cp;
    ++compared;
  }
  EXPECT_GT(compared, 280000);
}

// Marks that utf8proc gives a combining class but the reference's NFC does not move are inert.
TEST(UnicodeClassTest, InertMarksAreExactlyThoseTheReferenceDoesNotKnow) {
  std::vector<bool> known(0x110000, false);
  std::ifstream in(TestDataPath("nfc_reference_marks.txt"));
  ASSERT_TRUE(in.good());
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    uint32_t first, last;
    fields >> std::hex >> first >> last;
    for (uint32_t cp = first; cp <= last; ++cp) known[cp] = true;
  }
  int inert = 0;
  for (uint32_t cp = 0x80; cp < 0x110000; ++cp) {
    if (utf8proc_get_property(static_cast<utf8proc_int32_t>(cp))->combining_class == 0) continue;
    const bool is_inert = (CodePointProps(cp) & kNfcInert) != 0;
    EXPECT_EQ(is_inert, !known[cp]) << "U+" << std::hex << cp;
    inert += is_inert;
  }
  EXPECT_GT(inert, 50);
}

TEST(UnicodeClassTest, AsciiShortcutAgreesWithTable) {
  for (uint32_t cp = 0; cp < 128; ++cp) {
    EXPECT_EQ(internal::Cursor::kAsciiClass[cp], ClassOf(cp)) << cp;
    EXPECT_EQ(CodePointProps(cp) & kNfcUnsafe, 0) << cp;
  }
}

TEST(NormalizerTest, FastPathEqualsFullNfcOnRandomMixtures) {
  // Starters, combining marks of several classes, Hangul jamo and syllables, singletons,
  // composition exclusions and characters that compose across a boundary.
  const std::vector<uint32_t> pool = {
      'a',    'e',    'A',    'O',    'u',    ' ',    'x',     0x00C4, 0x00E9, 0x0300, 0x0301,
      0x0308, 0x0316, 0x0323, 0x0328, 0x0344, 0x0345, 0x093C,  0x0915, 0x0958, 0x1100, 0x1161,
      0x11A8, 0xAC00, 0xAC01, 0x212B, 0x2126, 0xF900, 0x1E9B,  0x0F73, 0x0F71, 0x0F72, 0x1D15E,
      0x3099, 0x304B, 0x0CC6, 0x0CC2, 0x0CD5, 0x4E2D, 0x1F600, 0x05B0, 0x0591, 0x0E38};
  std::mt19937 rng(7);
  for (int iter = 0; iter < 20000; ++iter) {
    std::string text;
    const int len = 1 + static_cast<int>(rng() % 12);
    for (int k = 0; k < len; ++k) AppendUtf8(pool[rng() % pool.size()], &text);
    std::string scratch;
    absl::StatusOr<std::string_view> got = NormalizeNfc(text, &scratch);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(std::string(*got), Nfc(text)) << "iteration " << iter;
  }
}

TEST(NormalizerTest, LeavesNfcTextInPlaceAndComposes) {
  std::string scratch;
  const std::string nfc = "caf\xC3\xA9 \xE4\xB8\xAD";  // "café 中"
  absl::StatusOr<std::string_view> same = NormalizeNfc(nfc, &scratch);
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same->data(), nfc.data());  // no copy
  absl::StatusOr<std::string_view> composed = NormalizeNfc("cafe\xCC\x81!", &scratch);
  ASSERT_TRUE(composed.ok());
  EXPECT_EQ(*composed, "caf\xC3\xA9!");
}

TEST(NormalizerTest, RejectsInvalidUtf8WithOffset) {
  std::string scratch;
  absl::StatusOr<std::string_view> r = NormalizeNfc("abc\xC3(", &scratch);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("byte offset 3"), std::string::npos) << r.status();
}

TEST(Utf8Test, WellFormednessFollowsTheStandard) {
  EXPECT_EQ(WellFormedPrefixLength("a"), 1u);
  EXPECT_EQ(WellFormedPrefixLength("\xC3\xA9"), 2u);
  EXPECT_EQ(WellFormedPrefixLength("\xF0\x9F\x98\x80"), 4u);
  EXPECT_EQ(WellFormedPrefixLength("\xC0\x80"), 0u);          // overlong
  EXPECT_EQ(WellFormedPrefixLength("\xE0\x80\x80"), 0u);      // overlong
  EXPECT_EQ(WellFormedPrefixLength("\xED\xA0\x80"), 0u);      // surrogate
  EXPECT_EQ(WellFormedPrefixLength("\xF4\x90\x80\x80"), 0u);  // above U+10FFFF
  EXPECT_EQ(WellFormedPrefixLength("\xE4\xBD"), 0u);          // truncated
  EXPECT_EQ(WellFormedPrefixLength("\xFF"), 0u);
}

TEST(Utf8Test, LossyReplacesMaximalSubparts) {
  // Same bytes and answer as Python's bytes.decode("utf-8", "replace").
  const std::string bytes =
      "\xE4\xBD"
      "A"
      "\xF0\x9F\x98"
      "\xE4\xBD\xA0"
      "\xFF"
      "\xC0\x80"
      "\xED\xA0\x80";
  EXPECT_EQ(ToValidUtf8Lossy(bytes),
            "\xEF\xBF\xBD"
            "A"
            "\xEF\xBF\xBD"
            "\xE4\xBD\xA0"
            "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
}

}  // namespace
}  // namespace qtrain::tokenizer
