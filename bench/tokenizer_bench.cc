// Tokenizer encode throughput on a JSONL corpus ({"text": ...} per line), single-threaded and
// with N threads (documents spread over a pool). Prints one JSON object per measurement, with
// the token count and the sha256 of all ids (little-endian uint32, corpus order) so that runs
// of other tokenizers can be compared for equal output (bench/tokenizer_compare.py does).
//
//   tokenizer_bench --tokenizer tokenizer.json --corpus corpus.jsonl [--threads 1,2] [--repeat 3]
//
// With --long-piece BYTES instead of --corpus it times single pieces of that many bytes (one
// letter repeated, two letters alternating, random letters: one pre-token each, merged whole).
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "common/sha256.h"
#include "nlohmann/json.hpp"
#include "tokenizer/tokenizer.h"
#include "tokenizer/work_pool.h"

namespace {

using qtrain::tokenizer::Tokenizer;

// sha256 of all ids as little-endian uint32, in corpus order.
std::string IdsSha256(const std::vector<std::vector<uint32_t>>& all) {
  qtrain::Sha256 sha;
  for (const auto& ids : all) sha.Update(ids.data(), ids.size() * sizeof(uint32_t));
  return sha.FinishHex();
}

// Times Encode on one-piece texts of `bytes` bytes; one JSON object per kind of text.
int BenchLongPieces(const Tokenizer& tok, size_t bytes) {
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> letter('a', 'z');
  std::string random(bytes, 'a');
  for (char& c : random) c = static_cast<char>(letter(rng));
  std::string pair(bytes, 'a');
  for (size_t k = 1; k < bytes; k += 2) pair[k] = 'b';
  const std::pair<const char*, std::string> texts[] = {
      {"one_letter", std::string(bytes, 'a')}, {"two_letters", pair}, {"random_letters", random}};
  for (const auto& [name, text] : texts) {
    std::vector<uint32_t> ids;
    const auto start = std::chrono::steady_clock::now();
    if (!tok.Encode(text, &ids).ok()) {
      std::fprintf(stderr, "encode failed\n");
      return 1;
    }
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    qtrain::Sha256 sha;
    sha.Update(ids.data(), ids.size() * sizeof(uint32_t));
    std::printf(
        "{\"impl\": \"qtrain\", \"piece\": \"%s\", \"bytes\": %zu, \"seconds\": %.3f, "
        "\"mb_per_s\": %.2f, \"tokens\": %zu, \"ids_sha256\": \"%s\"}\n",
        name, bytes, s, bytes / 1e6 / s, ids.size(), sha.FinishHex().c_str());
    std::fflush(stdout);
  }
  return 0;
}

int Main(int argc, char** argv) {
  std::string tokenizer_path, corpus_path, threads_arg = "1";
  size_t long_piece = 0;
  int repeat = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--tokenizer"))
      tokenizer_path = argv[i + 1];
    else if (!std::strcmp(argv[i], "--corpus"))
      corpus_path = argv[i + 1];
    else if (!std::strcmp(argv[i], "--threads"))
      threads_arg = argv[i + 1];
    else if (!std::strcmp(argv[i], "--repeat"))
      repeat = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--long-piece"))
      long_piece = std::strtoull(argv[i + 1], nullptr, 10);
  }
  if (tokenizer_path.empty() || (corpus_path.empty() && long_piece == 0)) {
    std::fprintf(stderr,
                 "usage: %s --tokenizer FILE (--corpus FILE.jsonl [--threads 1,2,4] "
                 "[--repeat N] | --long-piece BYTES)\n",
                 argv[0]);
    return 2;
  }
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<Tokenizer> tok = Tokenizer::FromFile(tokenizer_path);
  if (!tok.ok()) {
    std::fprintf(stderr, "%s\n", tok.status().ToString().c_str());
    return 1;
  }
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (long_piece > 0) return BenchLongPieces(*tok, long_piece);
  std::vector<std::string> docs;
  size_t bytes = 0;
  {
    std::ifstream in(corpus_path);
    std::string line;
    while (std::getline(in, line)) {
      docs.push_back(nlohmann::json::parse(line)["text"].get<std::string>());
      bytes += docs.back().size();
    }
  }
  std::printf("{\"impl\": \"qtrain\", \"load_seconds\": %.3f, \"docs\": %zu, \"bytes\": %zu}\n",
              load_s, docs.size(), bytes);
  size_t pos = 0;
  while (pos <= threads_arg.size()) {
    size_t comma = threads_arg.find(',', pos);
    if (comma == std::string::npos) comma = threads_arg.size();
    const int threads = std::atoi(threads_arg.substr(pos, comma - pos).c_str());
    pos = comma + 1;
    if (threads <= 0) continue;
    qtrain::tokenizer::WorkPool pool(threads);
    std::vector<std::vector<uint32_t>> out(docs.size());
    double best = 1e30;
    for (int r = 0; r < repeat; ++r) {
      for (auto& ids : out) ids.clear();
      std::atomic<bool> failed{false};
      const auto start = std::chrono::steady_clock::now();
      pool.Run(docs.size(), [&](size_t k) {
        if (!tok->Encode(docs[k], &out[k]).ok()) failed = true;
      });
      const double s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (failed) {
        std::fprintf(stderr, "encode failed\n");
        return 1;
      }
      best = std::min(best, s);
    }
    size_t tokens = 0;
    for (const auto& ids : out) tokens += ids.size();
    std::printf(
        "{\"impl\": \"qtrain\", \"threads\": %d, \"seconds\": %.4f, \"mb_per_s\": %.2f, "
        "\"tokens\": %zu, \"ids_sha256\": \"%s\"}\n",
        threads, best, bytes / 1e6 / best, tokens, IdsSha256(out).c_str());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Main(argc, argv); }
