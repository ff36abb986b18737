// The conformance suite on the CPU backend: every case passes; and the suite can fail: backends
// that forward to the CPU backend but break one op (a flipped sign, a missed accumulation, an
// off-by-one causal mask, a wrong GQA group, an unwritten output, a nondeterministic result, a
// write past the end, a missing validation) fail cases of that op and of no other.
#include "kernels/conformance/conformance.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <memory>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "kernels/forwarding_backend.h"
#include "kernels/ops.h"

namespace qtrain::kernels {
namespace {

// ---------------------------------------------------------------------------------------------
// The corruptions. Those that compute on their own read the CPU backend's memory directly, which
// only this test may do (it knows the inner backend is the CPU's).

class FlippedLinearForward : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  OpStatus LinearForward(ConstTensor x, ConstTensor weight, ConstTensor bias, Tensor y,
                         int64_t rows, int64_t in, int64_t out) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(inner().LinearForward(x, weight, bias, y, rows, in, out));
    return inner().Scale(y, rows * out, -1.0f);
  }
};

// Overwrites the gradients instead of accumulating into them.
class OverwritingRmsNormBackward : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  OpStatus RmsNormBackward(ConstTensor dout, ConstTensor x, ConstTensor weight, const float* rstd,
                           Tensor dx, float* dweight, int64_t rows, int64_t dim) override {
    if (rows > 0 && dim > 0) {
      if (!dx.is_null()) QTRAIN_KERNEL_RETURN_IF_ERROR(inner().Fill(dx, rows * dim, 0.0f));
      if (dweight != nullptr) QTRAIN_KERNEL_RETURN_IF_ERROR(inner().Fill(dweight, dim, 0.0f));
    }
    return inner().RmsNormBackward(dout, x, weight, rstd, dx, dweight, rows, dim);
  }
};

// A naive attention forward with a bug: `extra_keys` more keys visible than causal (an
// off-by-one mask), or query head h reading KV head h % Hkv instead of h / (H / Hkv).
class BuggyAttentionForward : public ForwardingBackend {
 public:
  BuggyAttentionForward(Backend& inner, int64_t extra_keys, bool interleaved_groups)
      : ForwardingBackend(inner), extra_keys_(extra_keys), interleaved_(interleaved_groups) {}
  OpStatus AttentionForward(ConstTensor q_tensor, ConstTensor k_tensor, ConstTensor v_tensor,
                            Tensor o_tensor, float* lse, const AttentionShape& s) override {
    if (!q_tensor.is_f32()) {
      return inner().AttentionForward(q_tensor, k_tensor, v_tensor, o_tensor, lse, s);
    }
    const float* q = q_tensor.f32();
    const float* k = k_tensor.f32();
    const float* v = v_tensor.f32();
    float* o = o_tensor.f32();
    if (s.batch <= 0 || s.seq_len < 0 || s.num_heads <= 0 || s.num_kv_heads <= 0 ||
        s.head_dim <= 0 || s.num_heads % s.num_kv_heads != 0 ||
        (s.kv_capacity != 0 && s.kv_capacity < s.kv_len())) {
      return OpStatus::Error("AttentionForward: invalid shape");
    }
    const int64_t T = s.seq_len, R = s.kv_rows(), H = s.num_heads, Hkv = s.num_kv_heads,
                  D = s.head_dim, group = H / Hkv;
    const double scale = s.softmax_scale > 0 ? s.softmax_scale : 1.0 / std::sqrt(double(D));
    std::vector<double> p(R);
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t t = 0; t < T; ++t) {
          const int64_t g = interleaved_ ? h % Hkv : h / group;
          const int64_t visible = std::min(s.past_len + t + 1 + extra_keys_, s.kv_len());
          const float* qr = q + ((b * T + t) * H + h) * D;
          double max = -std::numeric_limits<double>::infinity();
          for (int64_t j = 0; j < visible; ++j) {
            const float* kr = k + ((b * R + j) * Hkv + g) * D;
            double dot = 0;
            for (int64_t i = 0; i < D; ++i) dot += double(qr[i]) * kr[i];
            p[j] = dot * scale;
            max = std::max(max, p[j]);
          }
          double sum = 0;
          for (int64_t j = 0; j < visible; ++j) sum += std::exp(p[j] - max);
          const double row_lse = max + std::log(sum);
          lse[(b * H + h) * T + t] = static_cast<float>(row_lse);
          float* orow = o + ((b * T + t) * H + h) * D;
          for (int64_t i = 0; i < D; ++i) {
            double acc = 0;
            for (int64_t j = 0; j < visible; ++j)
              acc += std::exp(p[j] - row_lse) * v[((b * R + j) * Hkv + g) * D + i];
            orow[i] = static_cast<float>(acc);
          }
        }
    return OpStatus::Ok();
  }

 private:
  int64_t extra_keys_;
  bool interleaved_;
};

