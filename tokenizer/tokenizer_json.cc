// Tokenizer::FromJson / FromFile / ToJson and tokenizer_config.json parsing.
#include "tokenizer/tokenizer_json.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"

namespace qtrain::tokenizer {
namespace {

using json = nlohmann::json;

absl::Status Unsupported(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(
      absl::StrCat("tokenizer.json: ", field, ": ", what, " is not supported"));
}
absl::Status Invalid(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: ", field, ": ", what));
}

std::string TypeOf(const json& j) {
  if (!j.is_object()) return "(not an object)";
  auto it = j.find("type");
  if (it == j.end() || !it->is_string()) return "(no type)";
  return it->get<std::string>();
}

// `j[key]` is absent, null, or equal to `expected`.
bool IsAbsentOr(const json& j, const char* key, const json& expected) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() || *it == expected;
}

// The vocabulary and merges, read straight from the parser's events: building them as JSON
// values first would take most of the load time of a 150k-token file.
struct ModelTables {
  bool has_vocab = false;
  bool has_merges = false;
  std::vector<std::pair<std::string, uint32_t>> vocab;
  std::vector<std::pair<std::string, std::string>> merges;
  std::string error;  // set when a table entry is malformed
};

// SAX handler: model.vocab and model.merges go into ModelTables, everything else into a JSON
// document (as nlohmann's own DOM parser would build it).
class TokenizerJsonSax {
 public:
  explicit TokenizerJsonSax(ModelTables* tables) : tables_(tables) {}
  json& root() { return root_; }
  const std::string& parse_error() const { return parse_error_; }

  bool null() { return Value(json()); }
  bool boolean(bool v) { return Value(json(v)); }
  bool number_integer(json::number_integer_t v) { return Value(json(v)); }
  bool number_unsigned(json::number_unsigned_t v) {
    if (mode_ == Mode::kVocab) {
      if (v >= UINT32_MAX) return Fail(absl::StrCat("model.vocab['", key_, "']: id too large"));
      tables_->vocab.emplace_back(std::move(key_), static_cast<uint32_t>(v));
      return true;
    }
    return Value(json(v));
  }
  bool number_float(json::number_float_t v, const json::string_t&) { return Value(json(v)); }
  bool string(json::string_t& v) {
    if (mode_ == Mode::kMerges) {
      const size_t space = v.find(' ');
      if (space == std::string::npos || v.find(' ', space + 1) != std::string::npos) {
        return Fail(absl::StrCat("model.merges[", tables_->merges.size(), "]: '", v,
                                 "' is not two tokens separated by one space"));
      }
      tables_->merges.emplace_back(v.substr(0, space), v.substr(space + 1));
      return true;
    }
    if (mode_ == Mode::kMergePair) {
      if (pair_.size() >= 2) return BadPair();
      pair_.push_back(std::move(v));
      return true;
    }
    return Value(json(std::move(v)));
  }
  bool binary(json::binary_t&) { return Fail("binary values are not JSON"); }
  bool key(json::string_t& k) {
    key_ = std::move(k);
    return true;
  }
  bool start_object(std::size_t) {
    if (mode_ == Mode::kDom && InModel() && key_ == "vocab") {
      if (tables_->has_vocab) return Fail("model.vocab appears twice");
      tables_->has_vocab = true;
      mode_ = Mode::kVocab;
      return true;
    }
    if (mode_ != Mode::kDom) return mode_ == Mode::kMerges ? BadPair() : Fail(VocabError());
    return Open(json::object());
  }
  bool end_object() {
    if (mode_ == Mode::kVocab) {
      mode_ = Mode::kDom;
      return true;
    }
    stack_.pop_back();
    return true;
  }
  bool start_array(std::size_t) {
    if (mode_ == Mode::kDom && InModel() && key_ == "merges") {
      if (tables_->has_merges) return Fail("model.merges appears twice");
      tables_->has_merges = true;
      mode_ = Mode::kMerges;
      return true;
    }
    if (mode_ == Mode::kMerges) {
      mode_ = Mode::kMergePair;
      pair_.clear();
      return true;
    }
    if (mode_ != Mode::kDom) return mode_ == Mode::kMergePair ? BadPair() : Fail(VocabError());
    return Open(json::array());
  }
  bool end_array() {
    if (mode_ == Mode::kMergePair) {
      if (pair_.size() != 2) return BadPair();
      tables_->merges.emplace_back(std::move(pair_[0]), std::move(pair_[1]));
      mode_ = Mode::kMerges;
      return true;
    }
    if (mode_ == Mode::kMerges) {
      mode_ = Mode::kDom;
      return true;
    }
    stack_.pop_back();
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const json::exception& e) {
    parse_error_ = e.what();
    return false;
  }

