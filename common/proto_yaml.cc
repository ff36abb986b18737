#include "common/proto_yaml.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <set>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/text_position.h"
#include "yaml-cpp/depthguard.h"
#include "yaml-cpp/eventhandler.h"
#include "yaml-cpp/yaml.h"

namespace qtrain {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::EnumDescriptor;
using google::protobuf::EnumValueDescriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

class Converter {
 public:
  explicit Converter(std::string source) : source_(std::move(source)) {}

  absl::Status FillMessage(const YAML::Node& node, const std::string& path, Message* message);

 private:
  absl::Status Error(const YAML::Node& node, const std::string& path,
                     absl::string_view what) const {
    std::string where = source_;
    if (node.IsDefined() && !node.Mark().is_null()) {
      absl::StrAppend(&where, ":", node.Mark().line + 1, ":", node.Mark().column + 1);
    }
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": ", path.empty() ? "(top level)" : path, ": ", what));
  }

  static std::string Describe(const YAML::Node& node) {
    switch (node.Type()) {
      case YAML::NodeType::Map:
        return "a mapping";
      case YAML::NodeType::Sequence:
        return "a sequence";
      case YAML::NodeType::Null:
        return "null";
      case YAML::NodeType::Scalar: {
        std::string text = node.Scalar();
        if (text.size() > 40) text = text.substr(0, 40) + "...";
        return absl::StrCat("\"", absl::CEscape(text), "\"");
      }
      default:
        return "nothing";
    }
  }

  // A scalar written with quotes is a string; a plain one may be a number or a bool.
  static bool IsQuoted(const YAML::Node& node) { return node.Tag() == "!"; }
  // A scalar with an explicit tag (!!str 7, !custom x): a plain one has the tag "?".
  static bool HasExplicitTag(const YAML::Node& node) {
    return node.Tag() != "?" && node.Tag() != "!" && !node.Tag().empty();
  }
  // Refuses quoted values and explicit tags where a number, bool or enum name is expected.
  absl::Status CheckPlain(const YAML::Node& node, const std::string& path,
                          absl::string_view expected) const;
  // Refuses plain values that YAML reads as a number, bool or null where text is expected.
  absl::Status CheckString(const YAML::Node& node, const std::string& path) const;

  absl::Status SetScalar(const YAML::Node& node, const std::string& path, Message* message,
                         const FieldDescriptor* field);
  absl::Status SetMap(const YAML::Node& node, const std::string& path, Message* message,
                      const FieldDescriptor* field);

  std::string source_;
};

std::string KnownFields(const Descriptor* descriptor) {
  std::vector<std::string> names;
  for (int i = 0; i < descriptor->field_count(); ++i) names.push_back(descriptor->field(i)->name());
  return absl::StrJoin(names, ", ");
}

// "!!str" for the core schema's tags, the tag itself otherwise.
std::string ShortTag(const std::string& tag) {
  constexpr absl::string_view kCore = "tag:yaml.org,2002:";
  if (absl::StartsWith(tag, kCore)) return absl::StrCat("!!", tag.substr(kCore.size()));
  return tag;
}

// A decimal number as YAML 1.2 and JSON write it: [-+] digits [. digits] [e [-+] digits], or
// [-+] . digits [e ...]. No hex, octal, binary, underscores or leading zeros ("010" is octal
// in YAML 1.1): those are refused rather than read one way or the other.
bool IsDecimalNumber(absl::string_view text, bool* integral_form) {
  size_t i = 0;
  const size_t n = text.size();
  if (i < n && (text[i] == '+' || text[i] == '-')) ++i;
  const size_t int_begin = i;
  while (i < n && absl::ascii_isdigit(text[i])) ++i;
  const size_t int_digits = i - int_begin;
  if (int_digits > 1 && text[int_begin] == '0') return false;
  size_t frac_digits = 0;
  bool has_point = false;
  if (i < n && text[i] == '.') {
    has_point = true;
    ++i;
    const size_t frac_begin = i;
    while (i < n && absl::ascii_isdigit(text[i])) ++i;
    frac_digits = i - frac_begin;
  }
  if (int_digits == 0 && frac_digits == 0) return false;
  bool has_exponent = false;
  if (i < n && (text[i] == 'e' || text[i] == 'E')) {
    has_exponent = true;
    ++i;
    if (i < n && (text[i] == '+' || text[i] == '-')) ++i;
    const size_t exp_begin = i;
    while (i < n && absl::ascii_isdigit(text[i])) ++i;
    if (i == exp_begin) return false;
  }
  *integral_form = !has_point && !has_exponent;
  return i == n;
}