// Returns without writing its output.
class IdleSwigluForward : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  OpStatus SwigluForward(ConstTensor gate, ConstTensor up, Tensor out, int64_t rows,
                         int64_t dim) override {
    if (rows < 0 || dim <= 0) return OpStatus::Error("SwigluForward: bad shape");
    return OpStatus::Ok();
  }
};

// Accurate, but every other call differs by one ulp in its first element.
class NondeterministicResidualForward : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  OpStatus ResidualForward(ConstTensor a, ConstTensor b, Tensor out, int64_t n) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(inner().ResidualForward(a, b, out, n));
    if (n > 0 && (calls_++ % 2) == 1) {
      return inner().Scale(out, 1, 1.0f + std::numeric_limits<float>::epsilon());
    }
    return OpStatus::Ok();
  }

 private:
  int64_t calls_ = 0;
};

// Writes one element past the end of dtable.
class OverrunningEmbeddingBackward : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  OpStatus EmbeddingBackward(const int32_t* ids, ConstTensor dout, float* dtable, int64_t rows,
                             int64_t vocab, int64_t dim) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(inner().EmbeddingBackward(ids, dout, dtable, rows, vocab, dim));
    return inner().Fill(dtable + vocab * dim, 1, 0.0f);
  }
};

// Drops the embedding table's gradient.
class LmHeadBackwardWithoutDembedding : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  OpStatus LmHeadBackward(const float* dlogits, ConstTensor y, ConstTensor embedding, Tensor dy,
                          float* dembedding, int64_t rows, int64_t vocab, int64_t dim) override {
    return inner().LmHeadBackward(dlogits, y, embedding, dy, nullptr, rows, vocab, dim);
  }
};

// Counts ignored rows as valid.
class CrossEntropyCountingIgnoredRows : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  OpStatus CrossEntropyForward(const float* logits, const int32_t* labels, float* losses,
                               float* lse, double* loss_sum, int64_t* num_valid, int64_t rows,
                               int64_t vocab, int32_t ignore_index) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(inner().CrossEntropyForward(
        logits, labels, losses, lse, loss_sum, num_valid, rows, vocab, ignore_index));
    if (num_valid != nullptr) *num_valid = rows;
    return OpStatus::Ok();
  }
};

// Skips validation: a negative row count is accepted as empty.
class UnvalidatedCrossEntropyBackward : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  OpStatus CrossEntropyBackward(const float* logits, const int32_t* labels, const float* lse,
                                float grad_scale, float* dlogits, int64_t rows, int64_t vocab,
                                int32_t ignore_index) override {
    if (rows < 0) return OpStatus::Ok();
    return inner().CrossEntropyBackward(logits, labels, lse, grad_scale, dlogits, rows, vocab,
                                        ignore_index);
  }
};

// A multi-tensor AdamW that forgets the working copies.
class AdamWMultiStepWithoutWorkingCopies : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  OpStatus AdamWMultiStep(const AdamWTensor* tensors, int64_t count,
                          const AdamWParams& params) override {
    std::vector<AdamWTensor> copy(tensors, tensors + std::max<int64_t>(count, 0));
    for (AdamWTensor& t : copy) t.working_copy = nullptr;
    return inner().AdamWMultiStep(count > 0 ? copy.data() : tensors, count, params);
  }
};

// A multi-tensor AdamW that writes every working copy as bf16, whatever its dtype.
class AdamWMultiStepWithBf16Copies : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  OpStatus AdamWMultiStep(const AdamWTensor* tensors, int64_t count,
                          const AdamWParams& params) override {
    std::vector<AdamWTensor> copy(tensors, tensors + std::max<int64_t>(count, 0));
    for (AdamWTensor& t : copy) {
      if (!t.working_copy.is_null()) t.working_copy = {t.working_copy.data(), DType::kBfloat16};
    }
    return inner().AdamWMultiStep(count > 0 ? copy.data() : tensors, count, params);
  }
};

