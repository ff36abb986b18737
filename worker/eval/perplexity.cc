// perplexity: token-weighted negative log-likelihood over strided windows of a data manifest's
// token stream or of JSONL texts.
#include "worker/eval/perplexity.h"

#include <cmath>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "tokenizer/shard_format.h"
#include "worker/eval/common.h"
#include "worker/eval/rows.h"
#include "worker/eval/tasks.h"

namespace qtrain::eval {
namespace {

// The tokens to score, and which of them are targets (the prefix token before each JSONL text
// is context only, so that the scored tokens are exactly the texts').
struct Stream {
  std::vector<int32_t> ids;
  std::vector<bool> target;  // empty: every token
  int64_t text_bytes = 0;    // > 0 when the text is known
};

// A dataset directory or its manifest.json; anything else is read as JSONL.
bool IsManifest(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_directory(path, ec) ||
         (absl::EndsWith(path, ".json") && !absl::EndsWith(path, ".jsonl"));
}

absl::StatusOr<Stream> ManifestStream(const std::string& path, const EvalContext& context,
                                      int64_t max_tokens) {
  std::error_code ec;
  const std::string manifest = std::filesystem::is_directory(path, ec)
                                   ? (std::filesystem::path(path) / "manifest.json").string()
                                   : path;
  tokenizer::DatasetOptions opts;
  opts.vocab_size = static_cast<uint32_t>(context.tokenizer->vocab_size());
  absl::StatusOr<tokenizer::Dataset> data = tokenizer::OpenDataset(manifest, opts);
  if (!data.ok()) return Annotate(data.status(), absl::StrCat("--data ", path));
  Stream s;
  const int64_t vocab = context.model->config().vocab_size;
  for (const tokenizer::ShardReader& shard : data->shards) {
    for (uint32_t id : shard.tokens()) {
      if (max_tokens > 0 && static_cast<int64_t>(s.ids.size()) >= max_tokens) return s;
      if (static_cast<int64_t>(id) >= vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": token id ", id, " is outside the model's vocabulary of ", vocab));
      }
      s.ids.push_back(static_cast<int32_t>(id));
    }
  }
  return s;
}

absl::StatusOr<Stream> TextStream(const std::string& path, const EvalContext& context,
                                  int64_t max_tokens) {
  QTRAIN_ASSIGN_OR_RETURN(const std::string content, ReadFileToString(path));
  QTRAIN_ASSIGN_OR_RETURN(const std::vector<TextRow> rows, ParseTextRows(content, path));
  QTRAIN_ASSIGN_OR_RETURN(const int32_t prefix, PrefixToken(context));
  Stream s;
  for (const TextRow& row : rows) {
    if (max_tokens > 0 && static_cast<int64_t>(s.ids.size()) >= max_tokens) break;
    QTRAIN_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                            EncodeText(context, row.text, absl::StrCat(path, ":", row.line)));
    s.ids.push_back(prefix);
    s.target.push_back(false);
    s.ids.insert(s.ids.end(), ids.begin(), ids.end());
    s.target.insert(s.target.end(), ids.size(), true);
    s.text_bytes += static_cast<int64_t>(row.text.size());
  }
  if (max_tokens > 0 && static_cast<int64_t>(s.ids.size()) > max_tokens) {
    s.ids.resize(max_tokens);
    s.target.resize(max_tokens);
    s.text_bytes = 0;  // a text was cut: its bytes are no longer all scored
  }
  return s;
}

struct Sums {
  double loglikelihood = 0;
  int64_t tokens = 0;
};

nlohmann::json PerplexityOf(const Sums& s) {
  const double nll = s.tokens > 0 ? -s.loglikelihood / static_cast<double>(s.tokens) : 0.0;
  return {{"tokens", s.tokens}, {"nll", nll}, {"perplexity", std::exp(nll)}};
}

// log p(ids[begin + t + 1] | ids[begin..begin + t]) for each input position t of the window.
absl::StatusOr<std::vector<float>> WindowLogprobs(model::Model& m, const std::vector<int32_t>& ids,
                                                  const Window& w) {
  const std::span<const int32_t> input(ids.data() + w.begin, w.end - w.begin);
  const std::span<const int32_t> targets(ids.data() + w.begin + 1, w.end - w.begin);
  std::vector<float> lp;
  QTRAIN_RETURN_IF_ERROR(
      m.Forward({.batch_size = 1, .seq_len = w.end - w.begin, .ids = input, .targets = targets},
                {.target_logprobs = &lp})
          .status());
  return lp;
}

}  // namespace