// What YAML's core schema would make of a plain scalar that is not text, for messages; empty
// when it is text.
std::string NonStringReading(const std::string& text) {
  static const std::set<std::string>* const kBools =
      new std::set<std::string>{"true", "false", "yes", "no", "on", "off", "y", "n"};
  static const std::set<std::string>* const kSpecial =
      new std::set<std::string>{".inf", "+.inf", "-.inf", ".nan", "inf", "-inf", "+inf", "nan"};
  const std::string lower = absl::AsciiStrToLower(text);
  bool integral = false;
  if (lower.empty() || lower == "~" || lower == "null") return "null";
  if (kBools->count(lower)) return absl::StrCat("the bool ", text);
  // Digits with leading zeros or underscores (010, 1_000) are numbers to YAML 1.1 readers.
  const bool digits = !lower.empty() && absl::ascii_isdigit(lower.back()) &&
                      lower.find_first_not_of("+-0123456789_") == std::string::npos;
  if (kSpecial->count(lower) || digits || IsDecimalNumber(lower, &integral) ||
      absl::StartsWith(lower, "0x") || absl::StartsWith(lower, "0o") ||
      absl::StartsWith(lower, "0b")) {
    return absl::StrCat("the number ", text);
  }
  return "";
}

enum class NumberError { kNone, kNotANumber, kNotFinite, kOverflow, kUnderflow, kSubnormal };

// Parses a YAML/JSON integer, also accepting exponent form with an integral value (4e6).
NumberError ParseInteger(const std::string& text, long double* value) {
  bool integral_form = false;
  if (!IsDecimalNumber(text, &integral_form)) return NumberError::kNotANumber;
  const char* begin = text.c_str();
  char* end = nullptr;
  if (integral_form) {
    errno = 0;
    const long long as_int = std::strtoll(begin, &end, 10);
    if (errno == 0 && *end == '\0') {
      *value = static_cast<long double>(as_int);
      return NumberError::kNone;
    }
    errno = 0;
    const unsigned long long as_uint = std::strtoull(begin, &end, 10);
    if (errno == 0 && *end == '\0' && text[0] != '-') {
      *value = static_cast<long double>(as_uint);
      return NumberError::kNone;
    }
  }
  errno = 0;
  const long double as_float = std::strtold(begin, &end);
  if (*end != '\0') return NumberError::kNotANumber;
  if (errno == ERANGE) {
    return std::isfinite(as_float) ? NumberError::kNotANumber : NumberError::kOverflow;
  }
  if (as_float != std::floor(as_float)) return NumberError::kNotANumber;  // has a fraction
  *value = as_float;
  return NumberError::kNone;
}

NumberError ParseDouble(const std::string& text, bool is_float, double* value) {
  static const std::set<std::string>* const kNonFinite = new std::set<std::string>{
      ".inf", "+.inf", "-.inf", ".nan", "inf", "-inf", "+inf", "nan", "infinity", "-infinity"};
  if (kNonFinite->count(absl::AsciiStrToLower(text))) return NumberError::kNotFinite;
  bool integral_form = false;
  if (!IsDecimalNumber(text, &integral_form)) return NumberError::kNotANumber;
  char* end = nullptr;
  errno = 0;
  const long double wide = std::strtold(text.c_str(), &end);
  if (*end != '\0') return NumberError::kNotANumber;
  const long double largest =
      is_float ? std::numeric_limits<float>::max() : std::numeric_limits<double>::max();
  const long double smallest =
      is_float ? std::numeric_limits<float>::min() : std::numeric_limits<double>::min();
  if (!std::isfinite(wide) || std::fabs(wide) > largest) return NumberError::kOverflow;
  if (errno == ERANGE && wide == 0) return NumberError::kUnderflow;  // below even long double
  if (wide != 0 && std::fabs(wide) < smallest) {
    const bool rounds_to_zero =
        is_float ? static_cast<float>(wide) == 0 : static_cast<double>(wide) == 0;
    return rounds_to_zero ? NumberError::kUnderflow : NumberError::kSubnormal;
  }
  *value = static_cast<double>(wide);
  return NumberError::kNone;
}