 private:
  enum class Mode { kDom, kVocab, kMerges, kMergePair };

  // Directly inside the top-level "model" object.
  bool InModel() const { return stack_.size() == 2 && stack_.front() == &root_ && in_model_; }
  bool Fail(std::string message) {
    if (tables_->error.empty()) tables_->error = std::move(message);
    return false;
  }
  bool BadPair() {
    return Fail(absl::StrCat("model.merges[", tables_->merges.size(),
                             "]: neither an \"a b\" string nor an [\"a\", \"b\"] pair"));
  }
  std::string VocabError() const {
    return absl::StrCat("model.vocab['", key_, "']: id must be a non-negative 32-bit integer");
  }
  bool Value(json v) {
    if (mode_ == Mode::kVocab) return Fail(VocabError());
    if (mode_ == Mode::kMerges || mode_ == Mode::kMergePair) return BadPair();
    Place(std::move(v));
    return true;
  }
  json* Place(json v) {
    if (stack_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    json* top = stack_.back();
    if (top->is_array()) {
      top->push_back(std::move(v));
      return &top->back();
    }
    json& slot = (*top)[key_];
    slot = std::move(v);
    return &slot;
  }
  bool Open(json container) {
    const bool model = stack_.size() == 1 && key_ == "model";
    json* p = Place(std::move(container));
    stack_.push_back(p);
    if (stack_.size() == 2) in_model_ = model;
    return true;
  }

  ModelTables* tables_;
  json root_;
  std::vector<json*> stack_;
  Mode mode_ = Mode::kDom;
  bool in_model_ = false;
  std::string key_;
  std::vector<std::string> pair_;
  std::string parse_error_;
};

absl::StatusOr<bool> ParseNormalizer(const json& j, const std::string& field) {
  if (j.is_null()) return false;
  const std::string type = TypeOf(j);
  if (type == "NFC") return true;
  if (type == "Sequence") {
    auto it = j.find("normalizers");
    if (it == j.end() || !it->is_array()) return Invalid(field, "Sequence without 'normalizers'");
    bool nfc = false;
    for (size_t k = 0; k < it->size(); ++k) {
      QTRAIN_ASSIGN_OR_RETURN(
          bool sub, ParseNormalizer((*it)[k], absl::StrCat(field, ".normalizers[", k, "]")));
      nfc = nfc || sub;
    }
    return nfc;
  }
  return Unsupported(field, absl::StrCat("type '", type, "' (only NFC)"));
}

absl::Status CheckByteLevel(const json& j, const std::string& field, bool check_regex) {
  if (TypeOf(j) != "ByteLevel") {
    return Unsupported(field, absl::StrCat("type '", TypeOf(j), "' (only ByteLevel)"));
  }
  if (!IsAbsentOr(j, "add_prefix_space", false)) return Unsupported(field, "add_prefix_space");
  if (check_regex && !IsAbsentOr(j, "use_regex", false)) {
    return Unsupported(field, "use_regex=true (the GPT-2 regex)");
  }
  return absl::OkStatus();
}

absl::Status CheckPreTokenizer(const json& j) {
  const char* field = "pre_tokenizer";
  if (TypeOf(j) != "Sequence") {
    return Unsupported(field, absl::StrCat("type '", TypeOf(j),
                                           "' (only Sequence [Split(Qwen2 regex), ByteLevel])"));
  }
  auto it = j.find("pretokenizers");
  if (it == j.end() || !it->is_array() || it->size() != 2) {
    return Unsupported(field, "a Sequence other than [Split(Qwen2 regex), ByteLevel]");
  }
  const json& split = (*it)[0];
  if (TypeOf(split) != "Split") {
    return Unsupported("pre_tokenizer.pretokenizers[0]",
                       absl::StrCat("type '", TypeOf(split), "' (only Split)"));
  }
  const json* pattern = nullptr;
  if (auto p = split.find("pattern"); p != split.end() && p->is_object()) {
    if (auto r = p->find("Regex"); r != p->end() && r->is_string()) pattern = &*r;
  }
  if (pattern == nullptr || pattern->get<std::string>() != kQwen2SplitPattern) {
    return Unsupported("pre_tokenizer.pretokenizers[0].pattern",
                       "a split pattern other than the Qwen2 regex");
  }
  if (!IsAbsentOr(split, "behavior", "Isolated")) {
    return Unsupported("pre_tokenizer.pretokenizers[0].behavior", "a value other than Isolated");
  }
  if (!IsAbsentOr(split, "invert", false)) {
    return Unsupported("pre_tokenizer.pretokenizers[0].invert", "true");
  }
  return CheckByteLevel((*it)[1], "pre_tokenizer.pretokenizers[1]", true);
}

absl::StatusOr<std::vector<AddedToken>> ParseAddedTokens(const json& j) {
  std::vector<AddedToken> out;
  if (j.is_null()) return out;
  if (!j.is_array()) return Invalid("added_tokens", "not an array");
  for (size_t k = 0; k < j.size(); ++k) {
    const json& t = j[k];
    const std::string field = absl::StrCat("added_tokens[", k, "]");
    if (!t.is_object()) return Invalid(field, "not an object");
    auto id = t.find("id");
    auto content = t.find("content");
    if (id == t.end() || !id->is_number_unsigned() || id->get<uint64_t>() >= UINT32_MAX) {
      return Invalid(field, "'id' must be a non-negative 32-bit integer");
    }
    if (content == t.end() || !content->is_string() || content->get<std::string>().empty()) {
      return Invalid(field, "'content' must be a non-empty string");
    }
    for (const char* flag : {"single_word", "lstrip", "rstrip", "normalized"}) {
      if (!IsAbsentOr(t, flag, false)) {
        return Unsupported(absl::StrCat(field, ".", flag), "true");
      }
    }
    AddedToken a;
    a.id = static_cast<uint32_t>(id->get<uint64_t>());
    a.content = content->get<std::string>();
    auto special = t.find("special");
    a.special = special == t.end() || !special->is_boolean() || special->get<bool>();
    out.push_back(std::move(a));
  }
  return out;
}

absl::StatusOr<BpeModel> ParseModel(const json& m, ModelTables* tables) {
  if (!m.is_object()) return Invalid("model", "missing or not an object");
  auto type = m.find("type");
  if (type != m.end() && (!type->is_string() || type->get<std::string>() != "BPE")) {
    return Unsupported("model.type", absl::StrCat("'", TypeOf(m), "' (only BPE)"));
  }
  if (!IsAbsentOr(m, "dropout", json())) {
    auto d = m.find("dropout");
    if (!(d->is_number() && d->get<double>() == 0.0))
      return Unsupported("model.dropout", "BPE dropout");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (!IsAbsentOr(m, key, ""))
      return Unsupported(absl::StrCat("model.", key), "a non-empty value");
  }
  BpeModel::Options options;
  if (auto im = m.find("ignore_merges"); im != m.end() && !im->is_null()) {
    if (!im->is_boolean()) return Invalid("model.ignore_merges", "not a boolean");
    options.ignore_merges = im->get<bool>();
  }
  // The SAX reader took vocab and merges out when they had the right shape.
  if (!tables->has_vocab) return Invalid("model.vocab", "missing or not an object");
  if (auto mj = m.find("merges"); mj != m.end() && !mj->is_null()) {
    return Invalid("model.merges", "not an array");
  }
  absl::StatusOr<BpeModel> model = BpeModel::Create(tables->vocab, tables->merges, options);
  if (!model.ok()) return Annotate(model.status(), "tokenizer.json: model");
  return model;
}

absl::StatusOr<Tokenizer> FromParsed(const json& j, ModelTables* tables) {
  if (!j.is_object()) return Invalid("(top level)", "not a JSON object");
  for (const char* key : {"truncation", "padding"}) {
    if (!IsAbsentOr(j, key, json())) return Unsupported(key, "a non-null value");
  }
  Tokenizer::Options options;
  QTRAIN_ASSIGN_OR_RETURN(
      options.nfc,
      ParseNormalizer(j.contains("normalizer") ? j["normalizer"] : json(), "normalizer"));
  QTRAIN_RETURN_IF_ERROR(
      CheckPreTokenizer(j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json()));
  QTRAIN_RETURN_IF_ERROR(
      CheckByteLevel(j.contains("decoder") ? j["decoder"] : json(), "decoder", false));
  if (j.contains("post_processor") && !j["post_processor"].is_null()) {
    QTRAIN_RETURN_IF_ERROR(CheckByteLevel(j["post_processor"], "post_processor", false));
  }
  QTRAIN_ASSIGN_OR_RETURN(
      std::vector<AddedToken> added,
      ParseAddedTokens(j.contains("added_tokens") ? j["added_tokens"] : json()));
  QTRAIN_ASSIGN_OR_RETURN(BpeModel model,
                          ParseModel(j.contains("model") ? j["model"] : json(), tables));
  absl::StatusOr<Tokenizer> t = Tokenizer::Create(std::move(model), std::move(added), options);
  if (!t.ok()) return Annotate(t.status(), "tokenizer.json");
  return t;
}

json ByteLevelJson() {
  json j = json::object();
  j["type"] = "ByteLevel";
  j["add_prefix_space"] = false;
  j["trim_offsets"] = false;
  j["use_regex"] = false;
  return j;
}

}  // namespace

absl::StatusOr<Tokenizer> Tokenizer::FromJson(std::string_view text) {
  ModelTables tables;
  TokenizerJsonSax sax(&tables);
  bool ok;
  try {
    ok = json::sax_parse(text, &sax);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: ", e.what()));
  }
  if (!tables.error.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: ", tables.error));
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer.json: not valid JSON: ", sax.parse_error()));
  }
  return FromParsed(sax.root(), &tables);
}

absl::StatusOr<Tokenizer> Tokenizer::FromFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFileToString(path, kMaxTokenizerFileBytes);
  if (!text.ok()) return Annotate(text.status(), "tokenizer");
  absl::StatusOr<Tokenizer> t = FromJson(*text);
  if (!t.ok()) return Annotate(t.status(), path);
  return t;
}

