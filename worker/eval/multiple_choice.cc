// multiple-choice: acc and acc_norm as lm-evaluation-harness computes them for
// output_type: multiple_choice (target_delimiter " ").
#include "worker/eval/multiple_choice.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "tokenizer/utf8.h"
#include "worker/eval/common.h"
#include "worker/eval/rows.h"
#include "worker/eval/tasks.h"

namespace qtrain::eval {
namespace {

// Python's str.isspace(): the code points of bidirectional class WS, B or S, or category Zs.
bool IsPythonSpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// The length in bytes of `text` after Python's str.rstrip(); stops at ill-formed UTF-8.
size_t PythonRstripLength(std::string_view text) {
  size_t keep = text.size();
  while (keep > 0) {
    size_t start = keep - 1;
    while (start > 0 && keep - start < 4 &&
           (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) {
      --start;
    }
    const std::string_view ch = text.substr(start, keep - start);
    if (tokenizer::WellFormedPrefixLength(ch) != ch.size()) break;
    size_t len = 0;
    if (!IsPythonSpace(
            tokenizer::DecodeValidUtf8(reinterpret_cast<const unsigned char*>(ch.data()), &len))) {
      break;
    }
    keep = start;
  }
  return keep;
}

}  // namespace

absl::StatusOr<EncodedPair> EncodePair(const EvalContext& context, const std::string& text,
                                       const std::string& continuation, std::string_view where) {
  EncodedPair pair;
  // The harness moves the whitespace that Python's str.rstrip() removes (Unicode's too).
  const size_t keep = PythonRstripLength(text);
  const std::string ctx = text.substr(0, keep);
  const std::string cont = text.substr(keep) + continuation;
  // A context of only whitespace leaves no token to predict the continuation's first from (the
  // harness has no defined score there): it is scored like an empty context.
  if (ctx.empty()) {
    QTRAIN_ASSIGN_OR_RETURN(const int32_t prefix, PrefixToken(context));
    pair.context = {prefix};
    QTRAIN_ASSIGN_OR_RETURN(pair.continuation, EncodeText(context, cont, where));
    return pair;
  }
  QTRAIN_ASSIGN_OR_RETURN(std::vector<int32_t> whole, EncodeText(context, ctx + cont, where));
  QTRAIN_ASSIGN_OR_RETURN(pair.context, EncodeText(context, ctx, where));
  const size_t n = std::min(pair.context.size(), whole.size());
  pair.continuation.assign(whole.begin() + static_cast<std::ptrdiff_t>(n), whole.end());
  return pair;
}

absl::StatusOr<std::vector<double>> ContinuationLogLikelihoods(
    const EvalContext& context, const std::vector<EncodedPair>& pairs, std::string_view where) {
  const int64_t max_length = ModelContextLength(*context.model);
  std::vector<std::vector<int32_t>> seqs;
  seqs.reserve(pairs.size());
  for (const EncodedPair& p : pairs) {
    if (p.continuation.empty()) {
      seqs.emplace_back();
      continue;
    }
    if (p.context.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          std::string(where), ": a continuation has no context token to be predicted from"));
    }
    if (static_cast<int64_t>(p.continuation.size()) > max_length) {
      return absl::InvalidArgumentError(
          absl::StrCat(std::string(where), ": a continuation has ", p.continuation.size(),
                       " tokens, more than the model's context of ", max_length, " positions"));
    }
    // The harness: (context + continuation)[-(max_length + 1):], the last token only a target.
    std::vector<int32_t> all = p.context;
    all.insert(all.end(), p.continuation.begin(), p.continuation.end());
    const auto keep = std::min<int64_t>(static_cast<int64_t>(all.size()), max_length + 1);
    seqs.emplace_back(all.end() - keep, all.end());
  }
  QTRAIN_ASSIGN_OR_RETURN(std::vector<std::vector<float>> logprobs,
                          NextTokenLogprobs(*context.model, seqs));
  std::vector<double> out(pairs.size(), 0.0);
  for (size_t i = 0; i < pairs.size(); ++i) {
    const size_t n = seqs[i].size();
    const size_t cont = pairs[i].continuation.size();
    // Target t + 1 is predicted at t: the continuation's tokens are targets n - cont .. n - 1.
    for (size_t t = n - cont - 1; cont > 0 && t + 1 < n; ++t) out[i] += logprobs[i][t];
  }
  return out;
}

int64_t ArgMax(const std::vector<double>& values) {
  int64_t best = 0;
  for (size_t i = 1; i < values.size(); ++i) {
    if (values[i] > values[best]) best = static_cast<int64_t>(i);
  }
  return best;
}

absl::StatusOr<nlohmann::json> RunMultipleChoice(const TaskOptions& options, EvalContext& context) {
  QTRAIN_ASSIGN_OR_RETURN(const std::string content, ReadFileToString(options.data));
  QTRAIN_ASSIGN_OR_RETURN(const std::vector<ChoiceRow> rows,
                          ParseChoiceRows(content, options.data, options.limit));
  nlohmann::json result = ResultSkeleton(options);
  nlohmann::json examples = nlohmann::json::array();
  int64_t correct = 0, correct_norm = 0;
  const auto total = static_cast<int64_t>(rows.size());
  for (int64_t r = 0; r < total; ++r) {
    QTRAIN_RETURN_IF_ERROR(CheckCancelled(context));
    const ChoiceRow& row = rows[r];
    const std::string where = absl::StrCat(options.data, ":", row.line);
    std::vector<EncodedPair> pairs;
    for (const std::string& choice : row.choices) {
      QTRAIN_ASSIGN_OR_RETURN(EncodedPair pair,
                              EncodePair(context, row.context, " " + choice, where));
      pairs.push_back(std::move(pair));
    }
    QTRAIN_ASSIGN_OR_RETURN(std::vector<double> lls,
                            ContinuationLogLikelihoods(context, pairs, where));
    // acc_norm divides by the choice's length in characters (without the delimiter), as the
    // harness's len(choice); an empty choice scores -inf there.
    std::vector<double> normalized(lls.size());
    for (size_t i = 0; i < lls.size(); ++i) {
      const int64_t chars = CodePointCount(row.choices[i]);
      normalized[i] = chars > 0 ? lls[i] / static_cast<double>(chars)
                                : -std::numeric_limits<double>::infinity();
    }
    const int64_t pred = ArgMax(lls);
    const int64_t pred_norm = ArgMax(normalized);
    correct += pred == row.label;
    correct_norm += pred_norm == row.label;
    if (options.per_example) {
      examples.push_back({{"loglikelihoods", lls},
                          {"label", row.label},
                          {"pred", pred},
                          {"pred_norm", pred_norm}});
    }
    ReportProgress(context, result["name"].get_ref<const std::string&>(), r + 1, total);
  }
  result["metrics"] = {{"acc", static_cast<double>(correct) / static_cast<double>(total)},
                       {"acc_norm", static_cast<double>(correct_norm) / static_cast<double>(total)},
                       {"count", total}};
  if (options.per_example) result["examples"] = std::move(examples);
  return result;
}

}  // namespace qtrain::eval