const EnumValueDescriptor* FindEnumValue(const EnumDescriptor* type, const std::string& text) {
  const std::string upper = absl::AsciiStrToUpper(text);
  if (const EnumValueDescriptor* v = type->FindValueByName(upper)) return v;
  // The values share a prefix derived from the enum name: Precision -> PRECISION_.
  std::string prefix;
  for (char c : type->name()) {
    if (absl::ascii_isupper(c) && !prefix.empty()) prefix.push_back('_');
    prefix.push_back(absl::ascii_toupper(c));
  }
  prefix.push_back('_');
  return type->FindValueByName(prefix + upper);
}

std::string EnumChoices(const EnumDescriptor* type) {
  std::vector<std::string> names;
  for (int i = 0; i < type->value_count(); ++i) {
    if (type->value(i)->number() != 0) names.push_back(type->value(i)->name());
  }
  return absl::StrJoin(names, ", ");
}

absl::Status Converter::FillMessage(const YAML::Node& node, const std::string& path,
                                    Message* message) {
  if (node.IsNull()) return absl::OkStatus();
  if (!node.IsMap())
    return Error(node, path, absl::StrCat("expected a mapping, got ", Describe(node)));
  const Descriptor* descriptor = message->GetDescriptor();
  const Reflection* reflection = message->GetReflection();
  std::set<std::string> seen;
  for (const auto& entry : node) {
    if (!entry.first.IsScalar()) return Error(entry.first, path, "keys must be plain names");
    const std::string key = entry.first.Scalar();
    const std::string field_path = path.empty() ? key : absl::StrCat(path, ".", key);
    if (!seen.insert(key).second) return Error(entry.first, field_path, "duplicate key");
    const FieldDescriptor* field = descriptor->FindFieldByName(key);
    if (field == nullptr) {
      return Error(entry.first, field_path,
                   absl::StrCat("unknown field (known: ", KnownFields(descriptor), ")"));
    }
    const YAML::Node& value = entry.second;
    if (value.IsNull()) continue;
    if (const auto* oneof = field->real_containing_oneof()) {
      if (const FieldDescriptor* other = reflection->GetOneofFieldDescriptor(*message, oneof)) {
        return Error(entry.first, field_path,
                     absl::StrCat("conflicts with '", other->name(), "': set only one of ",
                                  oneof->name(), " (", KnownFields(descriptor), ")"));
      }
    }
    if (field->is_map()) {
      QTRAIN_RETURN_IF_ERROR(SetMap(value, field_path, message, field));
    } else if (field->is_repeated()) {
      if (!value.IsSequence()) {
        return Error(value, field_path, absl::StrCat("expected a sequence, got ", Describe(value)));
      }
      for (size_t i = 0; i < value.size(); ++i) {
        const std::string item_path = absl::StrCat(field_path, "[", i, "]");
        if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
          QTRAIN_RETURN_IF_ERROR(
              FillMessage(value[i], item_path, reflection->AddMessage(message, field)));
        } else {
          QTRAIN_RETURN_IF_ERROR(SetScalar(value[i], item_path, message, field));
        }
      }
    } else if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      QTRAIN_RETURN_IF_ERROR(
          FillMessage(value, field_path, reflection->MutableMessage(message, field)));
    } else {
      QTRAIN_RETURN_IF_ERROR(SetScalar(value, field_path, message, field));
    }
  }
  return absl::OkStatus();
}

absl::Status Converter::CheckPlain(const YAML::Node& node, const std::string& path,
                                   absl::string_view expected) const {
  if (IsQuoted(node)) {
    return Error(node, path,
                 absl::StrCat("expected ", expected, ", got the string ", Describe(node)));
  }
  if (HasExplicitTag(node)) {
    return Error(node, path,
                 absl::StrCat("expected ", expected, ", got ", Describe(node), " tagged ",
                              ShortTag(node.Tag()), " (tags are not accepted; drop it)"));
  }
  return absl::OkStatus();
}

absl::Status Converter::CheckString(const YAML::Node& node, const std::string& path) const {
  if (IsQuoted(node) || node.Tag() == "tag:yaml.org,2002:str") return absl::OkStatus();
  if (HasExplicitTag(node)) {
    return Error(node, path,
                 absl::StrCat("expected a string, got ", Describe(node), " tagged ",
                              ShortTag(node.Tag()), " (tags are not accepted; drop it)"));
  }
  const std::string reading = NonStringReading(node.Scalar());
  if (!reading.empty()) {
    return Error(node, path,
                 absl::StrCat("expected a string, got ", reading, " (quote it to mean the text: \"",
                              absl::CEscape(node.Scalar()), "\")"));
  }
  return absl::OkStatus();
}

