#include "cli/model_loading.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/model/checkpoint_io.h"

namespace qtrain::cli {

absl::StatusOr<model::Model> LoadInferenceModel(const std::string& dir,
                                                const LoadModelOptions& options) {
  QTRAIN_ASSIGN_OR_RETURN(model::ModelConfig config, model::LoadConfig(dir));
  if (options.dca) {
    config.dca.chunk_size = options.dca->chunk_size;
    config.dca.local_size = options.dca->local_size;
    QTRAIN_RETURN_IF_ERROR(model::ValidateConfig(config));
  }
  QTRAIN_ASSIGN_OR_RETURN(model::Model m, model::Model::Create(config, {.allocate_gradients = false,
                                                                        .check_finite = true}));
  const absl::Status loaded = model::LoadWeights(
      dir, config, m.params(), {.allow_nonfinite = options.allow_nonfinite_weights});
  if (model::IsNonFiniteWeightError(loaded)) {
    return absl::Status(loaded.code(), absl::StrCat(loaded.message(),
                                                    " (pass --allow-nonfinite-weights to load it "
                                                    "anyway)"));
  }
  QTRAIN_RETURN_IF_ERROR(loaded);
  return m;
}

}  // namespace qtrain::cli