// Block sums that leave out the last block when it is partial.
class BlockSumsWithoutThePartialBlock : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  OpStatus BlockSumsOfSquares(const float* x, int64_t n, int64_t block_elements,
                              double* sums) override {
    if (block_elements > 0 && n % block_elements != 0) n -= n % block_elements;
    return inner().BlockSumsOfSquares(x, n, block_elements, sums);
  }
};

// bf16 outputs of ResidualForward off by `ulps` units in the last place (the bits moved away from
// zero): one ulp is a rounding difference the bf16 tolerance accepts, eight are an error.
// Moves every 16-bit output of ResidualForward `ulps` steps (its bits, bf16 or fp16).
class HalfUlpsOffResidualForward : public ForwardingBackend {
 public:
  HalfUlpsOffResidualForward(Backend& inner, uint16_t ulps)
      : ForwardingBackend(inner), ulps_(ulps) {}
  OpStatus ResidualForward(ConstTensor a, ConstTensor b, Tensor out, int64_t n) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(inner().ResidualForward(a, b, out, n));
    if (!out.is_f32()) {
      auto* bits = static_cast<uint16_t*>(out.data());
      for (int64_t i = 0; i < n; ++i) bits[i] = uint16_t(bits[i] + ulps_);
    }
    return OpStatus::Ok();
  }

 private:
  uint16_t ulps_;
};

std::string Failures(const std::vector<ConformanceCase>& cases) {
  std::vector<ConformanceCase> failed;
  for (const ConformanceCase& c : cases)
    if (!c.passed) failed.push_back(c);
  return FormatConformanceReport(failed);
}

TEST(ConformanceTest, CpuBackendPassesEveryCase) {
  const auto start = std::chrono::steady_clock::now();
  const std::vector<ConformanceCase> cases = RunConformance(CpuBackend(), {});
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("conformance, cpu backend: %zu cases in %.2f s\n", cases.size(), seconds);
  ASSERT_GT(cases.size(), 300u);
  // Every op of the Backend interface is covered.
  std::set<std::string> ops;
  for (const ConformanceCase& c : cases) ops.insert(c.op);
  for (const char* op : {"Alloc",
                         "CopyHostToBackend",
                         "CopyBackendToHost",
                         "CopyWithinBackend",
                         "Fill",
                         "Scale",
                         "Cast",
                         "Synchronize",
                         "EmbeddingForward",
                         "EmbeddingBackward",
                         "RmsNormForward",
                         "RmsNormBackward",
                         "LinearForward",
                         "LinearBackward",
                         "LmHeadForward",
                         "LmHeadBackward",
                         "RopeForward",
                         "RopeBackward",
                         "AttentionForward",
                         "AttentionBackward",
                         "DcaAttentionForward",
                         "SwigluForward",
                         "SwigluBackward",
                         "ResidualForward",
                         "ResidualBackward",
                         "CrossEntropyForward",
                         "CrossEntropyBackward",
                         "CrossEntropyForwardBackward",
                         "AdamWStep",
                         "AdamWMultiStep",
                         "SumOfSquares",
                         "BlockSumsOfSquares"}) {
    EXPECT_TRUE(ops.count(op)) << op;
  }
  bool all_passed = true;
  for (const ConformanceCase& c : cases) all_passed = all_passed && c.passed;
  EXPECT_TRUE(all_passed) << Failures(cases);
}

TEST(ConformanceTest, QuickModeFilterAndSeed) {
  ConformanceOptions options;
  options.quick = true;
  const std::vector<ConformanceCase> quick = RunConformance(CpuBackend(), options);
  EXPECT_TRUE(std::all_of(quick.begin(), quick.end(), [](const auto& c) { return c.passed; }))
      << Failures(quick);
  options.filter = "rope";  // case-insensitive substring of the op name
  options.seed = 7;
  const std::vector<ConformanceCase> rope = RunConformance(CpuBackend(), options);
  ASSERT_FALSE(rope.empty());
  for (const ConformanceCase& c : rope) {
    EXPECT_TRUE(c.op == "RopeForward" || c.op == "RopeBackward") << c.op;
    EXPECT_TRUE(c.passed) << c.op << " " << c.shape << " " << c.check << " " << c.message;
  }
  EXPECT_LT(rope.size(), quick.size());
  const std::string report = FormatConformanceReport(rope);
  EXPECT_NE(report.find(std::to_string(rope.size()) + " cases, 0 failed"), std::string::npos)
      << report;
}