absl::Status Converter::SetMap(const YAML::Node& node, const std::string& path, Message* message,
                               const FieldDescriptor* field) {
  if (!node.IsMap())
    return Error(node, path, absl::StrCat("expected a mapping, got ", Describe(node)));
  const FieldDescriptor* key_field = field->message_type()->map_key();
  const FieldDescriptor* value_field = field->message_type()->map_value();
  if (key_field->type() != FieldDescriptor::TYPE_STRING ||
      value_field->type() != FieldDescriptor::TYPE_STRING) {
    return Error(node, path, "only map<string, string> fields are supported");
  }
  std::set<std::string> seen;
  for (const auto& entry : node) {
    if (!entry.first.IsScalar() || !entry.second.IsScalar()) {
      return Error(entry.first, path, "expected a mapping of strings to strings");
    }
    const std::string key = entry.first.Scalar();
    const std::string item_path = absl::StrCat(path, ".", key);
    if (!seen.insert(key).second) return Error(entry.first, item_path, "duplicate key");
    QTRAIN_RETURN_IF_ERROR(CheckString(entry.first, item_path));
    QTRAIN_RETURN_IF_ERROR(CheckString(entry.second, item_path));
    Message* item = message->GetReflection()->AddMessage(message, field);
    item->GetReflection()->SetString(item, key_field, key);
    item->GetReflection()->SetString(item, value_field, entry.second.Scalar());
  }
  return absl::OkStatus();
}