std::string Tokenizer::ToJson() const {
  using ojson = nlohmann::ordered_json;
  ojson out;
  out["version"] = "1.0";
  out["truncation"] = nullptr;
  out["padding"] = nullptr;
  ojson added = ojson::array();
  for (const AddedToken& a : added_) {
    ojson t;
    t["id"] = a.id;
    t["content"] = a.content;
    t["single_word"] = false;
    t["lstrip"] = false;
    t["rstrip"] = false;
    t["normalized"] = false;
    t["special"] = a.special;
    added.push_back(std::move(t));
  }
  out["added_tokens"] = std::move(added);
  out["normalizer"] = options_.nfc ? ojson{{"type", "NFC"}} : ojson();
  ojson split;
  split["type"] = "Split";
  split["pattern"] = {{"Regex", std::string(kQwen2SplitPattern)}};
  split["behavior"] = "Isolated";
  split["invert"] = false;
  out["pre_tokenizer"] = {{"type", "Sequence"},
                          {"pretokenizers", ojson::array({split, ojson(ByteLevelJson())})}};
  out["post_processor"] = ojson(ByteLevelJson());
  out["decoder"] = ojson(ByteLevelJson());
  // The model is written by hand: nlohmann's ordered_json inserts in linear time, which is
  // quadratic over a 150k-entry vocabulary.
  out["model"] = "@MODEL@";
  std::string text = out.dump(2);
  std::string model = "{\n";
  auto field = [&](const char* key, const ojson& value) {
    absl::StrAppend(&model, "    \"", key, "\": ", value.dump(), ",\n");
  };
  field("type", "BPE");
  field("dropout", nullptr);
  field("unk_token", nullptr);
  field("continuing_subword_prefix", "");
  field("end_of_word_suffix", "");
  field("fuse_unk", false);
  field("byte_fallback", false);
  field("ignore_merges", model_.options().ignore_merges);
  model += "    \"vocab\": {";
  bool first = true;
  for (uint32_t id = 0; id < model_.id_limit(); ++id) {
    if (!model_.HasId(id)) continue;
    absl::StrAppend(&model, first ? "\n      " : ",\n      ", ojson(model_.Token(id)).dump(), ": ",
                    id);
    first = false;
  }
  model += first ? "},\n" : "\n    },\n";
  model += "    \"merges\": [";
  first = true;
  for (const auto& [a, b] : model_.merges()) {
    absl::StrAppend(&model, first ? "\n      [" : ",\n      [", ojson(model_.Token(a)).dump(), ", ",
                    ojson(model_.Token(b)).dump(), "]");
    first = false;
  }
  model += first ? "]\n  }" : "\n    ]\n  }";
  const size_t at = text.find("\"@MODEL@\"");
  text.replace(at, std::string_view("\"@MODEL@\"").size(), model);
  return text + "\n";
}

absl::StatusOr<TokenizerConfig> ParseTokenizerConfig(std::string_view text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer_config.json: not valid JSON: ", e.what()));
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError("tokenizer_config.json: not a JSON object");
  }
  TokenizerConfig c;
  auto token = [&](const char* key) -> std::optional<std::string> {
    auto it = j.find(key);
    if (it == j.end()) return std::nullopt;
    if (it->is_string()) return it->get<std::string>();
    // Newer files write {"content": "...", ...} objects.
    if (it->is_object()) {
      auto c = it->find("content");
      if (c != it->end() && c->is_string()) return c->get<std::string>();
    }
    return std::nullopt;
  };
  c.eos_token = token("eos_token");
  c.bos_token = token("bos_token");
  c.pad_token = token("pad_token");
  if (auto it = j.find("tokenizer_class"); it != j.end() && it->is_string()) {
    c.tokenizer_class = it->get<std::string>();
  }
  return c;
}

}  // namespace qtrain::tokenizer
