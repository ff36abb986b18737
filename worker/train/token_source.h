// Where training tokens come from: one stream of token ids addressed by position (the shards of
// a manifest, concatenated in order). The data plan picks positions; a TokenSource reads them.
#ifndef QTRAIN_WORKER_TRAIN_TOKEN_SOURCE_H_
#define QTRAIN_WORKER_TRAIN_TOKEN_SOURCE_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace qtrain::train {

class TokenSource {
 public:
  virtual ~TokenSource() = default;
  virtual int64_t size() const = 0;
  // Copies tokens [begin, begin + out.size()) into `out`; OUT_OF_RANGE past the end.
  virtual absl::Status Read(int64_t begin, std::span<int32_t> out) const = 0;
  // Identifies the data (e.g. the manifest's sha256), for the data-plan hash.
  virtual std::string fingerprint() const = 0;
};

// Tokens held in memory (tests, small corpora).
class InMemoryTokenSource : public TokenSource {
 public:
  InMemoryTokenSource(std::vector<int32_t> tokens, std::string fingerprint)
      : tokens_(std::move(tokens)), fingerprint_(std::move(fingerprint)) {}
  int64_t size() const override { return static_cast<int64_t>(tokens_.size()); }
  absl::Status Read(int64_t begin, std::span<int32_t> out) const override;
  std::string fingerprint() const override { return fingerprint_; }

 private:
  std::vector<int32_t> tokens_;
  std::string fingerprint_;
};

}  // namespace qtrain::train

#endif  // QTRAIN_WORKER_TRAIN_TOKEN_SOURCE_H_
