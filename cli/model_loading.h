// Loading a model directory for inference (score, generate, eval).
#ifndef QTRAIN_CLI_MODEL_LOADING_H_
#define QTRAIN_CLI_MODEL_LOADING_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "worker/model/config.h"
#include "worker/model/model.h"

namespace qtrain::cli {

struct LoadModelOptions {
  bool allow_nonfinite_weights = false;
  // --dca CHUNK,LOCAL: replaces config.json's chunk and local sizes (its
  // original_max_position_embeddings is kept).
  std::optional<model::DcaParams> dca;
};

// An inference model (no gradients) that fails on non-finite activations or logits, naming
// where they appear.
absl::StatusOr<model::Model> LoadInferenceModel(const std::string& dir,
                                                const LoadModelOptions& options = {});

}  // namespace qtrain::cli

#endif  // QTRAIN_CLI_MODEL_LOADING_H_
