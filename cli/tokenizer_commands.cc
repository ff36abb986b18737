// Tokenizer tools: encode, decode, train-tokenizer, tokenize (see docs/tokenizer.md).
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cli/command.h"
#include "cli/flag_checks.h"
#include "cli/json_lines.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "tokenizer/tokenize_corpus.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/trainer.h"

namespace qtrain::cli {
namespace {

using tokenizer::Tokenizer;

// Reads JSON objects from stdin (blank lines skipped), calls `fn` on each, writes its result
// as one line.
template <typename Fn>
absl::Status ForEachJsonLine(Fn&& fn) {
  return ForEachStdinLine(
      [&](const std::string& line, uint64_t line_no) -> absl::StatusOr<std::string> {
        QTRAIN_ASSIGN_OR_RETURN(nlohmann::json j, ParseJsonObjectLine(line, line_no));
        auto result = fn(j);  // a JSON value, or the output line already as text
        if (!result.ok()) return Annotate(result.status(), absl::StrCat("stdin line ", line_no));
        if constexpr (std::is_same_v<std::decay_t<decltype(*result)>, std::string>) {
          return *std::move(result);
        } else {
          return result->dump();
        }
      });
}

// Appends `ids` to `out` as "id," each.
void AppendIdsText(std::span<const uint32_t> ids, std::string* out) {
  char buf[16];
  for (const uint32_t id : ids) {
    char* end = std::to_chars(buf, buf + sizeof(buf), id).ptr;
    *end++ = ',';
    out->append(buf, end);
  }
}

absl::Status RunEncode(const std::string& path) {
  QTRAIN_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::FromFile(path));
  // The output line {"ids":[...]} is written as text while the ids are made: a vector of ids
  // and a JSON tree of them would take several times the memory of a long line's text.
  return ForEachJsonLine([&](const nlohmann::json& j) -> absl::StatusOr<std::string> {
    auto it = j.find("text");
    if (it == j.end() || !it->is_string()) {
      return absl::InvalidArgumentError("missing string field 'text'");
    }
    std::string line = "{\"ids\":[";
    QTRAIN_RETURN_IF_ERROR(
        tok.EncodeTo(it->get_ref<const std::string&>(), [&](std::span<const uint32_t> ids) {
          AppendIdsText(ids, &line);
          return absl::OkStatus();
        }));
    if (line.back() == ',') line.pop_back();
    line += "]}";
    return line;
  });
}

absl::Status RunDecode(const std::string& path, bool skip_special) {
  QTRAIN_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::FromFile(path));
  std::vector<uint32_t> ids;
  return ForEachJsonLine([&](const nlohmann::json& j) -> absl::StatusOr<nlohmann::json> {
    auto it = j.find("ids");
    if (it == j.end() || !it->is_array()) {
      return absl::InvalidArgumentError("missing array field 'ids'");
    }
    ids.clear();
    for (const nlohmann::json& v : *it) {
      if (!v.is_number_unsigned() || v.get<uint64_t>() > UINT32_MAX) {
        return absl::InvalidArgumentError(
            absl::StrCat("'ids' holds ", v.dump(), ", not a token id"));
      }
      ids.push_back(static_cast<uint32_t>(v.get<uint64_t>()));
    }
    QTRAIN_ASSIGN_OR_RETURN(std::string text, tok.Decode(ids, skip_special));
    return nlohmann::json{{"text", text}};
  });
}

absl::Status RunTokenize(const std::string& path, tokenizer::TokenizeCorpusOptions options) {
  QTRAIN_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::FromFile(path));
  QTRAIN_ASSIGN_OR_RETURN(options.tokenizer_sha256, Sha256File(path));
  QTRAIN_ASSIGN_OR_RETURN(tokenizer::TokenizeCorpusResult r,
                          tokenizer::TokenizeCorpus(tok, options));
  std::fprintf(stderr, "tokenize: %llu documents, %llu tokens in %zu shards under %s (%.1f s)\n",
               static_cast<unsigned long long>(r.manifest.num_documents),
               static_cast<unsigned long long>(r.manifest.num_tokens), r.manifest.shards.size(),
               options.out_dir.c_str(), r.seconds);
  return absl::OkStatus();
}

struct TrainArgs {
  tokenizer::BpeTrainerOptions options;
  std::string out_dir;
  std::vector<std::string> inputs;
  bool quiet = false;
};

