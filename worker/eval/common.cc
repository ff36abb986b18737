#include "worker/eval/common.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace qtrain::eval {

absl::Status CheckCancelled(const EvalContext& context) {
  if (context.cancelled != nullptr && context.cancelled->load(std::memory_order_relaxed)) {
    return absl::CancelledError("evaluation cancelled");
  }
  return absl::OkStatus();
}

void ReportProgress(const EvalContext& context, std::string_view task, int64_t done,
                    int64_t total) {
  if (context.progress) context.progress(Progress{.task = task, .done = done, .total = total});
}

int64_t ModelContextLength(const model::Model& model) {
  return model::ContextLength(model.config());
}

absl::StatusOr<std::vector<int32_t>> EncodeText(const EvalContext& context, std::string_view text,
                                                std::string_view where) {
  absl::StatusOr<std::vector<uint32_t>> ids = context.tokenizer->Encode(text);
  if (!ids.ok()) return Annotate(ids.status(), std::string(where));
  const int64_t vocab = context.model->config().vocab_size;
  std::vector<int32_t> out;
  out.reserve(ids->size());
  for (uint32_t id : *ids) {
    if (static_cast<int64_t>(id) >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat(
          std::string(where), ": the tokenizer gives id ", id,
          ", outside the model's vocabulary of ", vocab, " (is it the model's tokenizer?)"));
    }
    out.push_back(static_cast<int32_t>(id));
  }
  return out;
}

absl::StatusOr<std::string> DecodeIds(const EvalContext& context, std::span<const int32_t> ids) {
  std::vector<uint32_t> u(ids.begin(), ids.end());
  return context.tokenizer->Decode(u);
}

absl::StatusOr<int32_t> PrefixToken(const EvalContext& context) {
  const model::ModelConfig& config = context.model->config();
  if (config.bos_token_id) return static_cast<int32_t>(*config.bos_token_id);
  if (!config.eos_token_ids.empty()) return static_cast<int32_t>(config.eos_token_ids.front());
  if (auto id = context.tokenizer->TokenToId("<|endoftext|>");
      id && static_cast<int64_t>(*id) < config.vocab_size) {
    return static_cast<int32_t>(*id);
  }
  return absl::FailedPreconditionError(
      "an empty context is scored after the model's BOS or EOS token, and config.json names "
      "neither (bos_token_id, eos_token_id) and the tokenizer has no <|endoftext|>");
}

absl::StatusOr<std::vector<std::vector<float>>> NextTokenLogprobs(
    model::Model& model, const std::vector<std::vector<int32_t>>& seqs) {
  size_t longest = 0;
  for (const auto& s : seqs) longest = std::max(longest, s.size());
  std::vector<std::vector<float>> out(seqs.size());
  if (longest < 2) {
    for (size_t b = 0; b < seqs.size(); ++b) out[b].assign(seqs[b].size(), 0.0f);
    return out;
  }
  const auto batch_size = static_cast<int64_t>(seqs.size());
  const auto seq_len = static_cast<int64_t>(longest);
  std::vector<int32_t> ids(batch_size * seq_len, 0);
  std::vector<int32_t> targets(batch_size * seq_len, model::kIgnoreIndex);
  for (int64_t b = 0; b < batch_size; ++b) {
    const auto& s = seqs[b];
    std::copy(s.begin(), s.end(), ids.begin() + b * seq_len);
    for (size_t t = 0; t + 1 < s.size(); ++t) targets[b * seq_len + t] = s[t + 1];
  }
  std::vector<float> logprobs;
  QTRAIN_RETURN_IF_ERROR(
      model
          .Forward({.batch_size = batch_size, .seq_len = seq_len, .ids = ids, .targets = targets},
                   {.target_logprobs = &logprobs})
          .status());
  for (int64_t b = 0; b < batch_size; ++b) {
    out[b].assign(logprobs.begin() + b * seq_len,
                  logprobs.begin() + b * seq_len + static_cast<int64_t>(seqs[b].size()));
  }
  return out;
}

bool CutAtStop(std::string& text, const std::vector<std::string>& stops) {
  size_t cut = std::string::npos;
  for (const std::string& stop : stops) {
    if (stop.empty()) continue;
    cut = std::min(cut, text.find(stop));
  }
  if (cut == std::string::npos) return false;
  text.resize(cut);
  return true;
}

absl::StatusOr<Generation> GreedyGenerate(const EvalContext& context,
                                          std::span<const int32_t> prompt, int64_t max_new_tokens,
                                          const std::vector<std::string>& stops) {
  model::Model& m = *context.model;
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt has no tokens");
  QTRAIN_ASSIGN_OR_RETURN(
      model::KvCache cache,
      model::KvCache::Create(m, static_cast<int64_t>(prompt.size()) + max_new_tokens));
  std::vector<float> logits(m.config().vocab_size);
  QTRAIN_RETURN_IF_ERROR(m.Decode(prompt, cache, logits));
  const std::vector<int64_t>& eos = m.config().eos_token_ids;
  Generation g;
  for (int64_t step = 0; step < max_new_tokens; ++step) {
    QTRAIN_RETURN_IF_ERROR(CheckCancelled(context));
    // Greedy: the first of the largest logits.
    const auto next =
        static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    if (std::find(eos.begin(), eos.end(), next) != eos.end()) {
      g.stopped = true;
      break;
    }
    g.ids.push_back(next);
    if (!stops.empty()) {
      QTRAIN_ASSIGN_OR_RETURN(g.text, DecodeIds(context, g.ids));
      if (CutAtStop(g.text, stops)) {
        g.stopped = true;
        return g;
      }
    }
    if (step + 1 < max_new_tokens) {
      QTRAIN_RETURN_IF_ERROR(m.Decode(std::span<const int32_t>(&next, 1), cache, logits));
    }
  }
  QTRAIN_ASSIGN_OR_RETURN(g.text, DecodeIds(context, g.ids));
  return g;
}

nlohmann::json ResultSkeleton(const TaskOptions& options) {
  const std::string kind(TaskKindName(options.kind));
  return {{"task", kind},
          {"name", options.name.empty() ? kind : options.name},
          {"metrics", nlohmann::json::object()}};
}

int64_t CodePointCount(std::string_view text) {
  int64_t n = 0;
  for (unsigned char c : text) n += (c & 0xC0) != 0x80;
  return n;
}

}  // namespace qtrain::eval