absl::Status Converter::SetScalar(const YAML::Node& node, const std::string& path, Message* message,
                                  const FieldDescriptor* field) {
  if (!node.IsScalar()) {
    return Error(node, path, absl::StrCat("expected a single value, got ", Describe(node)));
  }
  const Reflection* r = message->GetReflection();
  const bool repeated = field->is_repeated();
  const std::string& text = node.Scalar();
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_STRING:
      QTRAIN_RETURN_IF_ERROR(CheckString(node, path));
      repeated ? r->AddString(message, field, text) : r->SetString(message, field, text);
      return absl::OkStatus();
    case FieldDescriptor::CPPTYPE_BOOL: {
      QTRAIN_RETURN_IF_ERROR(CheckPlain(node, path, "true or false"));
      const std::string lower = absl::AsciiStrToLower(text);
      if (lower != "true" && lower != "false") {
        return Error(node, path, absl::StrCat("expected true or false, got ", Describe(node)));
      }
      repeated ? r->AddBool(message, field, lower == "true")
               : r->SetBool(message, field, lower == "true");
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_ENUM: {
      // Quoted names are fine: JSON writes enums as strings.
      if (HasExplicitTag(node) && node.Tag() != "tag:yaml.org,2002:str") {
        QTRAIN_RETURN_IF_ERROR(CheckPlain(node, path, "a value name"));
      }
      const EnumValueDescriptor* value = FindEnumValue(field->enum_type(), text);
      if (value == nullptr || value->number() == 0) {
        return Error(node, path,
                     absl::StrCat("unknown value ", Describe(node), " (one of ",
                                  EnumChoices(field->enum_type()), ")"));
      }
      repeated ? r->AddEnum(message, field, value) : r->SetEnum(message, field, value);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_DOUBLE:
    case FieldDescriptor::CPPTYPE_FLOAT: {
      QTRAIN_RETURN_IF_ERROR(CheckPlain(node, path, "a number"));
      const bool is_float = field->cpp_type() == FieldDescriptor::CPPTYPE_FLOAT;
      double value = 0;
      const absl::string_view type = is_float ? "float" : "double";
      const NumberError parsed = ParseDouble(text, is_float, &value);
      switch (parsed) {
        case NumberError::kNone:
          break;
        case NumberError::kOverflow:
          return Error(node, path,
                       absl::StrCat("value ", text, " is out of range: the largest ", type, " is ",
                                    is_float ? std::numeric_limits<float>::max()
                                             : std::numeric_limits<double>::max()));
        case NumberError::kSubnormal:
        case NumberError::kUnderflow:
          return Error(
              node, path,
              absl::StrCat(
                  "value ", text, " is too small: it is ",
                  parsed == NumberError::kSubnormal ? "subnormal" : "rounded to 0",
                  " (the smallest normal ", type, " is ",
                  is_float ? std::numeric_limits<float>::min() : std::numeric_limits<double>::min(),
                  "; write 0 for zero)"));
        default:
          return Error(node, path, absl::StrCat("expected a finite number, got ", Describe(node)));
      }
      if (is_float) {
        repeated ? r->AddFloat(message, field, static_cast<float>(value))
                 : r->SetFloat(message, field, static_cast<float>(value));
      } else {
        repeated ? r->AddDouble(message, field, value) : r->SetDouble(message, field, value);
      }
      return absl::OkStatus();
    }
    default:
      break;
  }
  // Integers.
  QTRAIN_RETURN_IF_ERROR(CheckPlain(node, path, "an integer"));
  long double value = 0;
  const NumberError parsed = ParseInteger(text, &value);
  if (parsed == NumberError::kNotANumber) {
    const std::string lower = absl::AsciiStrToLower(text);
    const bool other_base = absl::StrContains(lower, "0x") || absl::StrContains(lower, "0o") ||
                            absl::StrContains(lower, "0b") ||
                            (text.size() > 1 && text[0] == '0' && absl::ascii_isdigit(text[1]));
    return Error(
        node, path,
        absl::StrCat("expected an integer, got ", Describe(node),
                     other_base ? " (write integers in decimal, without leading zeros)" : ""));
  }
  long double lo = 0, hi = 0;
  std::string range;
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32:
      lo = std::numeric_limits<int32_t>::min(), hi = std::numeric_limits<int32_t>::max();
      range = absl::StrCat("[", std::numeric_limits<int32_t>::min(), ", ",
                           std::numeric_limits<int32_t>::max(), "]");
      break;
    case FieldDescriptor::CPPTYPE_INT64:
      lo = static_cast<long double>(std::numeric_limits<int64_t>::min());
      hi = static_cast<long double>(std::numeric_limits<int64_t>::max());
      range = absl::StrCat("[", std::numeric_limits<int64_t>::min(), ", ",
                           std::numeric_limits<int64_t>::max(), "]");
      break;
    case FieldDescriptor::CPPTYPE_UINT32:
      hi = std::numeric_limits<uint32_t>::max();
      range = absl::StrCat("[0, ", std::numeric_limits<uint32_t>::max(), "]");
      break;
    case FieldDescriptor::CPPTYPE_UINT64:
      hi = static_cast<long double>(std::numeric_limits<uint64_t>::max());
      range = absl::StrCat("[0, ", std::numeric_limits<uint64_t>::max(), "]");
      break;
    default:
      return Error(node, path, "unsupported field type");
  }
  if (parsed == NumberError::kOverflow || value < lo || value > hi) {
    return Error(node, path, absl::StrCat("value ", text, " is out of range ", range));
  }
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32:
      repeated ? r->AddInt32(message, field, static_cast<int32_t>(value))
               : r->SetInt32(message, field, static_cast<int32_t>(value));
      break;
    case FieldDescriptor::CPPTYPE_INT64:
      repeated ? r->AddInt64(message, field, static_cast<int64_t>(value))
               : r->SetInt64(message, field, static_cast<int64_t>(value));
      break;
    case FieldDescriptor::CPPTYPE_UINT32:
      repeated ? r->AddUInt32(message, field, static_cast<uint32_t>(value))
               : r->SetUInt32(message, field, static_cast<uint32_t>(value));
      break;
    default:
      repeated ? r->AddUInt64(message, field, static_cast<uint64_t>(value))
               : r->SetUInt64(message, field, static_cast<uint64_t>(value));
      break;
  }
  return absl::OkStatus();
}

// "source:line:column" when the mark is known.
std::string WhereAt(const std::string& source, const YAML::Mark& mark) {
  if (mark.is_null()) return source;
  return absl::StrCat(source, ":", mark.line + 1, ":", mark.column + 1);
}