struct Corruption {
  const char* name;
  std::function<std::unique_ptr<Backend>(Backend&)> make;
  const char* op;          // the only op that may fail
  const char* check;       // a substring of a check that must fail ("" for any)
  bool bf16_fails = true;  // the bf16 pass notices it too (not where the op has no bf16 pass,
                           // or the corruption is below bf16's precision)
};

// Names the parameter in test listings (instead of its bytes).
void PrintTo(const Corruption& c, std::ostream* os) { *os << c.name; }

class CorruptedBackendTest : public ::testing::TestWithParam<Corruption> {};

TEST_P(CorruptedBackendTest, FailsThatOpAndNoOther) {
  const Corruption& c = GetParam();
  std::unique_ptr<Backend> backend = c.make(CpuBackend());
  ConformanceOptions options;
  options.quick = true;
  const std::vector<ConformanceCase> cases = RunConformance(*backend, options);
  int64_t failed = 0, failed_check = 0, failed_bf16 = 0, failed_fp16 = 0;
  for (const ConformanceCase& k : cases) {
    if (k.passed) continue;
    ++failed;
    EXPECT_EQ(k.op, c.op) << k.shape << " " << k.check << " " << k.message;
    failed_check += k.check.find(c.check) != std::string::npos;
    failed_bf16 += k.shape.rfind("bf16 ", 0) == 0;
    failed_fp16 += k.shape.rfind("fp16 ", 0) == 0;
  }
  if (c.bf16_fails) {  // fp16 is the finer of the two: it notices what bf16 does
    EXPECT_GT(failed_bf16, 0) << "the bf16 pass did not notice " << c.name;
    EXPECT_GT(failed_fp16, 0) << "the fp16 pass did not notice " << c.name;
  }
  EXPECT_GT(failed, 0) << "the suite did not notice " << c.name;
  EXPECT_GT(failed_check, 0) << "no failed check matches \"" << c.check << "\"\n"
                             << Failures(cases);
  std::printf("%s: %lld of %zu cases failed\n", c.name, static_cast<long long>(failed),
              cases.size());
}

template <typename T>
std::function<std::unique_ptr<Backend>(Backend&)> Make() {
  return [](Backend& inner) { return std::make_unique<T>(inner); };
}

INSTANTIATE_TEST_SUITE_P(
    Corruptions, CorruptedBackendTest,
    ::testing::Values(
        Corruption{"FlippedLinearForward", Make<FlippedLinearForward>(), "LinearForward", "y"},
        Corruption{"OverwritingRmsNormBackward", Make<OverwritingRmsNormBackward>(),
                   "RmsNormBackward", "dx"},
        Corruption{
            "CausalMaskOffByOne",
            [](Backend& inner) { return std::make_unique<BuggyAttentionForward>(inner, 1, false); },
            "AttentionForward", "o", /*bf16_fails=*/false},  // fp32 only: bf16 reaches the CPU
        Corruption{
            "WrongGqaGroup",
            [](Backend& inner) { return std::make_unique<BuggyAttentionForward>(inner, 0, true); },
            "AttentionForward", "o", false},
        Corruption{"IdleSwigluForward", Make<IdleSwigluForward>(), "SwigluForward", "out"},
        Corruption{"NondeterministicResidualForward", Make<NondeterministicResidualForward>(),
                   "ResidualForward", "rerun", false},  // one fp32 ulp: nothing in bf16
        Corruption{"OverrunningEmbeddingBackward", Make<OverrunningEmbeddingBackward>(),
                   "EmbeddingBackward", "rerun+bounds"},
        Corruption{"LmHeadBackwardWithoutDembedding", Make<LmHeadBackwardWithoutDembedding>(),
                   "LmHeadBackward", "dembedding"},
        Corruption{"AdamWMultiStepWithoutWorkingCopies", Make<AdamWMultiStepWithoutWorkingCopies>(),
                   "AdamWMultiStep", "copy", false},
        Corruption{"AdamWMultiStepWithBf16Copies", Make<AdamWMultiStepWithBf16Copies>(),
                   "AdamWMultiStep", "copy", false},
        Corruption{"BlockSumsWithoutThePartialBlock", Make<BlockSumsWithoutThePartialBlock>(),
                   "BlockSumsOfSquares", "sums", false},
        Corruption{"CrossEntropyCountingIgnoredRows", Make<CrossEntropyCountingIgnoredRows>(),
                   "CrossEntropyForward", "num_valid", false},  // fp32 logits only
        Corruption{"UnvalidatedCrossEntropyBackward", Make<UnvalidatedCrossEntropyBackward>(),
                   "CrossEntropyBackward", "invalid", false}),
    [](const auto& info) { return std::string(info.param.name); });