std::vector<Window> PlanWindows(int64_t n, int64_t seq_len, int64_t stride, int64_t limit) {
  std::vector<Window> windows;
  int64_t scored_through = 0;  // token 0 has no context: it is never a target
  for (int64_t begin = 0; begin + 1 < n; begin += stride) {
    if (limit > 0 && static_cast<int64_t>(windows.size()) >= limit) break;
    const int64_t end = std::min(begin + seq_len, n - 1);
    if (end > scored_through) windows.push_back({begin, end, scored_through + 1});
    scored_through = std::max(scored_through, end);
    if (end == n - 1) break;
  }
  return windows;
}

int64_t PositionBucket(int64_t t) {
  int64_t b = 0;
  while ((int64_t{1} << b) <= t) ++b;
  return b;  // [0,1) -> 0, [1,2) -> 1, [2,4) -> 2, ...
}

absl::StatusOr<nlohmann::json> RunPerplexity(const TaskOptions& options, EvalContext& context) {
  const int64_t context_length = ModelContextLength(*context.model);
  const int64_t seq_len =
      options.seq_len > 0 ? options.seq_len : std::min<int64_t>(context_length, 2048);
  if (seq_len < 1) return absl::InvalidArgumentError("seq_len: must be at least 1");
  if (seq_len > context_length) {
    return absl::InvalidArgumentError(absl::StrCat("seq_len: ", seq_len,
                                                   " is more than the model's context of ",
                                                   context_length, " positions"));
  }
  const int64_t stride = options.stride > 0 ? options.stride : seq_len;
  if (stride > seq_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("stride: ", stride, " is more than seq_len ", seq_len,
                     " (tokens between windows would not be scored)"));
  }
  // With a window limit, only the tokens those windows cover are read.
  const int64_t max_tokens = options.limit > 0 ? (options.limit - 1) * stride + seq_len + 1 : 0;
  QTRAIN_ASSIGN_OR_RETURN(Stream stream, IsManifest(options.data)
                                             ? ManifestStream(options.data, context, max_tokens)
                                             : TextStream(options.data, context, max_tokens));
  const auto n = static_cast<int64_t>(stream.ids.size());
  if (n < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.data, ": fewer than 2 tokens, nothing to score"));
  }
  const std::vector<Window> windows = PlanWindows(n, seq_len, stride, options.limit);
  const std::string name = ResultSkeleton(options)["name"];
  Sums total;
  std::vector<Sums> buckets(PositionBucket(seq_len - 1) + 1);  // t in [0, seq_len)
  for (size_t w = 0; w < windows.size(); ++w) {
    QTRAIN_RETURN_IF_ERROR(CheckCancelled(context));
    const Window& win = windows[w];
    QTRAIN_ASSIGN_OR_RETURN(const std::vector<float> lp,
                            WindowLogprobs(*context.model, stream.ids, win));
    for (int64_t target = win.first_target; target <= win.end; ++target) {
      if (!stream.target.empty() && !stream.target[target]) continue;
      const int64_t t = target - win.begin - 1;  // the input position that predicts it
      const double v = lp[t];
      total.loglikelihood += v;
      ++total.tokens;
      Sums& b = buckets[PositionBucket(t)];
      b.loglikelihood += v;
      ++b.tokens;
    }
    ReportProgress(context, name, static_cast<int64_t>(w) + 1,
                   static_cast<int64_t>(windows.size()));
  }
  nlohmann::json result = ResultSkeleton(options);
  nlohmann::json metrics = PerplexityOf(total);
  metrics["loglikelihood"] = total.loglikelihood;
  metrics["windows"] = static_cast<int64_t>(windows.size());
  if (stream.text_bytes > 0) {
    metrics["bits_per_byte"] =
        -total.loglikelihood / std::log(2.0) / static_cast<double>(stream.text_bytes);
  }
  result["metrics"] = std::move(metrics);
  result["seq_len"] = seq_len;
  result["stride"] = stride;
  nlohmann::json bucket_list = nlohmann::json::array();
  for (size_t b = 0; b < buckets.size(); ++b) {
    nlohmann::json entry = PerplexityOf(buckets[b]);
    entry["start"] = b == 0 ? 0 : int64_t{1} << (b - 1);
    entry["end"] = std::min<int64_t>(int64_t{1} << b, seq_len);
    bucket_list.push_back(std::move(entry));
  }
  result["buckets"] = std::move(bucket_list);
  return result;
}

}  // namespace qtrain::eval