// Specs are UTF-8. UTF-16 and UTF-32 files (with or without a byte-order mark) would otherwise
// fail with a confusing syntax error, or be read with their NUL bytes.
absl::Status CheckEncoding(std::string_view text, const std::string& source) {
  auto starts = [&](std::string_view prefix) { return text.substr(0, prefix.size()) == prefix; };
  using namespace std::string_view_literals;
  const char* encoding = nullptr;
  if (starts("\xFF\xFE\x00\x00"sv)) {
    encoding = "UTF-32 (little-endian, with a byte-order mark)";
  } else if (starts("\x00\x00\xFE\xFF"sv)) {
    encoding = "UTF-32 (big-endian, with a byte-order mark)";
  } else if (starts("\xFF\xFE"sv)) {
    encoding = "UTF-16 (little-endian, with a byte-order mark)";
  } else if (starts("\xFE\xFF"sv)) {
    encoding = "UTF-16 (big-endian, with a byte-order mark)";
  }
  if (encoding != nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": the file is ", encoding, "; a spec must be UTF-8"));
  }
  const size_t nul = text.find('\0');
  if (nul != std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ":", LineColumn(text, nul),
        ": contains a NUL byte; a spec must be UTF-8 text (is the file UTF-16 or UTF-32?)"));
  }
  return absl::OkStatus();
}

// Bounds the tree before it is converted: nesting depth, and the number of values an alias
// may make the converter visit (an alias repeats a whole subtree).
absl::Status CheckShape(const YAML::Node& root, const std::string& source) {
  constexpr int64_t kMaxValues = int64_t{1} << 20;
  std::vector<std::pair<YAML::Node, int>> stack = {{root, 1}};
  int64_t visited = 0;
  while (!stack.empty()) {
    auto [node, depth] = stack.back();
    stack.pop_back();
    if (++visited > kMaxValues) {
      return absl::InvalidArgumentError(absl::StrCat(WhereAt(source, node.Mark()), ": more than ",
                                                     kMaxValues,
                                                     " values (counting every use of an alias)"));
    }
    if (!node.IsMap() && !node.IsSequence()) continue;
    if (depth > kMaxYamlNestingDepth) {
      return absl::InvalidArgumentError(absl::StrCat(
          WhereAt(source, node.Mark()), ": nested deeper than ", kMaxYamlNestingDepth, " levels"));
    }
    for (auto it = node.begin(); it != node.end(); ++it) {
      if (node.IsMap()) {
        stack.emplace_back(it->first, depth + 1);
        stack.emplace_back(it->second, depth + 1);
      } else {
        stack.emplace_back(*it, depth + 1);
      }
    }
  }
  return absl::OkStatus();
}

// Records where each document starts, and nothing else.
class DocumentStarts : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override { starts.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}

  std::vector<YAML::Mark> starts;
};

// A spec is one YAML document. The documents are counted with a bounded loop rather than with
// YAML::LoadAll: after some malformed flow collections (`{ 0000, "a": 1}, {...`) yaml-cpp reports
// an endless run of documents, and LoadAll then grows without bound (a 567-byte input took
// 14 GB). May throw YAML::Exception.
absl::Status CheckSingleDocument(std::string_view text, const std::string& source_name) {
  std::istringstream stream{std::string(text)};
  YAML::Parser parser(stream);
  DocumentStarts handler;
  while (handler.starts.size() < 2 && parser.HandleNextDocument(handler)) {
  }
  if (handler.starts.size() > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(WhereAt(source_name, handler.starts[1]),
                     ": a second YAML document starts here (after --- or the end of the "
                     "first); a spec must be a single document"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ParseYamlToMessage(std::string_view text, std::string_view source, Message* message) {
  message->Clear();
  const std::string source_name(source);
  QTRAIN_RETURN_IF_ERROR(CheckEncoding(text, source_name));
  YAML::Node root;
  try {
    QTRAIN_RETURN_IF_ERROR(CheckSingleDocument(text, source_name));
    root = YAML::Load(std::string(text));
  } catch (const YAML::DeepRecursion& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        WhereAt(source_name, e.mark), ": nested deeper than ", kMaxYamlNestingDepth, " levels"));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(WhereAt(source_name, e.mark), ": not valid YAML or JSON: ", e.msg));
  }
  if (!root.IsDefined() || root.IsNull()) {
    return absl::InvalidArgumentError(absl::StrCat(source_name, ": the document is empty"));
  }
  try {
    QTRAIN_RETURN_IF_ERROR(CheckShape(root, source_name));
    return Converter(source_name).FillMessage(root, "", message);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source_name, ": ", e.what()));
  }
}

}  // namespace qtrain