// A sanity check of the correct naive attention above (extra_keys 0, the right groups): the
// suite accepts it, so the failures of its buggy variants come from the bugs.
TEST(ConformanceTest, NaiveAttentionWithoutTheBugsPasses) {
  BuggyAttentionForward backend(CpuBackend(), 0, false);
  ConformanceOptions options;
  options.quick = true;
  options.filter = "AttentionForward";
  const std::vector<ConformanceCase> cases = RunConformance(backend, options);
  ASSERT_FALSE(cases.empty());
  EXPECT_TRUE(std::all_of(cases.begin(), cases.end(), [](const auto& c) { return c.passed; }))
      << Failures(cases);
}

// The 16-bit passes' tolerance: a one-ulp difference in a bf16 or fp16 output (another
// rounding) passes, eight ulps fail; the fp32 pass never sees it.
TEST(ConformanceTest, HalfPassesAcceptRoundingAndCatchLargerErrors) {
  for (DType dtype : {DType::kBfloat16, DType::kFloat16}) {
    const std::string prefix = std::string(DTypeName(dtype)) + " ";
    ConformanceOptions options;
    options.quick = true;
    options.filter = "ResidualForward";
    options.dtypes = {DType::kFloat32, dtype};
    for (uint16_t ulps : {uint16_t{1}, uint16_t{8}}) {
      HalfUlpsOffResidualForward backend(CpuBackend(), ulps);
      const std::vector<ConformanceCase> cases = RunConformance(backend, options);
      int64_t half_cases = 0, half_failed = 0;
      for (const ConformanceCase& c : cases) {
        const bool half = c.shape.rfind(prefix, 0) == 0;
        half_cases += half;
        if (!c.passed) {
          EXPECT_TRUE(half) << c.shape << " " << c.check;
          EXPECT_EQ(c.check, "out") << c.shape;
          ++half_failed;
        }
      }
      EXPECT_GT(half_cases, 0) << prefix;
      if (ulps == 1) {
        EXPECT_EQ(half_failed, 0) << Failures(cases);
      } else {
        EXPECT_GT(half_failed, 0) << "eight " << prefix << "ulps passed";
      }
    }
  }
}

// Each pass runs alone with its own shapes; Cast and the fp32-only ops are in the fp32 pass.
TEST(ConformanceTest, DtypePasses) {
  ConformanceOptions options;
  options.quick = true;
  for (DType dtype : {DType::kBfloat16, DType::kFloat16}) {
    const std::string prefix = std::string(DTypeName(dtype)) + " ";
    options.dtypes = {dtype};
    const std::vector<ConformanceCase> half = RunConformance(CpuBackend(), options);
    ASSERT_FALSE(half.empty());
    std::set<std::string> ops;
    for (const ConformanceCase& c : half) {
      EXPECT_EQ(c.shape.rfind(prefix, 0), 0u) << c.op << " " << c.shape;
      EXPECT_TRUE(c.passed) << c.op << " " << c.shape << " " << c.check << " " << c.message;
      ops.insert(c.op);
    }
    for (const char* op :
         {"Fill", "Scale", "EmbeddingForward", "RmsNormBackward", "LinearBackward", "LmHeadForward",
          "RopeBackward", "AttentionBackward", "SwigluBackward", "ResidualBackward"}) {
      EXPECT_TRUE(ops.count(op)) << prefix << op;
    }
    for (const char* op : {"Cast", "CrossEntropyForward", "AdamWStep", "AdamWMultiStep",
                           "SumOfSquares", "BlockSumsOfSquares", "Alloc"}) {
      EXPECT_FALSE(ops.count(op)) << prefix << op;
    }
  }
  options.dtypes = {DType::kFloat32};
  options.filter = "Cast";
  const std::vector<ConformanceCase> cast = RunConformance(CpuBackend(), options);
  ASSERT_GE(cast.size(), 18u);  // fp32 <-> bf16, fp32 <-> fp16, bf16 -> fp16 at three sizes
  for (const ConformanceCase& c : cast) {
    EXPECT_TRUE(c.passed) << c.shape << " " << c.check << " " << c.message;
  }
}

}  // namespace
}  // namespace qtrain::kernels