absl::Status RunTrainTokenizer(TrainArgs args) {
  args.options.progress = !args.quiet;
  std::error_code ec;
  std::filesystem::create_directories(args.out_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("creating ", args.out_dir, ": ", ec.message()));
  QTRAIN_ASSIGN_OR_RETURN(Tokenizer tok, tokenizer::TrainBpeOnFiles(args.inputs, args.options));
  QTRAIN_RETURN_IF_ERROR(WriteFileAtomically(args.out_dir + "/tokenizer.json", tok.ToJson()));
  QTRAIN_RETURN_IF_ERROR(WriteFileAtomically(args.out_dir + "/tokenizer_config.json",
                                             tokenizer::TrainedTokenizerConfig(tok)));
  std::fprintf(stderr, "train-tokenizer: %u tokens (%zu merges) written to %s/tokenizer.json\n",
               tok.vocab_size(), tok.model().merge_count(), args.out_dir.c_str());
  return absl::OkStatus();
}

}  // namespace

void AddTokenizerCommands(CLI::App& app, CommandSelection& selection) {
  {
    auto path = std::make_shared<std::string>();
    CLI::App* cmd = app.add_subcommand(
        "encode", "Encode JSON lines {\"text\": ...} on stdin to {\"ids\": [...]} on stdout");
    cmd->add_option("--tokenizer", *path, "tokenizer.json")->required()->check(RegularFileCheck());
    cmd->callback([&selection, path] { selection.action = [path] { return RunEncode(*path); }; });
  }
  {
    auto path = std::make_shared<std::string>();
    auto skip = std::make_shared<bool>(false);
    CLI::App* cmd = app.add_subcommand(
        "decode", "Decode JSON lines {\"ids\": [...]} on stdin to {\"text\": ...} on stdout");
    cmd->add_option("--tokenizer", *path, "tokenizer.json")->required()->check(RegularFileCheck());
    cmd->add_flag("--skip-special-tokens", *skip, "Leave special tokens out of the text");
    cmd->callback([&selection, path, skip] {
      selection.action = [path, skip] { return RunDecode(*path, *skip); };
    });
  }
  {
    auto path = std::make_shared<std::string>();
    auto opts = std::make_shared<tokenizer::TokenizeCorpusOptions>();
    auto quiet = std::make_shared<bool>(false);
    CLI::App* cmd = app.add_subcommand(
        "tokenize",
        "Turn text files (.jsonl: one document per line from \"text\"; otherwise one document "
        "per file) into token shards and a manifest");
    cmd->add_option("--tokenizer", *path, "tokenizer.json")->required()->check(RegularFileCheck());
    cmd->add_option("--out", opts->out_dir, "Output directory (must not hold a dataset)")
        ->required();
    cmd->add_option("--shard-tokens", opts->shard_tokens, "Tokens per shard")
        ->capture_default_str()
        ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 32));
    cmd->add_option("--jobs", opts->jobs, "Encoding threads")
        ->capture_default_str()
        ->check(CLI::Range(1, 1024));
    cmd->add_option("--eos-token", opts->eos_token, "Token appended after every document")
        ->capture_default_str();
    cmd->add_flag("--quiet", *quiet, "No progress on stderr");
    cmd->add_option("inputs", opts->inputs, "Input files")->required()->check(RegularFileCheck());
    cmd->callback([&selection, path, opts, quiet] {
      selection.action = [path, opts, quiet] {
        opts->progress = !*quiet;
        return RunTokenize(*path, *opts);
      };
    });
  }
  {
    auto args = std::make_shared<TrainArgs>();
    CLI::App* cmd = app.add_subcommand(
        "train-tokenizer",
        "Train a byte-level BPE tokenizer (Qwen2 pre-tokenizer) and write tokenizer.json and "
        "tokenizer_config.json");
    cmd->add_option("--vocab-size", args->options.vocab_size,
                    "Vocabulary size: 256 bytes + merges + special tokens")
        ->required()
        ->check(CLI::Range(257u, 1u << 24));
    cmd->add_option("--out", args->out_dir, "Output directory")->required();
    cmd->add_option("--special-token", args->options.special_tokens,
                    "Special tokens (repeatable; the first is the end-of-text token)")
        ->capture_default_str();
    cmd->add_option("--min-frequency", args->options.min_frequency,
                    "Merge only pairs seen at least this often")
        ->capture_default_str();
    cmd->add_option("--jobs", args->options.jobs, "Counting threads")
        ->capture_default_str()
        ->check(CLI::Range(1, 1024));
    cmd->add_flag("--quiet", args->quiet, "No progress on stderr");
    cmd->add_option("inputs", args->inputs, "Input files (.jsonl or plain text)")
        ->required()
        ->check(RegularFileCheck());
    cmd->callback(
        [&selection, args] { selection.action = [args] { return RunTrainTokenizer(*args); }; });
  }
}

}  // namespace qtrain::cli
