#include "worker/model/checkpoint_io.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/checked_math.h"
#include "common/file_util.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/model/buffer.h"

namespace qtrain::model {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";
constexpr char kLmHead[] = "lm_head.weight";
constexpr size_t kMaxConfigFileBytes = size_t{16} << 20;
constexpr size_t kMaxIndexFileBytes = size_t{64} << 20;

std::string JoinPath(const std::string& dir, const std::string& name) {
  return (fs::path(dir) / name).string();
}

// A model is a directory: anything else is named as what it is, and an empty name is not taken
// for the current directory.
absl::Status CheckModelDirectory(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("the model directory name is empty");
  const std::string kind = DescribeFileType(dir);
  if (kind == "a directory") return absl::OkStatus();
  if (kind == "missing") {
    return absl::NotFoundError(absl::StrCat("model directory ", dir, " does not exist"));
  }
  return absl::FailedPreconditionError(
      absl::StrCat("model directory ", dir, " is ", kind, ", not a directory"));
}

// Tensors transformers may have stored that carry no weights qtrain needs.
bool IsIgnorableBuffer(const std::string& name) { return name.ends_with("rotary_emb.inv_freq"); }

// Tensor name -> shard file name, from the index or the single file.
absl::StatusOr<std::map<std::string, std::string>> ReadWeightMap(const std::string& dir) {
  const std::string index_path = JoinPath(dir, kIndexFile);
  std::error_code ec;
  if (!fs::exists(index_path, ec)) {
    if (!fs::exists(JoinPath(dir, kSingleFile), ec)) {
      return absl::NotFoundError(
          absl::StrCat(dir, ": neither ", kSingleFile, " nor ", kIndexFile, " found"));
    }
    return std::map<std::string, std::string>();  // empty: single file
  }
  QTRAIN_ASSIGN_OR_RETURN(std::string text, ReadFileToString(index_path, kMaxIndexFileBytes));
  const Json index = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded() || !index.is_object() || !index.contains("weight_map") ||
      !index["weight_map"].is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": expected a JSON object with a 'weight_map' object"));
  }
  std::map<std::string, std::string> weight_map;
  for (const auto& [tensor, file] : index["weight_map"].items()) {
    if (!file.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": weight_map['", tensor, "'] is not a file name"));
    }
    const std::string name = file.get<std::string>();
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map['", tensor, "'] = '",
                                                     name, "' is not a plain file name"));
    }
    weight_map[tensor] = name;
  }
  return weight_map;
}

absl::Status CheckLmHeadMatches(const SafetensorsFile& file, const ModelConfig& config,
                                std::span<const float> embed) {
  const int64_t shape[] = {config.vocab_size, config.hidden_size};
  QTRAIN_ASSIGN_OR_RETURN(
      std::vector<float> head,
      CatchAllocationFailure(absl::StrCat(file.source(), ": tensor '", kLmHead, "'"),
                             CheckedBytes(embed.size(), sizeof(float)),
                             [&] { return file.ReadAsFloat(kLmHead, shape); }));
  if (std::memcmp(head.data(), embed.data(), head.size() * sizeof(float)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        file.source(), ": tensor '", kLmHead,
        "' differs from model.embed_tokens.weight, but qtrain supports tied embeddings only"));
  }
  return absl::OkStatus();
}

constexpr char kNonFinitePayload[] = "qtrain/model/nonfinite-weight";

// INVALID_ARGUMENT naming the tensor, the first non-finite value and its index (flat and per
// dimension) when `values` holds a NaN or an infinity.
absl::Status CheckFiniteTensor(const std::string& path, const TensorSlot& slot,
                               std::span<const float> values) {
  const auto bad =
      std::find_if(values.begin(), values.end(), [](float v) { return !std::isfinite(v); });
  if (bad == values.end()) return absl::OkStatus();
  int64_t index = bad - values.begin();
  std::vector<int64_t> coords(slot.shape.size());
  for (size_t d = slot.shape.size(); d-- > 0;) {
    coords[d] = index % slot.shape[d];
    index /= slot.shape[d];
  }
  absl::Status status = absl::InvalidArgumentError(absl::StrCat(
      path, ": tensor '", slot.name, "' holds a non-finite value (", *bad, ") at index ",
      bad - values.begin(), " ([", absl::StrJoin(coords, ", "), "] of shape [",
      absl::StrJoin(slot.shape, ", "), "]); non-finite weights are refused unless allowed"));
  status.SetPayload(kNonFinitePayload, absl::Cord("1"));
  return status;
}

}  // namespace

bool IsNonFiniteWeightError(const absl::Status& status) {
  return status.GetPayload(kNonFinitePayload).has_value();
}

absl::StatusOr<ModelConfig> LoadConfig(const std::string& dir) {
  QTRAIN_RETURN_IF_ERROR(CheckModelDirectory(dir));
  const std::string path = JoinPath(dir, "config.json");
  QTRAIN_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, kMaxConfigFileBytes));
  return ParseConfigJson(text, path);
}

