#include "tokenizer/added_tokens.h"

#include <algorithm>

namespace qtrain::tokenizer {

AddedTokenMatcher::AddedTokenMatcher(const std::vector<AddedToken>& tokens) {
  for (const AddedToken& t : tokens) {
    if (t.content.empty()) continue;
    entries_.push_back({t.content, t.id});
    first_byte_[static_cast<uint8_t>(t.content[0])] = true;
  }
  std::stable_sort(entries_.begin(), entries_.end(), [](const Entry& a, const Entry& b) {
    return a.content.size() > b.content.size();
  });
}

AddedTokenMatcher::Match AddedTokenMatcher::Find(std::string_view text, size_t from) const {
  if (entries_.empty()) return {};
  for (size_t i = from; i < text.size(); ++i) {
    if (!first_byte_[static_cast<uint8_t>(text[i])]) continue;
    const std::string_view rest = text.substr(i);
    for (const Entry& e : entries_) {
      if (rest.starts_with(e.content)) return {i, e.content.size(), e.id};
    }
  }
  return {};
}

}  // namespace qtrain::tokenizer
