#include "common/proto_yaml.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <set>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
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

// Parses a YAML/JSON integer, also accepting exponent form with an integral value (4e6).
bool ParseInteger(const std::string& text, long double* value) {
  if (text.empty()) return false;
  const char* begin = text.c_str();
  char* end = nullptr;
  errno = 0;
  const long long as_int = std::strtoll(begin, &end, 10);
  if (errno == 0 && *end == '\0' && end != begin) {
    *value = static_cast<long double>(as_int);
    return true;
  }
  errno = 0;
  const unsigned long long as_uint = std::strtoull(begin, &end, 10);
  if (errno == 0 && *end == '\0' && end != begin && text[0] != '-') {
    *value = static_cast<long double>(as_uint);
    return true;
  }
  errno = 0;
  const long double as_float = std::strtold(begin, &end);
  if (errno != 0 || *end != '\0' || end == begin || !std::isfinite(as_float) ||
      as_float != std::floor(as_float)) {
    return false;
  }
  *value = as_float;
  return true;
}

bool ParseDouble(const std::string& text, double* value) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  *value = std::strtod(text.c_str(), &end);
  return errno == 0 && *end == '\0' && std::isfinite(*value);
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
    if (!seen.insert(key).second)
      return Error(entry.first, absl::StrCat(path, ".", key), "duplicate key");
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
      repeated ? r->AddString(message, field, text) : r->SetString(message, field, text);
      return absl::OkStatus();
    case FieldDescriptor::CPPTYPE_BOOL: {
      const std::string lower = absl::AsciiStrToLower(text);
      if (IsQuoted(node) || (lower != "true" && lower != "false")) {
        return Error(node, path, absl::StrCat("expected true or false, got ", Describe(node)));
      }
      repeated ? r->AddBool(message, field, lower == "true")
               : r->SetBool(message, field, lower == "true");
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_ENUM: {
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
      double value;
      if (IsQuoted(node)) {
        return Error(node, path,
                     absl::StrCat("expected a number, got the string ", Describe(node)));
      }
      if (!ParseDouble(text, &value)) {
        return Error(node, path, absl::StrCat("expected a finite number, got ", Describe(node)));
      }
      if (field->cpp_type() == FieldDescriptor::CPPTYPE_FLOAT) {
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
  if (IsQuoted(node)) {
    return Error(node, path, absl::StrCat("expected an integer, got the string ", Describe(node)));
  }
  long double value;
  if (!ParseInteger(text, &value)) {
    return Error(node, path, absl::StrCat("expected an integer, got ", Describe(node)));
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
  if (value < lo || value > hi) {
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

}  // namespace

absl::Status ParseYamlToMessage(std::string_view text, std::string_view source, Message* message) {
  message->Clear();
  const std::string source_name(source);
  YAML::Node root;
  try {
    root = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    std::string where = source_name;
    if (!e.mark.is_null()) absl::StrAppend(&where, ":", e.mark.line + 1, ":", e.mark.column + 1);
    return absl::InvalidArgumentError(absl::StrCat(where, ": not valid YAML or JSON: ", e.msg));
  }
  if (!root.IsDefined() || root.IsNull()) {
    return absl::InvalidArgumentError(absl::StrCat(source_name, ": the document is empty"));
  }
  try {
    return Converter(source_name).FillMessage(root, "", message);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source_name, ": ", e.what()));
  }
}

}  // namespace qtrain