absl::Status LoadWeights(const std::string& dir, const ModelConfig& config, std::span<float> params,
                         const LoadOptions& options) {
  const ParameterLayout layout(config);
  if (static_cast<int64_t>(params.size()) != layout.total_size()) {
    return absl::InvalidArgumentError("LoadWeights: parameter buffer has the wrong size");
  }
  QTRAIN_RETURN_IF_ERROR(CheckModelDirectory(dir));
  QTRAIN_ASSIGN_OR_RETURN(auto weight_map, ReadWeightMap(dir));
  std::set<std::string> files;
  if (weight_map.empty()) {
    files.insert(kSingleFile);
  } else {
    for (const auto& [tensor, file] : weight_map) files.insert(file);
  }
  std::fill(params.begin(), params.end(), 0.0f);
  std::set<std::string> loaded;
  bool has_lm_head = false;
  std::string lm_head_file;
  for (const std::string& file_name : files) {
    const std::string path = JoinPath(dir, file_name);
    QTRAIN_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(path));
    for (const TensorInfo& info : file.tensors()) {
      if (!weight_map.empty()) {
        auto it = weight_map.find(info.name);
        if (it == weight_map.end() || it->second != file_name) {
          return absl::InvalidArgumentError(absl::StrCat(
              path, ": tensor '", info.name, "' is not listed for this file in ", kIndexFile));
        }
      }
      if (info.name == kLmHead) {
        has_lm_head = true;
        lm_head_file = path;
        continue;
      }
      if (IsIgnorableBuffer(info.name)) continue;
      const TensorSlot* slot = layout.Find(info.name);
      if (slot == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": unexpected tensor '", info.name, "' for a Qwen2 model"));
      }
      if (!loaded.insert(info.name).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": tensor '", info.name, "' appears in more than one shard"));
      }
      auto values = CatchAllocationFailure(
          absl::StrCat(path, ": tensor '", info.name, "'"), CheckedBytes(slot->size, sizeof(float)),
          [&] { return file.ReadAsFloat(info.name, slot->shape); });
      if (!values.ok()) return Annotate(values.status(), absl::StrCat("tensor '", info.name, "'"));
      if (!options.allow_nonfinite) QTRAIN_RETURN_IF_ERROR(CheckFiniteTensor(path, *slot, *values));
      std::copy(values->begin(), values->end(), params.begin() + slot->offset);
    }
  }
  for (const auto& [tensor, file] : weight_map) {
    if (tensor != kLmHead && !IsIgnorableBuffer(tensor) && !loaded.contains(tensor)) {
      return absl::InvalidArgumentError(absl::StrCat(JoinPath(dir, file), ": tensor '", tensor,
                                                     "' is listed in ", kIndexFile,
                                                     " but not in the file"));
    }
  }
  for (const TensorSlot& slot : layout.tensors()) {
    if (!loaded.contains(slot.name)) {
      return absl::InvalidArgumentError(absl::StrCat(dir, ": missing tensor '", slot.name, "'"));
    }
  }
  if (has_lm_head) {
    QTRAIN_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(lm_head_file));
    const TensorSlot* embed = layout.Find("model.embed_tokens.weight");
    QTRAIN_RETURN_IF_ERROR(
        CheckLmHeadMatches(file, config, params.subspan(embed->offset, embed->size)));
  }
  return absl::OkStatus();
}

absl::StatusOr<LoadedModel> LoadCheckpoint(const std::string& dir, const LoadOptions& options) {
  LoadedModel model;
  QTRAIN_ASSIGN_OR_RETURN(model.config, LoadConfig(dir));
  QTRAIN_RETURN_IF_ERROR(ResizeHostVector(model.params,
                                          {ParameterLayout(model.config).total_size()},
                                          absl::StrCat("the parameters of ", dir)));
  QTRAIN_RETURN_IF_ERROR(LoadWeights(dir, model.config, model.params, options));
  return model;
}

absl::Status SaveCheckpoint(const std::string& dir, const ModelConfig& config,
                            std::span<const float> params) {
  QTRAIN_RETURN_IF_ERROR(ValidateConfig(config));
  const ParameterLayout layout(config);
  if (static_cast<int64_t>(params.size()) != layout.total_size()) {
    return absl::InvalidArgumentError("SaveCheckpoint: parameter buffer has the wrong size");
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot create directory ", dir, ": ", ec.message()));
  }
  // The writer copies the tensors and serializes them: a model too big for memory fails here.
  QTRAIN_RETURN_IF_ERROR(CatchAllocationFailure(
      absl::StrCat("the serialized weights for ", JoinPath(dir, kSingleFile)),
      CheckedBytes(layout.total_size(), 2 * sizeof(float)), [&] {
        SafetensorsWriter writer;
        writer.SetMetadata("format", "pt");
        for (const TensorSlot& slot : layout.tensors()) {
          QTRAIN_RETURN_IF_ERROR(
              writer.AddFloat(slot.name, slot.shape, params.subspan(slot.offset, slot.size)));
        }
        return writer.WriteFile(JoinPath(dir, kSingleFile));
      }));
  return WriteFileAtomically(JoinPath(dir, "config.json"), ConfigToJson(config));
}

}  // namespace qtrain::model
