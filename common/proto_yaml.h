// Fills a protobuf message from YAML or JSON text, strictly, with errors that name the field.
//
// The mapping follows the proto's field names: a message is a mapping, a repeated field a
// sequence, a map<string, string> a mapping of scalars, an enum a name (the full value name,
// e.g. PRECISION_BF16, or the part after the enum's prefix, e.g. bf16, in any case). JSON is
// read as the YAML it is.
//
// Errors are INVALID_ARGUMENT and start with the source, line and field path:
//   "job.yaml:7:14: curriculum[1].seq_len: expected an integer, got \"long\""
// Checked: unknown fields, duplicate keys, wrong node kinds, numbers given as quoted strings,
// integers out of range or with a fraction, non-finite floats, unknown enum names, more than
// one field of a oneof, text that is not YAML. Null values leave a field unset. Also refused:
// more than one YAML document, explicit tags (!!str 7), integers not in plain decimal (0x10,
// 010), floats that overflow or are subnormal, plain values YAML reads as a number, bool or
// null where text is expected (labels: {a: 1}; quote them), nesting deeper than
// kMaxYamlNestingDepth, and text that is not UTF-8 (UTF-16/UTF-32, NUL bytes).
#ifndef QTRAIN_COMMON_PROTO_YAML_H_
#define QTRAIN_COMMON_PROTO_YAML_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "google/protobuf/message.h"

namespace qtrain {

// Mappings and sequences nest at most this deep (the top-level mapping is level 1).
inline constexpr int kMaxYamlNestingDepth = 32;

// Parses `text` into `message` (cleared first). `source` names the input in errors.
absl::Status ParseYamlToMessage(std::string_view text, std::string_view source,
                                google::protobuf::Message* message);

}  // namespace qtrain

#endif  // QTRAIN_COMMON_PROTO_YAML_H_
