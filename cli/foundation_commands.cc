// Local tools: `qtrain validate` (common/ and the model resolution of worker/model/) and
// `qtrain safetensors`.
#include <cstdio>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli/command.h"
#include "common/file_util.h"
#include "common/job_spec.h"
#include "common/safetensors.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "google/protobuf/util/json_util.h"
#include "worker/model/model_source.h"

namespace qtrain::cli {
namespace {

// One line per stage on stderr: its steps and gradient accumulation.
absl::Status PrintStageSummary(const v1::JobSpec& spec, int i) {
  const v1::CurriculumStage& stage = spec.curriculum(i);
  const int64_t workers = spec.world().min_workers();
  QTRAIN_ASSIGN_OR_RETURN(const int64_t accumulation, AccumulationSteps(spec, i, workers));
  std::fprintf(stderr,
               "stage %d '%s': seq_len %lld, %lld tokens, %lld steps of %lld tokens "
               "(%lld accumulation steps per worker with %lld workers)\n",
               i, stage.name().c_str(), static_cast<long long>(stage.seq_len()),
               static_cast<long long>(stage.tokens()), static_cast<long long>(StageSteps(spec, i)),
               static_cast<long long>(spec.batch().global_tokens()),
               static_cast<long long>(accumulation), static_cast<long long>(workers));
  return absl::OkStatus();
}

// Loads a job spec, applies defaults, validates it (resolving its model as `train` does), and
// prints it as JSON with a summary of its stages on stderr.
absl::Status RunValidate(const std::string& path) {
  QTRAIN_ASSIGN_OR_RETURN(v1::JobSpec spec,
                          LoadJobSpecFile(path, model::ModelAwareJobSpecOptions()));
  QTRAIN_ASSIGN_OR_RETURN(const int64_t total_steps, TotalSteps(spec));
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  if (auto status = google::protobuf::util::MessageToJsonString(spec, &json, options);
      !status.ok()) {
    return absl::InternalError(absl::StrCat("cannot print the spec: ", status.ToString()));
  }
  QTRAIN_RETURN_IF_ERROR(WriteStdout(json));
  QTRAIN_RETURN_IF_ERROR(FlushStdout());
  for (int i = 0; i < spec.curriculum_size(); ++i) {
    QTRAIN_RETURN_IF_ERROR(PrintStageSummary(spec, i));
  }
  std::fprintf(stderr, "%s: valid job spec '%s', %lld optimizer steps in %d stages\n", path.c_str(),
               spec.name().c_str(), static_cast<long long>(total_steps), spec.curriculum_size());
  return absl::OkStatus();
}

// Lists the tensors of a safetensors file (after full header validation).
absl::Status RunSafetensors(const std::string& path, bool with_hash) {
  QTRAIN_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(path));
  int64_t total_elements = 0;
  std::string listing;
  for (const TensorInfo& info : file.tensors()) {
    absl::StrAppendFormat(&listing, "%-60s %-5s [%s]\n", info.name, DTypeName(info.dtype),
                          absl::StrJoin(info.shape, ", "));
    total_elements += info.num_elements();
  }
  for (const auto& [key, value] : file.metadata()) {
    absl::StrAppend(&listing, "metadata ", key, " = ", value, "\n");
  }
  QTRAIN_RETURN_IF_ERROR(WriteStdout(listing));
  QTRAIN_RETURN_IF_ERROR(FlushStdout());
  std::fprintf(stderr, "%s: %zu tensors, %lld elements\n", path.c_str(), file.tensors().size(),
               static_cast<long long>(total_elements));
  if (with_hash) {
    QTRAIN_ASSIGN_OR_RETURN(std::string digest, Sha256File(path));
    QTRAIN_RETURN_IF_ERROR(WriteStdout(absl::StrCat("sha256 ", digest, "\n")));
  }
  return FlushStdout();
}

}  // namespace

void AddFoundationCommands(CLI::App& app, CommandSelection& selection) {
  {
    auto path = std::make_shared<std::string>();
    CLI::App* cmd = app.add_subcommand(
        "validate", "Check a job spec (YAML or JSON) and print it with defaults applied");
    cmd->add_option("spec", *path, "Job spec file")->required();
    cmd->callback([&selection, path] { selection.action = [path] { return RunValidate(*path); }; });
  }
  {
    auto path = std::make_shared<std::string>();
    auto with_hash = std::make_shared<bool>(false);
    CLI::App* cmd =
        app.add_subcommand("safetensors", "Validate a safetensors file and list its tensors");
    cmd->add_option("file", *path, "safetensors file")->required();
    cmd->add_flag("--sha256", *with_hash, "Also print the file's sha256");
    cmd->callback([&selection, path, with_hash] {
      selection.action = [path, with_hash] { return RunSafetensors(*path, *with_hash); };
    });
  }
}

}  // namespace qtrain::cli
