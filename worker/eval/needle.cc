// needle: passkey retrieval at each length x depth (the passkey test of Mohtashami & Jaggi,
// "Landmark Attention", as long-context evaluations use it).
#include "worker/eval/needle.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "worker/eval/common.h"
#include "worker/eval/tasks.h"
#include "worker/model/init.h"

namespace qtrain::eval {
namespace {

constexpr const char* kIntro =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
    "it. I will quiz you about the important information there.";
constexpr const char* kQuestion = "\nWhat is the pass key? The pass key is";
constexpr const char* kFiller[] = {" The grass is green.", " The sky is blue.",
                                   " The sun is yellow.", " Here we go.", " There and back again."};

uint64_t SplitMix(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

absl::StatusOr<Haystack> BuildHaystack(const EvalContext& context, int64_t length, double depth,
                                       uint64_t seed, int64_t trial) {
  uint64_t state = model::HashName(seed, absl::StrCat("needle/", length, "/", depth, "/", trial));
  Haystack h;
  h.passkey = absl::StrFormat("%05d", static_cast<int>(10000 + SplitMix(state) % 90000));
  const std::string needle = absl::StrCat(" The pass key is ", h.passkey, ". Remember it. ",
                                          h.passkey, " is the pass key.");
  QTRAIN_ASSIGN_OR_RETURN(const std::vector<int32_t> intro, EncodeText(context, kIntro, "needle"));
  QTRAIN_ASSIGN_OR_RETURN(const std::vector<int32_t> question,
                          EncodeText(context, kQuestion, "needle"));
  QTRAIN_ASSIGN_OR_RETURN(const std::vector<int32_t> needle_ids,
                          EncodeText(context, needle, "needle"));
  std::vector<std::vector<int32_t>> sentences;
  for (const char* s : kFiller) {
    QTRAIN_ASSIGN_OR_RETURN(std::vector<int32_t> ids, EncodeText(context, s, "needle"));
    sentences.push_back(std::move(ids));
  }
  const auto fixed = static_cast<int64_t>(intro.size() + question.size() + needle_ids.size());
  const int64_t budget = length - fixed;
  if (budget < 1) {
    return absl::InvalidArgumentError(absl::StrCat("lengths: ", length,
                                                   " tokens cannot hold the needle prompt (", fixed,
                                                   " tokens without filler)"));
  }
  // Filler sentences in a seeded order until the budget is filled, cut at a token.
  std::vector<int32_t> filler;
  std::vector<int64_t> boundaries = {0};
  while (static_cast<int64_t>(filler.size()) < budget) {
    const auto& s = sentences[SplitMix(state) % sentences.size()];
    filler.insert(filler.end(), s.begin(), s.end());
    boundaries.push_back(std::min<int64_t>(static_cast<int64_t>(filler.size()), budget));
  }
  filler.resize(budget);
  const auto target = static_cast<int64_t>(std::llround(depth * static_cast<double>(budget)));
  int64_t at = 0;
  for (int64_t b : boundaries) {
    if (std::llabs(b - target) < std::llabs(at - target)) at = b;
  }
  h.ids = intro;
  h.ids.insert(h.ids.end(), filler.begin(), filler.begin() + at);
  h.needle_position = static_cast<int64_t>(h.ids.size());
  h.ids.insert(h.ids.end(), needle_ids.begin(), needle_ids.end());
  h.ids.insert(h.ids.end(), filler.begin() + at, filler.end());
  h.ids.insert(h.ids.end(), question.begin(), question.end());
  return h;
}

absl::StatusOr<nlohmann::json> RunNeedle(const TaskOptions& options, EvalContext& context) {
  const std::vector<int64_t> lengths =
      options.lengths.empty() ? std::vector<int64_t>{1024} : options.lengths;
  const std::vector<double> depths =
      options.depths.empty() ? std::vector<double>{0, 0.25, 0.5, 0.75, 1} : options.depths;
  const int64_t max_new = options.max_new_tokens > 0 ? options.max_new_tokens : 16;
  const int64_t trials = options.trials > 0 ? options.trials : 1;
  const int64_t context_length = ModelContextLength(*context.model);
  for (int64_t length : lengths) {
    if (length + max_new > context_length) {
      return absl::InvalidArgumentError(
          absl::StrCat("lengths: ", length, " tokens and max_new_tokens ", max_new,
                       " do not fit in the model's context of ", context_length, " positions"));
    }
  }
  nlohmann::json result = ResultSkeleton(options);
  const std::string name = result["name"];
  nlohmann::json examples = nlohmann::json::array();
  nlohmann::json accuracy = nlohmann::json::array();
  int64_t correct = 0, done = 0;
  const auto total = static_cast<int64_t>(lengths.size() * depths.size()) * trials;
  for (double depth : depths) {
    nlohmann::json row = nlohmann::json::array();
    for (int64_t length : lengths) {
      int64_t cell = 0;
      for (int64_t trial = 0; trial < trials; ++trial) {
        QTRAIN_RETURN_IF_ERROR(CheckCancelled(context));
        QTRAIN_ASSIGN_OR_RETURN(const Haystack h,
                                BuildHaystack(context, length, depth, options.seed, trial));
        QTRAIN_ASSIGN_OR_RETURN(const Generation g,
                                GreedyGenerate(context, h.ids, max_new, {"\n"}));
        const bool ok = g.text.find(h.passkey) != std::string::npos;
        cell += ok;
        if (options.per_example) {
          examples.push_back({{"length", length},
                              {"depth", depth},
                              {"trial", trial},
                              {"passkey", h.passkey},
                              {"output", g.text},
                              {"correct", ok}});
        }
        ReportProgress(context, name, ++done, total);
      }
      correct += cell;
      row.push_back(static_cast<double>(cell) / static_cast<double>(trials));
    }
    accuracy.push_back(std::move(row));
  }
  result["metrics"] = {{"accuracy", static_cast<double>(correct) / static_cast<double>(total)},
                       {"count", total}};
  result["grid"] = {{"lengths", lengths}, {"depths", depths}, {"accuracy", std::move(accuracy)}};
  if (options.per_example) result["examples"] = std::move(examples);
  return result;
}

}  // namespace qtrain::eval
