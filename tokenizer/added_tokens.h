// Added (special) tokens: found in the raw text before normalization and never split, like the
// reference's added vocabulary with normalized=false. Among matches the leftmost wins, and among
// matches at the same position the longest.
#ifndef QTRAIN_TOKENIZER_ADDED_TOKENS_H_
#define QTRAIN_TOKENIZER_ADDED_TOKENS_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace qtrain::tokenizer {

struct AddedToken {
  uint32_t id = 0;
  std::string content;
  bool special = true;
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  explicit AddedTokenMatcher(const std::vector<AddedToken>& tokens);

  struct Match {
    size_t begin = std::string_view::npos;  // npos: no match
    size_t length = 0;
    uint32_t id = 0;
  };
  // The first match at or after `from`.
  Match Find(std::string_view text, size_t from) const;
  bool empty() const { return entries_.empty(); }

 private:
  struct Entry {
    std::string content;
    uint32_t id;
  };
  std::vector<Entry> entries_;             // longest first
  std::array<bool, 256> first_byte_ = {};  // bytes that start some token
};

}  // namespace qtrain::tokenizer

#endif  // QTRAIN_TOKENIZER_ADDED_TOKENS_H_
