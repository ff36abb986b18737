// The backend conformance suite (conformance.h). First the harness: seeded inputs, backend
// buffers with guard zones, OpRun (runs an op twice from fresh buffer contents and checks the
// contract), the error measure and the tolerance rule. Then one function per op group, each
// computing the double and fp32 references on the host and comparing the backend's outputs.
#include "kernels/conformance/conformance.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <limits>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kernels/cuda/element_math.h"
#include "kernels/ops.h"
#include "kernels/reference/reference_ops.h"
#include "kernels/rope_tables.h"

namespace qtrain::kernels {
namespace {

namespace ref = reference;

constexpr double kFltEps = std::numeric_limits<float>::epsilon();
// The backend may be this many times less accurate than the naive fp32 reference loop.
constexpr double kSlack = 8.0;

// Floors of the tolerance, relative to the tensor's scale. They matter where the naive fp32 loop
// happens to be very accurate (short rows, one rounding); a real bug (a wrong sign, a missed
// accumulation, a transposed operand, an off-by-one mask, a wrong GQA group) errs by far more.
constexpr double kExact = 0.0;                      // copies, fills, gathers: bit exact
constexpr double kRounded = 4.0 * kFltEps;          // a few roundings per element
constexpr double kTranscendental = 16.0 * kFltEps;  // exp, sin/cos, sqrt (device intrinsics)
constexpr double kReduced = 32.0 * kFltEps;         // reductions: norms, dot products, softmax
// SumOfSquares accumulates in double (ops.h), so its fp32 baseline is the double sum itself.
constexpr double kDoubleSum = 1e-12;
// With bf16 activations: two bf16 steps (2 x 2^-7) at the tensor's scale, the rounding of a bf16
// output (half a step) with room for a bf16 operand rounded inside the op (a GEMM's narrowed
// gradient). The floor of every inexact check of the bf16 pass, whatever the output's dtype.
constexpr double kBf16Floor = 2.0 * 0.0078125;
// The same for the fp16 pass: two fp16 steps (2 x 2^-10).
constexpr double kF16Floor = 2.0 * 0.0009765625;

// 16-bit storage: the bits of x rounded to `dtype` (bf16 or fp16), and their value.
uint16_t HalfBits(float x, DType dtype) {
  return dtype == DType::kFloat16 ? math::F16FromFloat(x) : math::Bf16FromFloat(x);
}
float HalfValue(uint16_t bits, DType dtype) {
  return dtype == DType::kFloat16 ? math::FloatFromF16(bits) : math::FloatFromBf16(bits);
}

constexpr size_t kGuardBytes = 256;  // after every buffer; must come back unchanged
constexpr unsigned char kGuardByte = 0xA5;
const float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---------------------------------------------------------------------------------------------
// Inputs.

uint32_t Fnv1a(std::string_view s) {
  uint32_t h = 2166136261u;
  for (char c : s) h = (h ^ static_cast<unsigned char>(c)) * 16777619u;
  return h;
}

// Seeded by (seed, group, index) so a case gets the same inputs whatever the filter runs.
// With a 16-bit `values` dtype, every float drawn is rounded to it, so that the inputs of the
// bf16 and fp16 passes are exactly what the backend reads and the references see the same
// numbers.
class Rng {
 public:
  Rng(uint32_t seed, std::string_view group, uint32_t index, DType values = DType::kFloat32)
      : values_(values) {
    std::seed_seq seq{seed, Fnv1a(group), index};
    engine_.seed(seq);
  }
  std::vector<float> Uniform(int64_t n, double lo, double hi) {
    std::uniform_real_distribution<float> dist(static_cast<float>(lo), static_cast<float>(hi));
    std::vector<float> out(static_cast<size_t>(n));
    for (float& x : out) {
      x = dist(engine_);
      if (values_ != DType::kFloat32) x = HalfValue(HalfBits(x, values_), values_);
    }
    return out;
  }
  std::vector<int32_t> Ints(int64_t n, int32_t lo, int32_t hi) {  // [lo, hi]
    std::uniform_int_distribution<int32_t> dist(lo, hi);
    std::vector<int32_t> out(static_cast<size_t>(n));
    for (int32_t& x : out) x = dist(engine_);
    return out;
  }

 private:
  std::mt19937 engine_;
  DType values_;
};

std::vector<double> ToDouble(const std::vector<float>& x) { return {x.begin(), x.end()}; }

std::vector<float> ToFloat(const std::vector<double>& x) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = static_cast<float>(x[i]);
  return out;
}

double InfNorm(const std::vector<double>& x) {
  double m = 0.0;
  for (double v : x) m = std::max(m, std::fabs(v));
  return m;
}

// |x|: the reference run on absolute values gives the magnitude of a reduction's terms, the
// scale of its rounding errors (|fl(x.y) - x.y| <= n eps |x|.|y|).
std::vector<double> Abs(const std::vector<float>& x) {
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = std::fabs(static_cast<double>(x[i]));
  return out;
}

// The typical size of a sum of `terms` random-sign terms of these magnitudes: a scale floor for
// tensors of a few outputs (one output feature, one bias), which may cancel to near zero and
// make a relative error ill-conditioned. It stays below max|y| of tensors of many outputs, so it
// leaves their tolerance as it is.
double SumScale(const std::vector<double>& magnitude, int64_t terms) {
  return InfNorm(magnitude) / std::sqrt(static_cast<double>(std::max<int64_t>(terms, 1)));
}

// A random gradient pre-fill on the scale of the update, so that both a missed accumulation and
// a wrong update stand out in the relative error.
std::vector<float> Prefill(Rng& rng, const std::vector<double>& delta) {
  double s = InfNorm(delta);
  if (!(s > 0.0)) s = 1.0;
  return rng.Uniform(static_cast<int64_t>(delta.size()), -s, s);
}

std::vector<double> Plus(const std::vector<float>& base, const std::vector<double>& delta) {
  std::vector<double> out(base.size());
  for (size_t i = 0; i < base.size(); ++i) out[i] = static_cast<double>(base[i]) + delta[i];
  return out;
}

std::string Dims(std::initializer_list<std::pair<const char*, int64_t>> dims) {
  std::string s;
  for (const auto& [name, value] : dims) {
    if (!s.empty()) s += ' ';
    s += name;
    s += '=';
    s += std::to_string(value);
  }
  return s;
}

std::string Fmt(const char* format, double value) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), format, value);
  return buf;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// ---------------------------------------------------------------------------------------------
// The error measure: max |got - want| / max(|got|_inf, |want|_inf) over rows of row_len elements
// (0: the whole tensor), each row with its own scale (at least scale_floor). A non-finite value on
// one side only is an infinite error (a NaN never compares, so it is counted explicitly).

struct Measure {
  double error = 0.0;
  int64_t worst = -1;  // index of the largest error
  int64_t nonfinite = 0;
  int64_t first_nonfinite = -1;
};

template <typename G>
Measure RelError(const G* got, const double* want, size_t n, size_t row_len,
                 double scale_floor = 0.0) {
  Measure m;
  if (row_len == 0) row_len = std::max<size_t>(n, 1);
  for (size_t r0 = 0; r0 < n; r0 += row_len) {
    const size_t r1 = std::min(n, r0 + row_len);
    double scale = scale_floor, err = 0.0;
    int64_t worst = -1;
    for (size_t i = r0; i < r1; ++i) {
      const double g = static_cast<double>(got[i]), w = want[i];
      if (!std::isfinite(g) || !std::isfinite(w)) {
        const bool same = (std::isnan(g) && std::isnan(w)) || g == w;
        if (!same && m.nonfinite++ == 0) m.first_nonfinite = static_cast<int64_t>(i);
        continue;
      }
      scale = std::max({scale, std::fabs(g), std::fabs(w)});
      const double d = std::fabs(g - w);
      if (d > err) {
        err = d;
        worst = static_cast<int64_t>(i);
      }
    }
    const double rel = err == 0.0 ? 0.0 : err / scale;
    if (rel > m.error) {
      m.error = rel;
      m.worst = worst;
    }
  }
  if (m.nonfinite > 0) m.error = std::numeric_limits<double>::infinity();
  return m;
}

// err <= max(8 * err_fp32_reference, floor); a non-finite fp32 reference leaves the floor.
double Tolerance(double fp32_error, double floor) {
  return std::isfinite(fp32_error) ? std::max(kSlack * fp32_error, floor) : floor;
}

// ---------------------------------------------------------------------------------------------
// The suite's state: the backend, the options and the cases recorded so far.

class Suite {
 public:
  Suite(Backend& backend, const ConformanceOptions& options, DType dtype)
      : backend_(backend), options_(options), filter_(Lower(options.filter)), dtype_(dtype) {}

  Backend& be() { return backend_; }
  bool quick() const { return options_.quick; }
  // The dtype of the activations and weights (the ops' Tensor arguments) in this pass.
  DType dtype() const { return dtype_; }
  // A bf16 or fp16 pass.
  bool half() const { return dtype_ != DType::kFloat32; }
  Rng MakeRng(std::string_view group, uint32_t index) const {
    return Rng(options_.seed, group, index, dtype_);
  }
  bool Wants(std::string_view op) const {
    return filter_.empty() || Lower(op).find(filter_) != std::string::npos;
  }
  bool WantsAny(std::initializer_list<std::string_view> ops) const {
    for (std::string_view op : ops)
      if (Wants(op)) return true;
    return false;
  }
  void Record(ConformanceCase c) {
    if (Wants(c.op)) cases_.push_back(std::move(c));
  }
  std::vector<ConformanceCase> Take() { return std::move(cases_); }

 private:
  Backend& backend_;
  ConformanceOptions options_;
  std::string filter_;
  DType dtype_;
  std::vector<ConformanceCase> cases_;
};

// ---------------------------------------------------------------------------------------------
// One op call at one shape. Buffers are declared first (inputs, outputs poisoned with NaN, or
// in-out buffers with their initial contents: pre-filled gradients, in-place operands), each
// with a guard zone after it. Execute() uploads every buffer, runs the call, downloads every
// buffer, and does it all again; it records one "rerun+bounds" case (the two runs bitwise equal,
// inputs unchanged, guard zones intact). Check() then compares an output with its references.
class OpRun {
 public:
  // The bf16 and fp16 passes prefix their shapes with "bf16" or "fp16".
  OpRun(Suite& suite, std::string op, std::string shape)
      : suite_(suite),
        be_(suite.be()),
        op_(std::move(op)),
        shape_(suite.half() ? DTypeName(suite.dtype()) + (" " + shape) : std::move(shape)) {}
  OpRun(const OpRun&) = delete;
  OpRun& operator=(const OpRun&) = delete;
  ~OpRun() {
    for (Slot& s : slots_) be_.Free(s.ptr);
  }

  float* In(const char* name, const std::vector<float>& host) {
    return static_cast<float*>(Add(name, Role::kInput, host.data(), host.size() * sizeof(float)));
  }
  // An activation or weight (a Tensor argument): in the pass's dtype, the host values rounded to
  // bf16 (fp16) in the bf16 (fp16) pass. Act, ActOut and ActInOut are In, Out and InOut for
  // those.
  ConstTensor Act(const char* name, const std::vector<float>& host) {
    return ActAs(name, host, suite_.dtype());
  }
  Tensor ActOut(const char* name, size_t n) { return ActOutAs(name, n, suite_.dtype()); }
  Tensor ActInOut(const char* name, const std::vector<float>& initial) {
    return ActInOutAs(name, initial, suite_.dtype());
  }
  // The same in a given dtype (Cast's two sides).
  ConstTensor ActAs(const char* name, const std::vector<float>& host, DType dtype) {
    return {AddTensor(name, Role::kInput, host, dtype), dtype};
  }
  Tensor ActOutAs(const char* name, size_t n, DType dtype) {
    return ActInOutAs(name, std::vector<float>(n, kNaN), dtype);
  }
  Tensor ActInOutAs(const char* name, const std::vector<float>& initial, DType dtype) {
    return {AddTensor(name, Role::kOutput, initial, dtype), dtype};
  }
  int32_t* Ints(const char* name, const std::vector<int32_t>& host) {
    return static_cast<int32_t*>(
        Add(name, Role::kInput, host.data(), host.size() * sizeof(int32_t)));
  }
  // A pure output: poisoned with NaN, so an element the op never writes fails.
  float* Out(const char* name, size_t n) { return InOut(name, std::vector<float>(n, kNaN)); }
  // An output with initial contents (an accumulated gradient, an in-place operand).
  float* InOut(const char* name, const std::vector<float>& initial) {
    return static_cast<float*>(
        Add(name, Role::kOutput, initial.data(), initial.size() * sizeof(float)));
  }
  // A scalar output of the op in backend memory (loss_sum, num_valid, sum_squares): all-ones
  // bytes (NaN, -1) before each run, so an op that never writes it fails.
  template <typename T>
  T* ScalarOut(const char* name) {
    const std::vector<unsigned char> poison(sizeof(T), 0xFF);
    return static_cast<T*>(Add(name, Role::kOutput, poison.data(), sizeof(T)));
  }
  // `count` of them (BlockSumsOfSquares' sums), and their values after the first run.
  template <typename T>
  T* ScalarsOut(const char* name, size_t count) {
    const std::vector<unsigned char> poison(count * sizeof(T), 0xFF);
    return static_cast<T*>(Add(name, Role::kOutput, poison.data(), poison.size()));
  }
  template <typename T>
  std::vector<T> Scalars(const char* name) const {
    const Slot* s = Find(name);
    if (s == nullptr || !executed_) return {};
    std::vector<T> values(s->bytes / sizeof(T));
    if (!values.empty()) std::memcpy(values.data(), s->result[0].data(), s->bytes);
    return values;
  }
  // Its value after the first run (the poison when it did not run).
  template <typename T>
  T Scalar(const char* name) const {
    T value;
    std::memset(&value, 0xFF, sizeof(T));
    const Slot* s = Find(name);
    if (s != nullptr && executed_) std::memcpy(&value, s->result[0].data(), sizeof(T));
    return value;
  }

  // Ops that a backend may leave out (DcaAttentionForward): an error saying "not implemented"
  // is recorded as a skip, not a failure.
  void AllowUnimplemented() { allow_unimplemented_ = true; }

  bool Execute(const std::function<OpStatus()>& call);
  // The call must fail and leave every buffer (and host output) untouched.
  void ExpectError(const std::string& what, const std::function<OpStatus()>& call);

  // An output after the first run, widened to fp32 if it is bf16 or fp16.
  std::vector<float> Floats(const char* name) const {
    const Slot* s = Find(name);
    if (s == nullptr || !executed_) return {};
    if (s->dtype != DType::kFloat32) {
      std::vector<float> out(s->bytes / sizeof(uint16_t));
      for (size_t i = 0; i < out.size(); ++i) {
        uint16_t bits;
        std::memcpy(&bits, s->result[0].data() + i * sizeof(bits), sizeof(bits));
        out[i] = HalfValue(bits, s->dtype);
      }
      return out;
    }
    std::vector<float> out(s->bytes / sizeof(float));
    if (!out.empty()) std::memcpy(out.data(), s->result[0].data(), out.size() * sizeof(float));
    return out;
  }
  void Check(const char* name, const std::vector<double>& want, const std::vector<float>& fp32,
             double floor, size_t row_len = 0, double scale_floor = 0.0);
  // An accumulated gradient: want = initial + delta, on the scale of its terms (a pre-fill that
  // cancels the update must not make a small tensor's relative error ill-conditioned).
  // `magnitude`: a scale floor for a delta that may cancel (SumScale).
  void CheckAccumulated(const char* name, const std::vector<float>& initial,
                        const std::vector<double>& delta, const std::vector<float>& fp32,
                        double floor, double magnitude = 0.0) {
    Check(name, Plus(initial, delta), fp32, floor, 0,
          std::max({InfNorm(ToDouble(initial)), InfNorm(delta), magnitude}));
  }
  void CheckScalar(const char* name, double got, double want, double fp32, double floor);
  void CheckEqual(const char* name, int64_t got, int64_t want);

 private:
  enum class Role { kInput, kOutput };
  struct Slot {
    std::string name;
    Role role;
    size_t bytes;
    void* ptr;
    std::vector<unsigned char> initial;  // data, then the guard zone
    std::vector<unsigned char> result[2];
    DType dtype = DType::kFloat32;  // of the elements, for Floats (ints count as fp32)
  };

  void* AddTensor(const char* name, Role role, const std::vector<float>& host, DType dtype) {
    if (dtype == DType::kFloat32) return Add(name, role, host.data(), host.size() * sizeof(float));
    std::vector<uint16_t> bits(host.size());
    for (size_t i = 0; i < host.size(); ++i) bits[i] = HalfBits(host[i], dtype);
    return Add(name, role, bits.data(), bits.size() * sizeof(uint16_t), dtype);
  }
  void* Add(const char* name, Role role, const void* data, size_t bytes,
            DType dtype = DType::kFloat32) {
    Slot s{name, role, bytes, be_.Alloc(bytes + kGuardBytes), {}, {}, dtype};
    if (s.ptr == nullptr) alloc_failed_ = true;
    s.initial.resize(bytes + kGuardBytes, kGuardByte);
    if (bytes > 0) std::memcpy(s.initial.data(), data, bytes);
    slots_.push_back(std::move(s));
    return slots_.back().ptr;
  }
  const Slot* Find(const char* name) const {
    for (const Slot& s : slots_)
      if (s.name == name) return &s;
    return nullptr;
  }
  OpStatus UploadAll() {
    for (Slot& s : slots_)
      QTRAIN_KERNEL_RETURN_IF_ERROR(
          be_.CopyHostToBackend(s.ptr, s.initial.data(), s.initial.size()));
    return OpStatus::Ok();
  }
  OpStatus DownloadAll(int run) {
    for (Slot& s : slots_) {
      s.result[run].resize(s.initial.size());
      QTRAIN_KERNEL_RETURN_IF_ERROR(
          be_.CopyBackendToHost(s.result[run].data(), s.ptr, s.initial.size()));
    }
    return OpStatus::Ok();
  }
  // The bf16 (fp16) pass raises every inexact floor to kBf16Floor (kF16Floor); exact checks
  // stay exact.
  double Floor(double floor) const {
    if (!suite_.half() || floor <= 0.0) return floor;
    return std::max(floor, suite_.dtype() == DType::kFloat16 ? kF16Floor : kBf16Floor);
  }
  void Record(const std::string& check, bool passed, double error, double tolerance,
              std::string message) {
    suite_.Record(
        ConformanceCase{op_, shape_, check, error, tolerance, passed, std::move(message)});
  }

  Suite& suite_;
  Backend& be_;
  std::string op_, shape_;
  std::vector<Slot> slots_;
  bool alloc_failed_ = false;
  bool allow_unimplemented_ = false;
  bool executed_ = false;
};

bool OpRun::Execute(const std::function<OpStatus()>& call) {
  if (alloc_failed_) {
    Record("rerun+bounds", false, 1, 0, "Alloc returned nullptr");
    return false;
  }
  for (int run = 0; run < 2; ++run) {
    OpStatus st = UploadAll();
    if (!st.ok()) {
      Record("rerun+bounds", false, 1, 0, "CopyHostToBackend: " + st.message());
      return false;
    }
    st = call();
    if (st.ok()) st = be_.Synchronize();
    if (!st.ok()) {
      if (allow_unimplemented_ && st.message().find("not implemented") != std::string::npos) {
        Record("status", true, 0, 0, "skipped: " + st.message());
      } else {
        Record("status", false, 1, 0, "error on a valid call: " + st.message());
      }
      return false;
    }
    st = DownloadAll(run);
    if (!st.ok()) {
      Record("rerun+bounds", false, 1, 0, "CopyBackendToHost: " + st.message());
      return false;
    }
  }
  std::string problems;
  int64_t count = 0;
  auto problem = [&](const std::string& text) {
    ++count;
    if (!problems.empty()) problems += "; ";
    problems += text;
  };
  for (const Slot& s : slots_) {
    const std::vector<unsigned char>& r0 = s.result[0];
    if (!std::equal(r0.begin() + static_cast<std::ptrdiff_t>(s.bytes), r0.end(),
                    s.initial.begin() + static_cast<std::ptrdiff_t>(s.bytes))) {
      problem("wrote past the end of " + s.name);
    }
    if (s.role == Role::kInput && std::memcmp(r0.data(), s.initial.data(), s.bytes) != 0) {
      problem("modified input " + s.name);
    }
    if (r0 != s.result[1]) {
      int64_t differ = 0;
      for (size_t i = 0; i + 4 <= s.bytes; i += 4)
        differ += std::memcmp(r0.data() + i, s.result[1].data() + i, 4) != 0;
      problem("rerun differs in " + std::to_string(differ) + " of " + std::to_string(s.bytes / 4) +
              " elements of " + s.name);
    }
  }
  Record("rerun+bounds", count == 0, static_cast<double>(count), 0, problems);
  executed_ = true;
  return true;
}

void OpRun::ExpectError(const std::string& what, const std::function<OpStatus()>& call) {
  const std::string check = "invalid: " + what;
  if (alloc_failed_) {
    Record(check, false, 1, 0, "Alloc returned nullptr");
    return;
  }
  OpStatus st = UploadAll();
  if (!st.ok()) {
    Record(check, false, 1, 0, "CopyHostToBackend: " + st.message());
    return;
  }
  const OpStatus result = call();
  st = be_.Synchronize();
  if (st.ok()) st = DownloadAll(0);
  std::string message = result.ok() ? "accepted the call" : "error: " + result.message();
  bool touched = false;
  for (const Slot& s : slots_) {
    if (st.ok() && s.result[0] != s.initial) {
      touched = true;
      message += "; touched " + s.name;
    }
  }
  if (!st.ok()) message += "; afterwards: " + st.message();
  const bool passed = !result.ok() && !touched && st.ok();
  Record(check, passed, passed ? 0 : 1, 0, message);
}

void OpRun::Check(const char* name, const std::vector<double>& want, const std::vector<float>& fp32,
                  double floor, size_t row_len, double scale_floor) {
  if (!executed_) return;  // Execute recorded why
  const std::vector<float> got = Floats(name);
  if (got.size() != want.size() || fp32.size() != want.size()) {
    Record(name, false, 1, 0, "internal: sizes of backend, reference and fp32 reference differ");
    return;
  }
  const Measure mb = RelError(got.data(), want.data(), got.size(), row_len, scale_floor);
  const Measure mf = RelError(fp32.data(), want.data(), fp32.size(), row_len, scale_floor);
  const double tol = Tolerance(mf.error, Floor(floor));
  const bool passed = mb.error <= tol;
  std::string message = "fp32 ref " + Fmt("%.2e", mf.error);
  if (!passed) {
    const int64_t at = mb.nonfinite > 0 ? mb.first_nonfinite : mb.worst;
    if (mb.nonfinite > 0) message += "; " + std::to_string(mb.nonfinite) + " non-finite";
    if (at >= 0) {
      message += "; at [" + std::to_string(at) + "] got " + Fmt("%.9g", got[at]) + " want " +
                 Fmt("%.9g", want[at]);
    }
  }
  Record(name, passed, mb.error, tol, message);
}

void OpRun::CheckScalar(const char* name, double got, double want, double fp32, double floor) {
  if (!executed_) return;
  const Measure mb = RelError(&got, &want, 1, 0);
  const Measure mf = RelError(&fp32, &want, 1, 0);
  const double tol = Tolerance(mf.error, Floor(floor));
  const bool passed = mb.error <= tol;
  std::string message = "fp32 ref " + Fmt("%.2e", mf.error);
  if (!passed) message += "; got " + Fmt("%.17g", got) + " want " + Fmt("%.17g", want);
  Record(name, passed, mb.error, tol, message);
}

void OpRun::CheckEqual(const char* name, int64_t got, int64_t want) {
  if (!executed_) return;
  const bool passed = got == want;
  Record(name, passed, passed ? 0.0 : 1.0, 0,
         passed ? "" : "got " + std::to_string(got) + " want " + std::to_string(want));
}

void RecordDirect(Suite& s, const char* op, const std::string& shape, const std::string& check,
                  bool passed, std::string message) {
  s.Record(ConformanceCase{op, shape, check, passed ? 0.0 : 1.0, 0.0, passed, std::move(message)});
}

// ---------------------------------------------------------------------------------------------
// Memory: Alloc, the copies, Fill, Scale, Synchronize.

// Fill and Scale, in the pass's dtype.
void CheckFillAndScale(Suite& s) {
  Backend& be = s.be();
  uint32_t index = 0;
  const bool fill = s.Wants("Fill"), scale = s.Wants("Scale");
  for (int64_t n : {int64_t{1}, int64_t{17}, int64_t{65537}}) {
    for (float value : {0.0f, -2.5f}) {
      if (!fill) continue;
      const std::string shape = Dims({{"n", n}}) + " value=" + Fmt("%g", value);
      OpRun run(s, "Fill", shape);
      const Tensor x = run.ActOut("x", static_cast<size_t>(n));
      run.Execute([&] { return be.Fill(x, n, value); });
      const std::vector<double> want(static_cast<size_t>(n), value);
      run.Check("x", want, std::vector<float>(static_cast<size_t>(n), value), kExact);
      if (n > 8) {  // a range inside the buffer: the elements around it keep their NaN
        OpRun part(s, "Fill", shape + " range [3, n-5)");
        const Tensor y = part.ActOut("x", static_cast<size_t>(n));
        part.Execute([&] { return be.Fill(y + 3, n - 8, value); });
        std::vector<double> want_part(static_cast<size_t>(n), kNaN);
        std::fill(want_part.begin() + 3, want_part.end() - 5, value);
        part.Check("x", want_part, ToFloat(want_part), kExact);
      }
    }
  }
  for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{65537}}) {
    if (!scale) continue;
    Rng rng = s.MakeRng("Scale", index++);
    const std::vector<float> x = rng.Uniform(n, -3, 3);
    for (float alpha : {0.37f, -1.0f, 0.0f}) {
      OpRun run(s, "Scale", Dims({{"n", n}}) + " alpha=" + Fmt("%g", alpha));
      const Tensor d = run.ActInOut("x", x);
      run.Execute([&] { return be.Scale(d, n, alpha); });
      std::vector<double> want(x.size());
      std::vector<float> fp32(x.size());
      for (size_t i = 0; i < x.size(); ++i) {
        want[i] = static_cast<double>(x[i]) * alpha;
        fp32[i] = x[i] * alpha;
      }
      run.Check("x", want, fp32, kRounded);
    }
  }
}

// Cast between fp32 and each 16-bit dtype both ways, and bf16 -> fp16: round to nearest even
// (ties, NaN, infinities, overflow to infinity, subnormals), exact against the element math's
// conversions; widening is exact.
void CheckCast(Suite& s) {
  if (!s.Wants("Cast")) return;
  Backend& be = s.be();
  const float kInf = std::numeric_limits<float>::infinity();
  uint32_t index = 0;
  for (DType half : {DType::kBfloat16, DType::kFloat16}) {
    const std::string name = DTypeName(half);
    for (int64_t n : {int64_t{1}, int64_t{37}, int64_t{70001}}) {
      Rng rng = s.MakeRng("Cast", ++index);
      std::vector<float> x = rng.Uniform(n, -4, 4);
      // Special values at the front: a tie to even both ways, NaN, infinities, the largest
      // finite neighbourhood and its overflow, a subnormal, an underflow, signed zeros.
      const std::vector<float> specials =
          half == DType::kBfloat16
              ? std::vector<float>{1.00390625f,   1.01171875f,   kNaN,   kInf,  -kInf,
                                   3.3895314e38f, 3.4028235e38f, 1e-40f, -0.0f, 0.0f}
              : std::vector<float>{1.00048828125f, 1.00146484375f, kNaN,  kInf,  -kInf, 65504.0f,
                                   65520.0f,       -65519.0f,      6e-8f, 1e-8f, -0.0f, 0.0f};
      for (size_t i = 0; i < specials.size() && i < x.size(); ++i) x[i] = specials[i];
      std::vector<double> want(x.size());
      for (size_t i = 0; i < x.size(); ++i) want[i] = HalfValue(HalfBits(x[i], half), half);
      const std::string shape = Dims({{"n", n}});
      {
        OpRun run(s, "Cast", shape + " fp32->" + name);
        const float* in = run.In("in", x);
        const Tensor out = run.ActOutAs("out", x.size(), half);
        run.Execute([&] { return be.Cast(in, out, n); });
        run.Check("out", want, ToFloat(want), kExact);
      }
      {
        OpRun run(s, "Cast", shape + " " + name + "->fp32");
        const ConstTensor in = run.ActAs("in", ToFloat(want), half);
        float* out = run.Out("out", x.size());
        run.Execute([&] { return be.Cast(in, out, n); });
        run.Check("out", want, ToFloat(want), kExact);
      }
      if (half == DType::kBfloat16) {  // bf16 -> fp16: the fp16 nearest to the bf16 value
        std::vector<double> as_fp16(want.size());
        for (size_t i = 0; i < want.size(); ++i) {
          const auto value = static_cast<float>(want[i]);
          as_fp16[i] = HalfValue(HalfBits(value, DType::kFloat16), DType::kFloat16);
        }
        OpRun run(s, "Cast", shape + " bf16->fp16");
        const ConstTensor in = run.ActAs("in", ToFloat(want), DType::kBfloat16);
        const Tensor out = run.ActOutAs("out", x.size(), DType::kFloat16);
        run.Execute([&] { return be.Cast(in, out, n); });
        run.Check("out", as_fp16, ToFloat(as_fp16), kExact);
      }
    }
  }
}

void CheckMemory(Suite& s) {
  Backend& be = s.be();
  CheckFillAndScale(s);
  if (s.half()) return;  // the rest has no dtype
  if (s.Wants("Alloc")) {
    for (size_t bytes : {size_t{1}, size_t{64}, size_t{4097}, size_t{1} << 20}) {
      void* p = be.Alloc(bytes);
      const bool ok = p != nullptr && reinterpret_cast<uintptr_t>(p) % 64 == 0;
      RecordDirect(s, "Alloc", Dims({{"bytes", static_cast<int64_t>(bytes)}}),
                   "non-null, 64-byte aligned", ok, p == nullptr ? "nullptr" : "");
      be.Free(p);
    }
    void* zero = be.Alloc(0);
    RecordDirect(s, "Alloc", "bytes=0", "nullptr", zero == nullptr, "");
    be.Free(zero);
    be.Free(nullptr);
  }

  // Round trips of random bytes (NaN payloads included) through backend memory, whole and at
  // unaligned offsets.
  uint32_t index = 0;
  for (size_t bytes : {size_t{1}, size_t{3}, size_t{1001}, (size_t{1} << 20) + 7}) {
    Rng rng = s.MakeRng("Copy", index++);
    const std::vector<int32_t> words =
        rng.Ints(static_cast<int64_t>(bytes / 4 + 1), std::numeric_limits<int32_t>::min(),
                 std::numeric_limits<int32_t>::max());
    std::vector<unsigned char> a(bytes), back(bytes);
    std::memcpy(a.data(), words.data(), bytes);
    const std::string shape = Dims({{"bytes", static_cast<int64_t>(bytes)}});
    auto* p = static_cast<unsigned char*>(be.Alloc(bytes));
    if (p == nullptr) {
      RecordDirect(s, "CopyHostToBackend", shape, "round trip", false, "Alloc returned nullptr");
      continue;
    }
    if (s.WantsAny({"CopyHostToBackend", "CopyBackendToHost"})) {
      OpStatus st = be.CopyHostToBackend(p, a.data(), bytes);
      if (st.ok()) st = be.CopyBackendToHost(back.data(), p, bytes);
      const bool ok = st.ok() && back == a;
      RecordDirect(s, "CopyHostToBackend", shape, "round trip", ok,
                   st.ok() ? (ok ? "" : "bytes differ") : st.message());
      if (bytes >= 16) {
        // Part of the buffer at an odd offset: the rest must stay as it was.
        const std::vector<unsigned char> patch(a.rbegin(), a.rbegin() + 11);
        std::vector<unsigned char> want = a, part(11);
        std::copy(patch.begin(), patch.end(), want.begin() + 5);
        st = be.CopyHostToBackend(p + 5, patch.data(), patch.size());
        if (st.ok()) st = be.CopyBackendToHost(back.data(), p, bytes);
        const bool ok_write = st.ok() && back == want;
        RecordDirect(s, "CopyHostToBackend", shape, "11 bytes at offset 5", ok_write,
                     st.ok() ? (ok_write ? "" : "bytes differ") : st.message());
        st = be.CopyBackendToHost(part.data(), p + 5, part.size());
        const bool ok_read = st.ok() && part == patch;
        RecordDirect(s, "CopyBackendToHost", shape, "11 bytes at offset 5", ok_read,
                     st.ok() ? (ok_read ? "" : "bytes differ") : st.message());
      }
    }
    if (s.Wants("CopyWithinBackend") && bytes >= 16) {
      auto* q = static_cast<unsigned char*>(be.Alloc(bytes));
      std::vector<unsigned char> poison(bytes, kGuardByte);
      OpStatus st = q == nullptr ? OpStatus::Error("Alloc returned nullptr")
                                 : be.CopyHostToBackend(p, a.data(), bytes);
      if (st.ok()) st = be.CopyHostToBackend(q, poison.data(), bytes);
      const size_t n = bytes - 9;  // q[3 .. 3+n) = p[1 .. 1+n): unaligned on both sides
      if (st.ok()) st = be.CopyWithinBackend(q + 3, p + 1, n);
      if (st.ok()) st = be.CopyBackendToHost(back.data(), q, bytes);
      std::vector<unsigned char> want = poison;
      std::copy(a.begin() + 1, a.begin() + 1 + static_cast<std::ptrdiff_t>(n), want.begin() + 3);
      const bool ok = st.ok() && back == want;
      RecordDirect(s, "CopyWithinBackend", shape, "unaligned, neighbours untouched", ok,
                   st.ok() ? (ok ? "" : "bytes differ") : st.message());
      be.Free(q);
    }
    be.Free(p);
  }

  if (s.Wants("Synchronize")) {
    const OpStatus st = be.Synchronize();
    RecordDirect(s, "Synchronize", "-", "ok", st.ok(), st.message());
  }
}

// ---------------------------------------------------------------------------------------------
// Embedding lookup and its scatter-add.

void CheckEmbedding(Suite& s) {
  if (!s.WantsAny({"EmbeddingForward", "EmbeddingBackward"})) return;
  Backend& be = s.be();
  struct Shape {
    int64_t rows, vocab, dim;
    int32_t id_range;  // ids drawn from [0, id_range): small ranges repeat ids
  };
  // Repeated ids; Qwen2-0.5B's hidden size; the real vocabulary (first and last id).
  const Shape shapes[] = {{7, 9, 10, 9}, {37, 1000, 896, 12}, {29, 151936, 8, 151936}};
  uint32_t index = 0;
  for (const Shape& sh : shapes) {
    ++index;
    const int64_t rows = sh.rows, vocab = sh.vocab, dim = sh.dim;
    Rng rng = s.MakeRng("Embedding", index);
    std::vector<int32_t> ids = rng.Ints(rows, 0, sh.id_range - 1);
    ids[0] = static_cast<int32_t>(vocab - 1);
    ids[rows - 1] = 0;
    ids[2] = ids[1];
    const std::vector<float> table = rng.Uniform(vocab * dim, -1, 1);
    const std::vector<float> dout = rng.Uniform(rows * dim, -1, 1);
    const std::string shape = Dims({{"rows", rows}, {"vocab", vocab}, {"dim", dim}});

    if (s.Wants("EmbeddingForward")) {
      std::vector<double> want(rows * dim);
      ref::EmbeddingForward(ids.data(), ToDouble(table).data(), want.data(), rows, dim);
      std::vector<float> fp32(rows * dim);
      ref::EmbeddingForward(ids.data(), table.data(), fp32.data(), rows, dim);
      OpRun run(s, "EmbeddingForward", shape);
      const int32_t* d_ids = run.Ints("ids", ids);
      const ConstTensor d_table = run.Act("table", table);
      const Tensor d_out = run.ActOut("out", want.size());
      run.Execute([&] { return be.EmbeddingForward(d_ids, d_table, d_out, rows, vocab, dim); });
      run.Check("out", want, fp32, kExact);
    }
    if (s.Wants("EmbeddingBackward")) {
      std::vector<double> delta(vocab * dim, 0.0);
      ref::EmbeddingBackward(ids.data(), ToDouble(dout).data(), delta.data(), rows, dim);
      Rng prng = s.MakeRng("EmbeddingBackward", index);
      const std::vector<float> prefill = Prefill(prng, delta);
      std::vector<float> fp32 = prefill;
      ref::EmbeddingBackward(ids.data(), dout.data(), fp32.data(), rows, dim);
      OpRun run(s, "EmbeddingBackward", shape);
      const int32_t* d_ids = run.Ints("ids", ids);
      const ConstTensor d_dout = run.Act("dout", dout);
      float* d_dtable = run.InOut("dtable", prefill);
      run.Execute([&] { return be.EmbeddingBackward(d_ids, d_dout, d_dtable, rows, vocab, dim); });
      run.CheckAccumulated("dtable", prefill, delta, fp32, kRounded);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm.

void CheckRmsNorm(Suite& s) {
  if (!s.WantsAny({"RmsNormForward", "RmsNormBackward"})) return;
  Backend& be = s.be();
  struct Shape {
    int64_t rows, dim;
    float eps, x_range;
    bool full_only;
  };
  // Odd sizes, Qwen2-0.5B's hidden and MLP sizes, a single row, and inputs small enough
  // that eps matters.
  const Shape shapes[] = {{7, 10, 1e-6f, 2, false},
                          {33, 896, 1e-6f, 2, false},
                          {1, 7, 1e-6f, 2, false},
                          {9, 64, 1e-5f, 1e-3f, false},
                          {5, 4864, 1e-6f, 1, true}};
  uint32_t index = 0;
  for (const Shape& sh : shapes) {
    ++index;
    if (sh.full_only && s.quick()) continue;
    const int64_t rows = sh.rows, dim = sh.dim, n = rows * dim;
    const float eps = sh.eps;
    Rng rng = s.MakeRng("RmsNorm", index);
    const std::vector<float> x = rng.Uniform(n, -sh.x_range, sh.x_range);
    const std::vector<float> w = rng.Uniform(dim, 0.5, 1.5);
    const std::vector<float> dout = rng.Uniform(n, -1, 1);
    const std::string shape = Dims({{"rows", rows}, {"dim", dim}}) + " eps=" + Fmt("%g", eps);
    const std::vector<double> xd = ToDouble(x), wd = ToDouble(w);

    if (s.Wants("RmsNormForward")) {
      std::vector<double> out_d(n), rstd_d(rows);
      ref::RmsNormForward<double>(xd.data(), wd.data(), eps, out_d.data(), rstd_d.data(), rows,
                                  dim);
      std::vector<float> out_f(n), rstd_f(rows);
      ref::RmsNormForward<float>(x.data(), w.data(), eps, out_f.data(), rstd_f.data(), rows, dim);
      for (bool in_place : {false, true}) {
        OpRun run(s, "RmsNormForward", shape + (in_place ? " out=x" : ""));
        const Tensor d_out = in_place ? run.ActInOut("out", x) : run.ActOut("out", n);
        const ConstTensor d_x = in_place ? ConstTensor(d_out) : run.Act("x", x);
        const ConstTensor d_w = run.Act("weight", w);
        float* d_rstd = run.Out("rstd", rows);
        run.Execute([&] { return be.RmsNormForward(d_x, d_w, eps, d_out, d_rstd, rows, dim); });
        run.Check("out", out_d, out_f, kReduced);
        run.Check("rstd", rstd_d, rstd_f, kReduced);
      }
    }
    if (s.Wants("RmsNormBackward")) {
      // The saved rstd as the forward rounds it; the references use the same one.
      std::vector<double> out_d(n), rstd_d(rows);
      ref::RmsNormForward<double>(xd.data(), wd.data(), eps, out_d.data(), rstd_d.data(), rows,
                                  dim);
      const std::vector<float> rstd = ToFloat(rstd_d);
      std::vector<double> dx_delta(n, 0.0), dw_delta(dim, 0.0);
      ref::RmsNormBackward<double>(ToDouble(dout).data(), xd.data(), wd.data(),
                                   ToDouble(rstd).data(), dx_delta.data(), dw_delta.data(), rows,
                                   dim);
      Rng prng = s.MakeRng("RmsNormBackward", index);
      const std::vector<float> dx0 = Prefill(prng, dx_delta), dw0 = Prefill(prng, dw_delta);
      std::vector<float> dx_f = dx0, dw_f = dw0;
      ref::RmsNormBackward<float>(dout.data(), x.data(), w.data(), rstd.data(), dx_f.data(),
                                  dw_f.data(), rows, dim);
      struct Variant {
        bool dx, dw;
        const char* name;
      };
      for (const Variant& v : {Variant{true, true, ""}, Variant{true, false, " dweight=null"},
                               Variant{false, true, " dx=null"}}) {
        OpRun run(s, "RmsNormBackward", shape + v.name);
        const ConstTensor d_dout = run.Act("dout", dout);
        const ConstTensor d_x = run.Act("x", x);
        const ConstTensor d_w = run.Act("weight", w);
        const float* d_rstd = run.In("rstd", rstd);
        const Tensor d_dx = v.dx ? run.ActInOut("dx", dx0) : Tensor();
        float* d_dw = v.dw ? run.InOut("dweight", dw0) : nullptr;
        run.Execute(
            [&] { return be.RmsNormBackward(d_dout, d_x, d_w, d_rstd, d_dx, d_dw, rows, dim); });
        if (v.dx) run.CheckAccumulated("dx", dx0, dx_delta, dx_f, kReduced);
        if (v.dw) run.CheckAccumulated("dweight", dw0, dw_delta, dw_f, kReduced);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Linear and the tied LM head (a linear without bias against the embedding table).

struct BackwardVariant {
  bool a, b, c;  // which of the (up to three) gradients are passed
  const char* name;
};

void CheckLinear(Suite& s) {
  if (!s.WantsAny({"LinearForward", "LinearBackward"})) return;
  Backend& be = s.be();
  struct Shape {
    int64_t rows, in, out;
    bool full_only;
  };
  // Odd sizes, one output feature, the 0.5B model's k/v projection (896 -> 128), its q projection
  // and a long reduction (the MLP's down projection).
  const Shape shapes[] = {{5, 10, 7, false},     {17, 129, 65, false}, {8, 64, 1, false},
                          {33, 896, 128, false}, {19, 896, 896, true}, {24, 4864, 32, true}};
  uint32_t index = 0;
  for (const Shape& sh : shapes) {
    ++index;
    if (sh.full_only && s.quick()) continue;
    const int64_t rows = sh.rows, in = sh.in, out = sh.out;
    Rng rng = s.MakeRng("Linear", index);
    const std::vector<float> x = rng.Uniform(rows * in, -1, 1);
    const std::vector<float> w = rng.Uniform(out * in, -1, 1);
    const std::vector<float> b = rng.Uniform(out, -1, 1);
    const std::vector<float> dy = rng.Uniform(rows * out, -1, 1);
    const std::vector<double> xd = ToDouble(x), wd = ToDouble(w), bd = ToDouble(b);
    const std::string shape = Dims({{"rows", rows}, {"in", in}, {"out", out}});

    if (s.Wants("LinearForward")) {
      for (bool bias : {true, false}) {
        std::vector<double> want(rows * out);
        ref::LinearForward<double>(xd.data(), wd.data(), bias ? bd.data() : nullptr, want.data(),
                                   rows, in, out);
        std::vector<float> fp32(rows * out);
        ref::LinearForward<float>(x.data(), w.data(), bias ? b.data() : nullptr, fp32.data(), rows,
                                  in, out);
        std::vector<double> magnitude(rows * out);
        ref::LinearForward<double>(Abs(x).data(), Abs(w).data(), bias ? Abs(b).data() : nullptr,
                                   magnitude.data(), rows, in, out);
        OpRun run(s, "LinearForward", shape + (bias ? " +bias" : " bias=null"));
        const ConstTensor d_x = run.Act("x", x);
        const ConstTensor d_w = run.Act("weight", w);
        const ConstTensor d_b = bias ? run.Act("bias", b) : ConstTensor();
        const Tensor d_y = run.ActOut("y", want.size());
        run.Execute([&] { return be.LinearForward(d_x, d_w, d_b, d_y, rows, in, out); });
        run.Check("y", want, fp32, kReduced, 0, SumScale(magnitude, in));
      }
    }
    if (s.Wants("LinearBackward")) {
      std::vector<double> dx_delta(rows * in, 0.0), dw_delta(out * in, 0.0), db_delta(out, 0.0);
      ref::LinearBackward<double>(ToDouble(dy).data(), xd.data(), wd.data(), dx_delta.data(),
                                  dw_delta.data(), db_delta.data(), rows, in, out);
      std::vector<double> dx_mag(rows * in, 0.0), dw_mag(out * in, 0.0), db_mag(out, 0.0);
      ref::LinearBackward<double>(Abs(dy).data(), Abs(x).data(), Abs(w).data(), dx_mag.data(),
                                  dw_mag.data(), db_mag.data(), rows, in, out);
      Rng prng = s.MakeRng("LinearBackward", index);
      const std::vector<float> dx0 = Prefill(prng, dx_delta), dw0 = Prefill(prng, dw_delta),
                               db0 = Prefill(prng, db_delta);
      std::vector<float> dx_f = dx0, dw_f = dw0, db_f = db0;
      ref::LinearBackward<float>(dy.data(), x.data(), w.data(), dx_f.data(), dw_f.data(),
                                 db_f.data(), rows, in, out);
      for (const BackwardVariant& v : {BackwardVariant{true, true, true, ""},
                                       BackwardVariant{true, true, false, " dbias=null"},
                                       BackwardVariant{true, false, false, " dweight=dbias=null"},
                                       BackwardVariant{false, true, true, " dx=null"}}) {
        OpRun run(s, "LinearBackward", shape + v.name);
        const ConstTensor d_dy = run.Act("dy", dy);
        const ConstTensor d_x = run.Act("x", x);
        const ConstTensor d_w = run.Act("weight", w);
        const Tensor d_dx = v.a ? run.ActInOut("dx", dx0) : Tensor();
        float* d_dw = v.b ? run.InOut("dweight", dw0) : nullptr;
        float* d_db = v.c ? run.InOut("dbias", db0) : nullptr;
        run.Execute(
            [&] { return be.LinearBackward(d_dy, d_x, d_w, d_dx, d_dw, d_db, rows, in, out); });
        if (v.a) run.CheckAccumulated("dx", dx0, dx_delta, dx_f, kReduced, SumScale(dx_mag, out));
        if (v.b)
          run.CheckAccumulated("dweight", dw0, dw_delta, dw_f, kReduced, SumScale(dw_mag, rows));
        if (v.c)
          run.CheckAccumulated("dbias", db0, db_delta, db_f, kReduced, SumScale(db_mag, rows));
      }
    }
  }
}

void CheckLmHead(Suite& s) {
  if (!s.WantsAny({"LmHeadForward", "LmHeadBackward"})) return;
  Backend& be = s.be();
  struct Shape {
    int64_t rows, vocab, dim;
    bool full_only;
  };
  const Shape shapes[] = {{4, 11, 6, false}, {7, 1000, 64, false}, {3, 151936, 64, true}};
  uint32_t index = 0;
  for (const Shape& sh : shapes) {
    ++index;
    if (sh.full_only && s.quick()) continue;
    const int64_t rows = sh.rows, vocab = sh.vocab, dim = sh.dim;
    Rng rng = s.MakeRng("LmHead", index);
    const std::vector<float> y = rng.Uniform(rows * dim, -1, 1);
    const std::vector<float> emb = rng.Uniform(vocab * dim, -0.5, 0.5);
    const std::vector<float> dlogits = rng.Uniform(rows * vocab, -1, 1);
    const std::vector<double> yd = ToDouble(y), ed = ToDouble(emb);
    const std::string shape = Dims({{"rows", rows}, {"vocab", vocab}, {"dim", dim}});

    if (s.Wants("LmHeadForward")) {
      std::vector<double> want(rows * vocab);
      ref::LinearForward<double>(yd.data(), ed.data(), nullptr, want.data(), rows, dim, vocab);
      std::vector<float> fp32(rows * vocab);
      ref::LinearForward<float>(y.data(), emb.data(), nullptr, fp32.data(), rows, dim, vocab);
      std::vector<double> magnitude(rows * vocab);
      ref::LinearForward<double>(Abs(y).data(), Abs(emb).data(), nullptr, magnitude.data(), rows,
                                 dim, vocab);
      OpRun run(s, "LmHeadForward", shape);
      const ConstTensor d_y = run.Act("y", y);
      const ConstTensor d_e = run.Act("embedding", emb);
      float* d_logits = run.Out("logits", want.size());
      run.Execute([&] { return be.LmHeadForward(d_y, d_e, d_logits, rows, vocab, dim); });
      run.Check("logits", want, fp32, kReduced, 0, SumScale(magnitude, dim));
    }
    if (s.Wants("LmHeadBackward")) {
      std::vector<double> dy_delta(rows * dim, 0.0), de_delta(vocab * dim, 0.0);
      ref::LinearBackward<double>(ToDouble(dlogits).data(), yd.data(), ed.data(), dy_delta.data(),
                                  de_delta.data(), nullptr, rows, dim, vocab);
      std::vector<double> dy_mag(rows * dim, 0.0), de_mag(vocab * dim, 0.0);
      ref::LinearBackward<double>(Abs(dlogits).data(), Abs(y).data(), Abs(emb).data(),
                                  dy_mag.data(), de_mag.data(), nullptr, rows, dim, vocab);
      Rng prng = s.MakeRng("LmHeadBackward", index);
      const std::vector<float> dy0 = Prefill(prng, dy_delta), de0 = Prefill(prng, de_delta);
      std::vector<float> dy_f = dy0, de_f = de0;
      ref::LinearBackward<float>(dlogits.data(), y.data(), emb.data(), dy_f.data(), de_f.data(),
                                 nullptr, rows, dim, vocab);
      for (const BackwardVariant& v : {BackwardVariant{true, true, false, ""},
                                       BackwardVariant{true, false, false, " dembedding=null"},
                                       BackwardVariant{false, true, false, " dy=null"}}) {
        OpRun run(s, "LmHeadBackward", shape + v.name);
        const float* d_dl = run.In("dlogits", dlogits);
        const ConstTensor d_y = run.Act("y", y);
        const ConstTensor d_e = run.Act("embedding", emb);
        const Tensor d_dy = v.a ? run.ActInOut("dy", dy0) : Tensor();
        float* d_de = v.b ? run.InOut("dembedding", de0) : nullptr;
        run.Execute(
            [&] { return be.LmHeadBackward(d_dl, d_y, d_e, d_dy, d_de, rows, vocab, dim); });
        if (v.a) run.CheckAccumulated("dy", dy0, dy_delta, dy_f, kReduced, SumScale(dy_mag, vocab));
        if (v.b) {
          run.CheckAccumulated("dembedding", de0, de_delta, de_f, kReduced, SumScale(de_mag, rows));
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// RoPE.

void CheckRope(Suite& s) {
  if (!s.WantsAny({"RopeForward", "RopeBackward"})) return;
  Backend& be = s.be();
  enum class Positions { kPast, kPacked, kRandom };
  struct Shape {
    int64_t batch, seq_len, heads, head_dim, past_len;
    double theta;
    bool yarn;
    Positions positions;
  };
  // Plain RoPE; Qwen2-0.5B's heads; YaRN (attention_factor != 1) after a KV cache; packed
  // documents (positions restart); random positions up to 32k (large fp32 angles).
  const Shape shapes[] = {{2, 5, 3, 8, 3, 1e4, false, Positions::kPast},
                          {1, 33, 14, 64, 0, 1e6, false, Positions::kPast},
                          {2, 17, 2, 128, 1000, 1e6, true, Positions::kPast},
                          {2, 9, 4, 40, 0, 1e6, true, Positions::kPacked},
                          {1, 64, 2, 64, 5, 1e6, false, Positions::kRandom}};
  uint32_t index = 0;
  for (const Shape& sh : shapes) {
    ++index;
    const int64_t B = sh.batch, T = sh.seq_len, H = sh.heads, D = sh.head_dim;
    const int64_t tokens = B * T, n = tokens * H * D;
    RopeConfig config;
    config.head_dim = D;
    config.theta = sh.theta;
    if (sh.yarn) {
      config.yarn = true;
      config.factor = 4.0;
      config.original_max_position_embeddings = 4096;
    }
    RopeTables tables;
    const OpStatus st = ComputeRopeTables(config, &tables);
    if (!st.ok()) {  // the suite's own setup; should not happen
      RecordDirect(s, "RopeForward", "-", "setup", false, st.message());
      return;
    }
    const float af = tables.attention_factor;
    const float* inv = tables.inv_freq.data();
    Rng rng = s.MakeRng("Rope", index);
    const std::vector<float> x = rng.Uniform(n, -1, 1);
    const std::vector<float> dy = rng.Uniform(n, -1, 1);
    std::vector<int32_t> positions(tokens);
    const std::vector<int32_t> random_pos = rng.Ints(tokens, 0, 32767);
    for (int64_t i = 0; i < tokens; ++i) {
      const int64_t t = i % T;
      positions[i] = static_cast<int32_t>(sh.positions == Positions::kPast     ? sh.past_len + t
                                          : sh.positions == Positions::kPacked ? t % 4
                                                                               : random_pos[i]);
    }
    const bool explicit_positions = sh.positions != Positions::kPast;
    const std::string shape =
        Dims({{"B", B}, {"T", T}, {"H", H}, {"D", D}, {"past", sh.past_len}}) +
        (sh.yarn ? " yarn af=" + Fmt("%.4f", af) : "") +
        (sh.positions == Positions::kPacked   ? " positions=packed"
         : sh.positions == Positions::kRandom ? " positions=random"
                                              : "");
    auto rope_shape = [&](const int32_t* d_positions) {
      return RopeShape{.batch = B,
                       .seq_len = T,
                       .num_heads = H,
                       .head_dim = D,
                       .past_len = sh.past_len,
                       .positions = explicit_positions ? d_positions : nullptr};
    };

    if (s.Wants("RopeForward")) {
      std::vector<double> want(n);
      ref::RopeForward<double>(ToDouble(x).data(), want.data(), tokens, H, D, positions.data(), inv,
                               af);
      std::vector<float> fp32(n);
      ref::RopeForward<float>(x.data(), fp32.data(), tokens, H, D, positions.data(), inv, af);
      for (bool in_place : {false, true}) {
        OpRun run(s, "RopeForward", shape + (in_place ? " y=x" : ""));
        const Tensor d_y = in_place ? run.ActInOut("y", x) : run.ActOut("y", n);
        const ConstTensor d_x = in_place ? ConstTensor(d_y) : run.Act("x", x);
        const float* d_inv = run.In("inv_freq", tables.inv_freq);
        const RopeShape rs =
            rope_shape(explicit_positions ? run.Ints("positions", positions) : nullptr);
        run.Execute([&] { return be.RopeForward(d_x, d_y, rs, d_inv, af); });
        run.Check("y", want, fp32, kTranscendental);
      }
    }
    if (s.Wants("RopeBackward")) {
      std::vector<double> delta(n, 0.0);
      ref::RopeBackward<double>(ToDouble(dy).data(), delta.data(), tokens, H, D, positions.data(),
                                inv, af);
      Rng prng = s.MakeRng("RopeBackward", index);
      const std::vector<float> dx0 = Prefill(prng, delta);
      std::vector<float> fp32 = dx0;
      ref::RopeBackward<float>(dy.data(), fp32.data(), tokens, H, D, positions.data(), inv, af);
      OpRun run(s, "RopeBackward", shape);
      const ConstTensor d_dy = run.Act("dy", dy);
      const Tensor d_dx = run.ActInOut("dx", dx0);
      const float* d_inv = run.In("inv_freq", tables.inv_freq);
      const RopeShape rs =
          rope_shape(explicit_positions ? run.Ints("positions", positions) : nullptr);
      run.Execute([&] { return be.RopeBackward(d_dy, d_dx, rs, d_inv, af); });
      run.CheckAccumulated("dx", dx0, delta, fp32, kTranscendental);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Causal GQA attention (and DCA, which backends may leave out).

struct AttentionCase {
  int64_t batch, seq_len, past_len, extra_capacity, heads, kv_heads, head_dim;
  float softmax_scale;
  bool full_only;
  bool partial_grads;  // also run with dq only and with dk/dv only
};

void CheckAttention(Suite& s) {
  if (!s.WantsAny({"AttentionForward", "AttentionBackward"})) return;
  Backend& be = s.be();
  // GQA 14/2 with head_dim 64 (Qwen2-0.5B) at small T; one key; odd head dims (24, 40) at tile
  // edges (63, 65, 129); a KV cache (past_len > 0, kv_capacity > kv_len); decode; an explicit
  // softmax scale with head_dim 128; a long sequence.
  const AttentionCase cases[] = {
      {2, 5, 0, 0, 14, 2, 64, 0.0f, false, true},   {2, 1, 0, 0, 4, 2, 24, 0.0f, false, false},
      {1, 63, 0, 0, 2, 1, 40, 0.0f, false, false},  {1, 65, 0, 0, 6, 2, 24, 0.0f, false, false},
      {1, 129, 0, 0, 2, 2, 64, 0.0f, false, false}, {2, 29, 37, 5, 4, 2, 32, 0.0f, false, true},
      {1, 1, 70, 3, 14, 2, 64, 0.0f, false, false}, {1, 16, 0, 0, 4, 4, 128, 0.1f, false, false},
      {1, 1024, 0, 0, 2, 1, 64, 0.0f, true, false}};
  uint32_t index = 0;
  for (const AttentionCase& c : cases) {
    ++index;
    if (c.full_only && s.quick()) continue;
    const AttentionShape shape{.batch = c.batch,
                               .seq_len = c.seq_len,
                               .past_len = c.past_len,
                               .kv_capacity = c.past_len + c.seq_len + c.extra_capacity,
                               .num_heads = c.heads,
                               .num_kv_heads = c.kv_heads,
                               .head_dim = c.head_dim,
                               .softmax_scale = c.softmax_scale};
    const int64_t B = c.batch, T = c.seq_len, R = shape.kv_rows(), H = c.heads, Hkv = c.kv_heads,
                  D = c.head_dim;
    const double scale = c.softmax_scale > 0.0f ? static_cast<double>(c.softmax_scale)
                                                : 1.0 / std::sqrt(static_cast<double>(D));
    const ref::AttentionDims dims{B, T, c.past_len, R, H, Hkv, D, scale};
    Rng rng = s.MakeRng("Attention", index);
    const std::vector<float> q = rng.Uniform(B * T * H * D, -2, 2);
    std::vector<float> k = rng.Uniform(B * R * Hkv * D, -2, 2);
    std::vector<float> v = rng.Uniform(B * R * Hkv * D, -1, 1);
    const std::vector<float> dout = rng.Uniform(B * T * H * D, -1, 1);
    // Cache rows past past_len + T are unused (uninitialized memory in a real cache): NaN, so a
    // backend that lets them into the result fails.
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = shape.kv_len(); j < R; ++j)
        for (int64_t i = 0; i < Hkv * D; ++i) {
          k[(b * R + j) * Hkv * D + i] = kNaN;
          v[(b * R + j) * Hkv * D + i] = kNaN;
        }
    const std::vector<double> qd = ToDouble(q), kd = ToDouble(k), vd = ToDouble(v);
    std::string desc = Dims(
        {{"B", B}, {"T", T}, {"past", c.past_len}, {"cap", R}, {"H", H}, {"Hkv", Hkv}, {"D", D}});
    if (c.softmax_scale > 0.0f) desc += " scale=" + Fmt("%g", c.softmax_scale);

    std::vector<double> o_d(q.size()), lse_d(B * H * T);
    ref::AttentionForward<double>(qd.data(), kd.data(), vd.data(), o_d.data(), lse_d.data(), dims);
    if (s.Wants("AttentionForward")) {
      std::vector<float> o_f(q.size()), lse_f(lse_d.size());
      ref::AttentionForward<float>(q.data(), k.data(), v.data(), o_f.data(), lse_f.data(), dims);
      OpRun run(s, "AttentionForward", desc);
      const ConstTensor d_q = run.Act("q", q);
      const ConstTensor d_k = run.Act("k", k);
      const ConstTensor d_v = run.Act("v", v);
      const Tensor d_o = run.ActOut("o", o_d.size());
      float* d_lse = run.Out("lse", lse_d.size());
      run.Execute([&] { return be.AttentionForward(d_q, d_k, d_v, d_o, d_lse, shape); });
      run.Check("o", o_d, o_f, kReduced);
      run.Check("lse", lse_d, lse_f, kReduced);
    }
    if (s.Wants("AttentionBackward")) {
      const std::vector<float> o = ToFloat(o_d), lse = ToFloat(lse_d);
      std::vector<double> dq_delta(q.size(), 0.0), dk_delta(k.size(), 0.0), dv_delta(v.size(), 0.0);
      ref::AttentionBackward<double>(qd.data(), kd.data(), vd.data(), ToDouble(dout).data(),
                                     dq_delta.data(), dk_delta.data(), dv_delta.data(), dims);
      Rng prng = s.MakeRng("AttentionBackward", index);
      const std::vector<float> dq0 = Prefill(prng, dq_delta), dk0 = Prefill(prng, dk_delta),
                               dv0 = Prefill(prng, dv_delta);
      std::vector<float> dq_f = dq0, dk_f = dk0, dv_f = dv0;
      ref::AttentionBackward<float>(q.data(), k.data(), v.data(), dout.data(), dq_f.data(),
                                    dk_f.data(), dv_f.data(), dims);
      std::vector<BackwardVariant> variants = {{true, true, true, ""}};
      if (c.partial_grads) {
        variants.push_back({true, false, false, " dk=dv=null"});
        variants.push_back({false, true, true, " dq=null"});
      }
      for (const BackwardVariant& var : variants) {
        OpRun run(s, "AttentionBackward", desc + var.name);
        const ConstTensor d_q = run.Act("q", q);
        const ConstTensor d_k = run.Act("k", k);
        const ConstTensor d_v = run.Act("v", v);
        const ConstTensor d_o = run.Act("o", o);
        const float* d_lse = run.In("lse", lse);
        const ConstTensor d_dout = run.Act("dout", dout);
        const Tensor d_dq = var.a ? run.ActInOut("dq", dq0) : Tensor();
        const Tensor d_dk = var.b ? run.ActInOut("dk", dk0) : Tensor();
        const Tensor d_dv = var.c ? run.ActInOut("dv", dv0) : Tensor();
        run.Execute([&] {
          return be.AttentionBackward(d_q, d_k, d_v, d_o, d_lse, d_dout, d_dq, d_dk, d_dv, shape);
        });
        if (var.a) run.CheckAccumulated("dq", dq0, dq_delta, dq_f, kReduced);
        if (var.b) run.CheckAccumulated("dk", dk0, dk_delta, dk_f, kReduced);
        if (var.c) run.CheckAccumulated("dv", dv0, dv_delta, dv_f, kReduced);
      }
    }
  }
}

void CheckDcaAttention(Suite& s) {
  if (!s.Wants("DcaAttentionForward")) return;
  Backend& be = s.be();
  struct Shape {
    int64_t batch, seq_len, past_len, extra_capacity, heads, kv_heads, head_dim, chunk_len;
  };
  // Several chunks (intra, successor and inter rotations); a KV cache across a chunk boundary.
  const Shape shapes[] = {{1, 37, 0, 0, 4, 2, 16, 8}, {2, 5, 20, 3, 4, 2, 24, 16}};
  uint32_t index = 0;
  for (const Shape& c : shapes) {
    ++index;
    const DcaAttentionShape shape{.batch = c.batch,
                                  .seq_len = c.seq_len,
                                  .past_len = c.past_len,
                                  .kv_capacity = c.past_len + c.seq_len + c.extra_capacity,
                                  .num_heads = c.heads,
                                  .num_kv_heads = c.kv_heads,
                                  .head_dim = c.head_dim,
                                  .chunk_len = c.chunk_len};
    const int64_t B = c.batch, T = c.seq_len, R = shape.kv_rows(), H = c.heads, Hkv = c.kv_heads,
                  D = c.head_dim;
    const ref::AttentionDims dims{B, T,   c.past_len, R,
                                  H, Hkv, D,          1.0 / std::sqrt(static_cast<double>(D))};
    Rng rng = s.MakeRng("DcaAttention", index);
    const std::vector<float> qa = rng.Uniform(B * T * H * D, -2, 2);
    const std::vector<float> qb = rng.Uniform(B * T * H * D, -2, 2);
    const std::vector<float> qc = rng.Uniform(B * T * H * D, -2, 2);
    const std::vector<float> k = rng.Uniform(B * R * Hkv * D, -2, 2);
    const std::vector<float> v = rng.Uniform(B * R * Hkv * D, -1, 1);
    std::vector<double> o_d(qa.size()), lse_d(B * H * T);
    ref::DcaAttentionForward<double>(ToDouble(qa).data(), ToDouble(qb).data(), ToDouble(qc).data(),
                                     ToDouble(k).data(), ToDouble(v).data(), o_d.data(),
                                     lse_d.data(), dims, c.chunk_len);
    std::vector<float> o_f(qa.size()), lse_f(lse_d.size());
    ref::DcaAttentionForward<float>(qa.data(), qb.data(), qc.data(), k.data(), v.data(), o_f.data(),
                                    lse_f.data(), dims, c.chunk_len);
    OpRun run(s, "DcaAttentionForward",
              Dims({{"B", B},
                    {"T", T},
                    {"past", c.past_len},
                    {"cap", R},
                    {"H", H},
                    {"Hkv", Hkv},
                    {"D", D},
                    {"chunk", c.chunk_len}}));
    run.AllowUnimplemented();
    const ConstTensor d_qa = run.Act("q_intra", qa);
    const ConstTensor d_qb = run.Act("q_succ", qb);
    const ConstTensor d_qc = run.Act("q_inter", qc);
    const ConstTensor d_k = run.Act("k", k);
    const ConstTensor d_v = run.Act("v", v);
    const Tensor d_o = run.ActOut("o", o_d.size());
    float* d_lse = run.Out("lse", lse_d.size());
    if (!run.Execute([&] {
          return be.DcaAttentionForward(d_qa, d_qb, d_qc, d_k, d_v, d_o, d_lse, shape);
        })) {
      continue;
    }
    run.Check("o", o_d, o_f, kReduced);
    run.Check("lse", lse_d, lse_f, kReduced);
  }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU and the residual add.

void CheckSwiglu(Suite& s) {
  if (!s.WantsAny({"SwigluForward", "SwigluBackward"})) return;
  Backend& be = s.be();
  struct Shape {
    int64_t rows, dim;
    float gate_range;
  };
  // Odd sizes, the 0.5B model's MLP width, one element, and saturated gates (exp overflows:
  // no NaN may come out).
  const Shape shapes[] = {{3, 11, 4}, {17, 4864, 8}, {1, 1, 4}, {2, 64, 100}};
  uint32_t index = 0;
  for (const Shape& sh : shapes) {
    ++index;
    const int64_t rows = sh.rows, dim = sh.dim, n = rows * dim;
    Rng rng = s.MakeRng("Swiglu", index);
    const std::vector<float> gate = rng.Uniform(n, -sh.gate_range, sh.gate_range);
    const std::vector<float> up = rng.Uniform(n, -1, 1);
    const std::vector<float> dout = rng.Uniform(n, -1, 1);
    const std::vector<double> gd = ToDouble(gate), ud = ToDouble(up);
    const std::string shape =
        Dims({{"rows", rows}, {"dim", dim}}) + " gate=+-" + Fmt("%g", sh.gate_range);
    if (s.Wants("SwigluForward")) {
      std::vector<double> want(n);
      ref::SwigluForward<double>(gd.data(), ud.data(), want.data(), n);
      std::vector<float> fp32(n);
      ref::SwigluForward<float>(gate.data(), up.data(), fp32.data(), n);
      OpRun run(s, "SwigluForward", shape);
      const ConstTensor d_gate = run.Act("gate", gate);
      const ConstTensor d_up = run.Act("up", up);
      const Tensor d_out = run.ActOut("out", n);
      run.Execute([&] { return be.SwigluForward(d_gate, d_up, d_out, rows, dim); });
      run.Check("out", want, fp32, kTranscendental);
    }
    if (s.Wants("SwigluBackward")) {
      std::vector<double> dg_delta(n, 0.0), du_delta(n, 0.0);
      ref::SwigluBackward<double>(ToDouble(dout).data(), gd.data(), ud.data(), dg_delta.data(),
                                  du_delta.data(), n);
      // dgate's factor 1 + g (1 - sigmoid(g)) crosses zero: the magnitude of its terms.
      double dg_mag = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        const double sig = 1.0 / (1.0 + std::exp(-gd[i]));
        dg_mag = std::max(
            dg_mag, std::fabs(dout[i] * ud[i] * sig) * (1.0 + std::fabs(gd[i] * (1.0 - sig))));
      }
      Rng prng = s.MakeRng("SwigluBackward", index);
      const std::vector<float> dg0 = Prefill(prng, dg_delta), du0 = Prefill(prng, du_delta);
      std::vector<float> dg_f = dg0, du_f = du0;
      ref::SwigluBackward<float>(dout.data(), gate.data(), up.data(), dg_f.data(), du_f.data(), n);
      for (const BackwardVariant& v : {BackwardVariant{true, true, false, ""},
                                       BackwardVariant{true, false, false, " dup=null"},
                                       BackwardVariant{false, true, false, " dgate=null"}}) {
        OpRun run(s, "SwigluBackward", shape + v.name);
        const ConstTensor d_dout = run.Act("dout", dout);
        const ConstTensor d_gate = run.Act("gate", gate);
        const ConstTensor d_up = run.Act("up", up);
        const Tensor d_dg = v.a ? run.ActInOut("dgate", dg0) : Tensor();
        const Tensor d_du = v.b ? run.ActInOut("dup", du0) : Tensor();
        run.Execute([&] { return be.SwigluBackward(d_dout, d_gate, d_up, d_dg, d_du, rows, dim); });
        if (v.a) run.CheckAccumulated("dgate", dg0, dg_delta, dg_f, kTranscendental, dg_mag);
        if (v.b) run.CheckAccumulated("dup", du0, du_delta, du_f, kTranscendental);
      }
    }
  }
}

void CheckResidual(Suite& s) {
  if (!s.WantsAny({"ResidualForward", "ResidualBackward"})) return;
  Backend& be = s.be();
  uint32_t index = 0;
  for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{100003}}) {
    ++index;
    Rng rng = s.MakeRng("Residual", index);
    const std::vector<float> a = rng.Uniform(n, -1, 1), b = rng.Uniform(n, -1, 1);
    const std::vector<float> dout = rng.Uniform(n, -1, 1);
    const std::string shape = Dims({{"n", n}});
    if (s.Wants("ResidualForward")) {
      std::vector<double> want(n);
      std::vector<float> fp32(n);
      for (int64_t i = 0; i < n; ++i) {
        want[i] = static_cast<double>(a[i]) + b[i];
        fp32[i] = a[i] + b[i];
      }
      for (bool in_place : {false, true}) {
        OpRun run(s, "ResidualForward", shape + (in_place ? " out=a" : ""));
        const Tensor d_out = in_place ? run.ActInOut("out", a) : run.ActOut("out", n);
        const ConstTensor d_a = in_place ? ConstTensor(d_out) : run.Act("a", a);
        const ConstTensor d_b = run.Act("b", b);
        run.Execute([&] { return be.ResidualForward(d_a, d_b, d_out, n); });
        run.Check("out", want, fp32, kRounded);
      }
    }
    if (s.Wants("ResidualBackward")) {
      const std::vector<double> delta = ToDouble(dout);
      Rng prng = s.MakeRng("ResidualBackward", index);
      const std::vector<float> da0 = Prefill(prng, delta), db0 = Prefill(prng, delta);
      std::vector<float> da_f = da0, db_f = db0, same_f = da0;
      std::vector<double> twice(n);
      for (int64_t i = 0; i < n; ++i) {
        da_f[i] += dout[i];
        db_f[i] += dout[i];
        same_f[i] = same_f[i] + dout[i] + dout[i];
        twice[i] = 2.0 * dout[i];
      }
      for (int variant = 0; variant < 3; ++variant) {
        static const char* const kNames[] = {"", " db=null", " db=da (one buffer)"};
        OpRun run(s, "ResidualBackward", shape + kNames[variant]);
        const ConstTensor d_dout = run.Act("dout", dout);
        const Tensor d_da = run.ActInOut("da", da0);
        const Tensor d_db = variant == 0 ? run.ActInOut("db", db0) : variant == 1 ? Tensor() : d_da;
        run.Execute([&] { return be.ResidualBackward(d_dout, d_da, d_db, n); });
        if (variant == 2) {
          run.CheckAccumulated("da", da0, twice, same_f, kRounded);
        } else {
          run.CheckAccumulated("da", da0, delta, da_f, kRounded);
        }
        if (variant == 0) run.CheckAccumulated("db", db0, delta, db_f, kRounded);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy.

template <typename T>
std::vector<T> RowLogSumExp(const std::vector<T>& logits, int64_t rows, int64_t vocab) {
  std::vector<T> lse(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const T* z = logits.data() + r * vocab;
    const T max = *std::max_element(z, z + vocab);
    T sum = 0;
    for (int64_t j = 0; j < vocab; ++j) sum += std::exp(z[j] - max);
    lse[r] = max + std::log(sum);
  }
  return lse;
}

void CheckCrossEntropy(Suite& s) {
  if (!s.WantsAny({"CrossEntropyForward", "CrossEntropyBackward", "CrossEntropyForwardBackward"}))
    return;
  Backend& be = s.be();
  struct Shape {
    int64_t rows, vocab;
    float range;
    int32_t ignore_index;
    std::vector<int32_t> labels;  // empty: random, every third row ignored
  };
  // Ignored rows; several summation chunks; the real vocabulary (first and last label); large
  // logits (the row max must come out first); every row ignored with another ignore_index.
  const Shape shapes[] = {
      {6, 13, 3, kIgnoreIndex, {4, kIgnoreIndex, 0, 12, kIgnoreIndex, 7}},
      {7, 5000, 8, kIgnoreIndex, {4999, kIgnoreIndex, 0, 2, 2500, 4000, kIgnoreIndex}},
      {4, 151936, 4, kIgnoreIndex, {0, 151935, kIgnoreIndex, 77777}},
      {5, 257, 50, kIgnoreIndex, {}},
      {3, 100, 3, -1, {-1, -1, -1}}};
  uint32_t index = 0;
  for (const Shape& sh : shapes) {
    ++index;
    const int64_t rows = sh.rows, vocab = sh.vocab, n = rows * vocab;
    const int32_t ignore = sh.ignore_index;
    Rng rng = s.MakeRng("CrossEntropy", index);
    const std::vector<float> logits = rng.Uniform(n, -sh.range, sh.range);
    std::vector<int32_t> labels = sh.labels;
    if (labels.empty()) {
      labels = rng.Ints(rows, 0, static_cast<int32_t>(vocab - 1));
      for (int64_t r = 1; r < rows; r += 3) labels[r] = ignore;
    }
    int64_t valid = 0;
    for (int32_t l : labels) valid += l != ignore;
    const float grad_scale = valid > 0 ? 1.0f / static_cast<float>(valid) : 1.0f;
    const std::string shape =
        Dims({{"rows", rows}, {"vocab", vocab}, {"valid", valid}}) + " logits=+-" +
        Fmt("%g", sh.range) +
        (ignore != kIgnoreIndex ? " ignore_index=" + std::to_string(ignore) : "");

    // References: losses, lse, their sum and dlogits in double and in fp32.
    const std::vector<double> zd = ToDouble(logits);
    std::vector<double> loss_d(rows), dz_d(n);
    ref::CrossEntropyForward<double>(zd.data(), labels.data(), loss_d.data(), rows, vocab, ignore);
    ref::CrossEntropyBackward<double>(zd.data(), labels.data(), grad_scale, dz_d.data(), rows,
                                      vocab, ignore);
    const std::vector<double> lse_d = RowLogSumExp(zd, rows, vocab);
    std::vector<float> loss_f(rows), dz_f(n);
    ref::CrossEntropyForward<float>(logits.data(), labels.data(), loss_f.data(), rows, vocab,
                                    ignore);
    ref::CrossEntropyBackward<float>(logits.data(), labels.data(), grad_scale, dz_f.data(), rows,
                                     vocab, ignore);
    const std::vector<float> lse_f = RowLogSumExp(logits, rows, vocab);
    double sum_d = 0.0, sum_f = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
      sum_d += loss_d[r];
      sum_f += loss_f[r];
    }
    const size_t row_len = static_cast<size_t>(vocab);  // each softmax row on its own scale

    if (s.Wants("CrossEntropyForward")) {
      for (bool host_outputs : {true, false}) {
        if (!host_outputs && index != 1) continue;  // optional loss_sum/num_valid: once
        OpRun run(s, "CrossEntropyForward",
                  shape + (host_outputs ? "" : " loss_sum=num_valid=null"));
        const float* d_logits = run.In("logits", logits);
        const int32_t* d_labels = run.Ints("labels", labels);
        float* d_losses = run.Out("losses", rows);
        float* d_lse = run.Out("lse", rows);
        double* loss_sum = host_outputs ? run.ScalarOut<double>("loss_sum") : nullptr;
        int64_t* num_valid = host_outputs ? run.ScalarOut<int64_t>("num_valid") : nullptr;
        run.Execute([&] {
          return be.CrossEntropyForward(d_logits, d_labels, d_losses, d_lse, loss_sum, num_valid,
                                        rows, vocab, ignore);
        });
        run.Check("losses", loss_d, loss_f, kReduced);
        run.Check("lse", lse_d, lse_f, kReduced);
        if (host_outputs) {
          run.CheckScalar("loss_sum", run.Scalar<double>("loss_sum"), sum_d, sum_f, kReduced);
          run.CheckEqual("num_valid", run.Scalar<int64_t>("num_valid"), valid);
        }
      }
    }
    if (s.Wants("CrossEntropyBackward")) {
      const std::vector<float> lse = ToFloat(lse_d);  // as the forward saves it
      for (bool in_place : {false, true}) {
        OpRun run(s, "CrossEntropyBackward", shape + (in_place ? " dlogits=logits" : ""));
        float* d_dz = in_place ? run.InOut("dlogits", logits) : run.Out("dlogits", n);
        const float* d_logits = in_place ? d_dz : run.In("logits", logits);
        const int32_t* d_labels = run.Ints("labels", labels);
        const float* d_lse = run.In("lse", lse);
        run.Execute([&] {
          return be.CrossEntropyBackward(d_logits, d_labels, d_lse, grad_scale, d_dz, rows, vocab,
                                         ignore);
        });
        run.Check("dlogits", dz_d, dz_f, kReduced, row_len);
      }
    }
    if (s.Wants("CrossEntropyForwardBackward")) {
      for (bool in_place : {false, true}) {
        OpRun run(s, "CrossEntropyForwardBackward", shape + (in_place ? " dlogits=logits" : ""));
        float* d_dz = in_place ? run.InOut("dlogits", logits) : run.Out("dlogits", n);
        const float* d_logits = in_place ? d_dz : run.In("logits", logits);
        const int32_t* d_labels = run.Ints("labels", labels);
        float* d_losses = run.Out("losses", rows);
        float* d_lse = run.Out("lse", rows);
        double* loss_sum = run.ScalarOut<double>("loss_sum");
        int64_t* num_valid = run.ScalarOut<int64_t>("num_valid");
        run.Execute([&] {
          return be.CrossEntropyForwardBackward(d_logits, d_labels, grad_scale, d_losses, d_lse,
                                                loss_sum, num_valid, d_dz, rows, vocab, ignore);
        });
        run.Check("losses", loss_d, loss_f, kReduced);
        run.Check("lse", lse_d, lse_f, kReduced);
        run.Check("dlogits", dz_d, dz_f, kReduced, row_len);
        run.CheckScalar("loss_sum", run.Scalar<double>("loss_sum"), sum_d, sum_f, kReduced);
        run.CheckEqual("num_valid", run.Scalar<int64_t>("num_valid"), valid);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// AdamW and the sum of squares.

// torch.optim.AdamW's single-tensor arithmetic (ops.h AdamWStep) in T; the scalars are formed
// in double, then rounded to T, as torch does.
template <typename T>
void AdamWReference(T* param, const float* grad, T* m, T* v, int64_t n, const AdamWParams& p) {
  const double t = static_cast<double>(p.step);
  const T step_size = static_cast<T>(p.lr / (1.0 - std::pow(p.beta1, t)));
  const T bc2_sqrt = static_cast<T>(std::sqrt(1.0 - std::pow(p.beta2, t)));
  const T decay = p.apply_weight_decay ? static_cast<T>(1.0 - p.lr * p.weight_decay) : T(1);
  const T one_minus_b1 = static_cast<T>(1.0 - p.beta1), b2 = static_cast<T>(p.beta2),
          one_minus_b2 = static_cast<T>(1.0 - p.beta2), eps = static_cast<T>(p.eps);
  for (int64_t i = 0; i < n; ++i) {
    const T g = static_cast<T>(grad[i]) * static_cast<T>(p.grad_scale);
    const T w = param[i] * decay;
    m[i] = m[i] + one_minus_b1 * (g - m[i]);
    v[i] = v[i] * b2 + one_minus_b2 * (g * g);
    param[i] = w - step_size * (m[i] / (std::sqrt(v[i]) / bc2_sqrt + eps));
  }
}

void CheckAdamW(Suite& s) {
  if (!s.Wants("AdamWStep")) return;
  Backend& be = s.be();
  struct Config {
    int64_t n;
    bool weight_decay;
    float grad_scale;
    int64_t steps;
  };
  const Config configs[] = {
      {1, true, 1.0f, 3}, {1001, true, 1.0f, 5}, {65537, false, 1.0f, 5}, {4099, true, 0.125f, 4}};
  uint32_t index = 0;
  for (const Config& c : configs) {
    ++index;
    const int64_t n = c.n;
    Rng rng = s.MakeRng("AdamW", index);
    const std::vector<float> p0 = rng.Uniform(n, -1, 1);
    // The backend's state comes from its own previous step; the references keep their own.
    std::vector<float> p_b = p0, m_b(n, 0.0f), v_b(n, 0.0f);
    std::vector<double> p_d = ToDouble(p0), m_d(n, 0.0), v_d(n, 0.0);
    std::vector<float> p_f = p0, m_f(n, 0.0f), v_f(n, 0.0f);
    AdamWParams params{.lr = 0.05,
                       .beta1 = 0.9,
                       .beta2 = 0.999,
                       .eps = 1e-8,
                       .weight_decay = 0.1,
                       .apply_weight_decay = c.weight_decay,
                       .step = 1,
                       .grad_scale = c.grad_scale};
    for (int64_t step = 1; step <= c.steps; ++step) {
      params.step = step;
      std::vector<float> g = rng.Uniform(n, -1, 1);
      g[0] = 0.0f;  // a zero gradient: the update divides m = 0 by eps at step 1
      AdamWReference<double>(p_d.data(), g.data(), m_d.data(), v_d.data(), n, params);
      AdamWReference<float>(p_f.data(), g.data(), m_f.data(), v_f.data(), n, params);
      OpRun run(s, "AdamWStep",
                Dims({{"n", n}, {"step", step}}) + (c.weight_decay ? " wd=0.1" : " no-decay") +
                    " grad_scale=" + Fmt("%g", c.grad_scale));
      float* d_p = run.InOut("param", p_b);
      const float* d_g = run.In("grad", g);
      float* d_m = run.InOut("m", m_b);
      float* d_v = run.InOut("v", v_b);
      if (!run.Execute([&] { return be.AdamWStep(d_p, d_g, d_m, d_v, n, params); })) break;
      p_b = run.Floats("param");
      m_b = run.Floats("m");
      v_b = run.Floats("v");
      if (step == 1 || step == c.steps) {
        run.Check("param", p_d, p_f, kTranscendental);
        run.Check("m", m_d, m_f, kTranscendental);
        run.Check("v", v_d, v_f, kTranscendental);
      }
    }
  }
}

// AdamWMultiStep over tensors of odd sizes (an empty one among them), with and without weight
// decay and bf16 working copies: every element equal, bit for bit, to the backend's own
// AdamWStep tensor by tensor (and so to the reference within AdamWStep's tolerance), and each
// working copy the bf16 rounding of the updated weights.
void CheckAdamWMulti(Suite& s) {
  if (!s.Wants("AdamWMultiStep")) return;
  Backend& be = s.be();
  // copy: the dtype of the tensor's working copy, fp32 for none.
  constexpr DType kNone = DType::kFloat32, kBf16 = DType::kBfloat16, kFp16 = DType::kFloat16;
  struct Part {
    int64_t n;
    bool decay;
    DType copy;
  };
  const Part parts[] = {{1001, true, kBf16},   {1, false, kNone},   {0, true, kBf16},
                        {65537, false, kFp16}, {4099, true, kNone}, {17, true, kFp16}};
  const int64_t count = static_cast<int64_t>(std::size(parts));
  Rng rng = s.MakeRng("AdamWMulti", 1);
  std::vector<std::vector<float>> p0, g, m0, v0;
  for (const Part& part : parts) {
    p0.push_back(rng.Uniform(part.n, -1, 1));
    g.push_back(rng.Uniform(part.n, -1, 1));
    m0.push_back(rng.Uniform(part.n, -0.1, 0.1));
    v0.push_back(rng.Uniform(part.n, 0, 0.01));
  }
  AdamWParams params{.lr = 0.05,
                     .beta1 = 0.9,
                     .beta2 = 0.95,
                     .eps = 1e-8,
                     .weight_decay = 0.1,
                     .step = 3,
                     .grad_scale = 0.5f};
  const std::string shape = "tensors=6 (n=1001,1,0,65537,4099,17) step=3";
  // The backend's single-tensor steps: the expected bits.
  std::vector<std::vector<float>> p1(count), m1(count), v1(count);
  {
    OpRun run(s, "AdamWMultiStep", shape + " baseline: AdamWStep per tensor");
    std::vector<float*> dp, dm, dv;
    std::vector<const float*> dg;
    for (int64_t t = 0; t < count; ++t) {
      const std::string i = std::to_string(t);
      dp.push_back(run.InOut(("param" + i).c_str(), p0[t]));
      dg.push_back(run.In(("grad" + i).c_str(), g[t]));
      dm.push_back(run.InOut(("m" + i).c_str(), m0[t]));
      dv.push_back(run.InOut(("v" + i).c_str(), v0[t]));
    }
    if (!run.Execute([&] {
          for (int64_t t = 0; t < count; ++t) {
            AdamWParams p = params;
            p.apply_weight_decay = parts[t].decay;
            QTRAIN_KERNEL_RETURN_IF_ERROR(be.AdamWStep(dp[t], dg[t], dm[t], dv[t], parts[t].n, p));
          }
          return OpStatus::Ok();
        })) {
      return;
    }
    for (int64_t t = 0; t < count; ++t) {
      const std::string i = std::to_string(t);
      p1[t] = run.Floats(("param" + i).c_str());
      m1[t] = run.Floats(("m" + i).c_str());
      v1[t] = run.Floats(("v" + i).c_str());
    }
  }
  OpRun run(s, "AdamWMultiStep", shape);
  std::vector<AdamWTensor> tensors(count);
  for (int64_t t = 0; t < count; ++t) {
    const std::string i = std::to_string(t);
    AdamWTensor& x = tensors[t];
    x.param = run.InOut(("param" + i).c_str(), p0[t]);
    x.grad = run.In(("grad" + i).c_str(), g[t]);
    x.m = run.InOut(("m" + i).c_str(), m0[t]);
    x.v = run.InOut(("v" + i).c_str(), v0[t]);
    x.n = parts[t].n;
    x.apply_weight_decay = parts[t].decay;
    if (parts[t].copy != kNone) {
      x.working_copy = run.ActOutAs(("copy" + i).c_str(), parts[t].n, parts[t].copy);
    }
  }
  if (!run.Execute([&] { return be.AdamWMultiStep(tensors.data(), count, params); })) return;
  for (int64_t t = 0; t < count; ++t) {
    const std::string i = std::to_string(t);
    run.Check(("param" + i).c_str(), ToDouble(p1[t]), p1[t], kExact);
    run.Check(("m" + i).c_str(), ToDouble(m1[t]), m1[t], kExact);
    run.Check(("v" + i).c_str(), ToDouble(v1[t]), v1[t], kExact);
    if (parts[t].copy != kNone) {
      std::vector<double> rounded(p1[t].size());
      for (size_t k = 0; k < rounded.size(); ++k) {
        rounded[k] = HalfValue(HalfBits(p1[t][k], parts[t].copy), parts[t].copy);
      }
      run.Check(("copy" + i).c_str(), rounded, ToFloat(rounded), kExact);
    }
  }

  // Bad descriptors are refused before anything is updated.
  OpRun bad(s, "AdamWMultiStep", "tensors=2");
  const std::vector<float> ones(8, 1.0f);
  AdamWTensor ok{.param = bad.InOut("param", ones),
                 .grad = bad.In("grad", ones),
                 .m = bad.InOut("m", ones),
                 .v = bad.InOut("v", ones),
                 .n = 8};
  const Tensor fp32_copy = bad.InOut("copy", ones);
  AdamWTensor wrong = ok;
  wrong.working_copy = fp32_copy;
  AdamWTensor pair[2] = {ok, wrong};
  bad.ExpectError("an fp32 working copy", [&] { return be.AdamWMultiStep(pair, 2, params); });
  pair[1] = ok;
  pair[1].grad = nullptr;
  bad.ExpectError("a null grad", [&] { return be.AdamWMultiStep(pair, 2, params); });
  pair[1] = ok;
  pair[1].n = -1;
  bad.ExpectError("n < 0", [&] { return be.AdamWMultiStep(pair, 2, params); });
  bad.ExpectError("count < 0", [&] { return be.AdamWMultiStep(pair, -1, params); });
  AdamWParams step0 = params;
  step0.step = 0;
  bad.ExpectError("step 0", [&] { return be.AdamWMultiStep(pair, 1, step0); });
}

void CheckSumOfSquares(Suite& s) {
  if (!s.Wants("SumOfSquares")) return;
  Backend& be = s.be();
  // Odd sizes, an empty tensor (its pointer holds NaN: nothing may be read from it) and none.
  const std::vector<std::vector<int64_t>> sets = {{1, 7, 0, 4097, 100003, 33}, {65536}, {3, 3}, {}};
  uint32_t index = 0;
  for (const std::vector<int64_t>& sizes : sets) {
    ++index;
    Rng rng = s.MakeRng("SumOfSquares", index);
    std::string shape = "sizes={";
    for (size_t t = 0; t < sizes.size(); ++t) {
      if (t > 0) shape += ',';
      shape += std::to_string(sizes[t]);
    }
    shape += "}";
    OpRun run(s, "SumOfSquares", shape);
    std::vector<const float*> tensors;
    double want = 0.0;
    for (size_t t = 0; t < sizes.size(); ++t) {
      const int64_t n = sizes[t];
      // Each tensor contributes about 1, so dropping any one of them shows.
      const double amp = n > 0 ? std::sqrt(3.0 / static_cast<double>(n)) : 0.0;
      const std::vector<float> x = n > 0 ? rng.Uniform(n, -amp, amp) : std::vector<float>{kNaN};
      for (int64_t i = 0; i < n; ++i) want += static_cast<double>(x[i]) * x[i];
      std::string name = "t";
      name += std::to_string(t);
      tensors.push_back(run.In(name.c_str(), x));
    }
    double* got = run.ScalarOut<double>("sum_squares");
    run.Execute([&] {
      return be.SumOfSquares(tensors.data(), sizes.data(), static_cast<int64_t>(sizes.size()), got);
    });
    run.CheckScalar("sum_squares", run.Scalar<double>("sum_squares"), want, want, kDoubleSum);
  }
}

void CheckBlockSumsOfSquares(Suite& s) {
  if (!s.Wants("BlockSumsOfSquares")) return;
  Backend& be = s.be();
  struct Case {
    int64_t n, block;
  };
  // A partial last block, one exact block, blocks of one element, and a block larger than x.
  const Case cases[] = {{100003, 16384}, {8192, 8192}, {7, 1}, {33, 4096}, {0, 16}};
  uint32_t index = 0;
  for (const Case& c : cases) {
    ++index;
    Rng rng = s.MakeRng("BlockSumsOfSquares", index);
    const std::string shape =
        "n=" + std::to_string(c.n) + " block_elements=" + std::to_string(c.block);
    OpRun run(s, "BlockSumsOfSquares", shape);
    const std::vector<float> x = c.n > 0 ? rng.Uniform(c.n, -1, 1) : std::vector<float>{kNaN};
    const float* dx = run.In("x", x);
    const int64_t blocks = (c.n + c.block - 1) / c.block;
    // (A write past the last block lands in the guard zone: Execute fails it.)
    double* sums = run.ScalarsOut<double>("sums", static_cast<size_t>(blocks));
    if (!run.Execute([&] { return be.BlockSumsOfSquares(dx, c.n, c.block, sums); })) continue;
    const std::vector<double> got = run.Scalars<double>("sums");
    for (int64_t b = 0; b < blocks; ++b) {
      double want = 0.0;
      for (int64_t i = b * c.block; i < std::min(c.n, (b + 1) * c.block); ++i) {
        want += static_cast<double>(x[i]) * x[i];
      }
      run.CheckScalar(("sums[" + std::to_string(b) + "]").c_str(), got[b], want, want, kDoubleSum);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Invalid calls: each must return an error and leave memory untouched.

void CheckInvalidCalls(Suite& s) {
  Backend& be = s.be();
  const std::vector<float> f8(8, 0.5f), f64(64, 0.5f), f4096(4096, 0.25f);
  auto invalid = [&](const char* op, const char* shape, const char* what,
                     const std::function<void(OpRun&, const char*)>& body) {
    if (!s.Wants(op)) return;
    OpRun run(s, op, shape);
    body(run, what);
  };
  invalid("Fill", "n=-1", "negative n", [&](OpRun& run, const char* what) {
    float* x = run.Out("x", 8);
    run.ExpectError(what, [&] { return be.Fill(x, -1, 0.0f); });
  });
  invalid("Scale", "n=-1", "negative n", [&](OpRun& run, const char* what) {
    float* x = run.InOut("x", f8);
    run.ExpectError(what, [&] { return be.Scale(x, -1, 2.0f); });
  });
  invalid("EmbeddingForward", "rows=2 vocab=4 dim=2 ids={1,4}", "id out of range",
          [&](OpRun& run, const char* what) {
            const int32_t* ids = run.Ints("ids", {1, 4});
            const float* table = run.In("table", f8);
            float* out = run.Out("out", 4);
            run.ExpectError(what, [&] { return be.EmbeddingForward(ids, table, out, 2, 4, 2); });
          });
  invalid("EmbeddingBackward", "rows=2 vocab=4 dim=2 ids={-1,0}", "negative id",
          [&](OpRun& run, const char* what) {
            const int32_t* ids = run.Ints("ids", {-1, 0});
            const float* dout = run.In("dout", std::vector<float>(4, 1.0f));
            float* dtable = run.InOut("dtable", f8);
            run.ExpectError(what, [&] { return be.EmbeddingBackward(ids, dout, dtable, 2, 4, 2); });
          });
  invalid("RmsNormForward", "rows=-1 dim=4", "negative rows", [&](OpRun& run, const char* what) {
    const float* x = run.In("x", f8);
    const float* w = run.In("weight", f8);
    float* out = run.Out("out", 8);
    float* rstd = run.Out("rstd", 2);
    run.ExpectError(what, [&] { return be.RmsNormForward(x, w, 1e-6f, out, rstd, -1, 4); });
  });
  invalid("RmsNormForward", "rows=2 dim=0", "zero dim", [&](OpRun& run, const char* what) {
    const float* x = run.In("x", f8);
    const float* w = run.In("weight", f8);
    float* out = run.Out("out", 8);
    float* rstd = run.Out("rstd", 2);
    run.ExpectError(what, [&] { return be.RmsNormForward(x, w, 1e-6f, out, rstd, 2, 0); });
  });
  invalid("RmsNormBackward", "rows=2 dim=4 dout=null", "null dout",
          [&](OpRun& run, const char* what) {
            const float* x = run.In("x", f8);
            const float* w = run.In("weight", f8);
            const float* rstd = run.In("rstd", {1.0f, 1.0f});
            float* dx = run.InOut("dx", f8);
            run.ExpectError(
                what, [&] { return be.RmsNormBackward(nullptr, x, w, rstd, dx, nullptr, 2, 4); });
          });
  invalid("LinearForward", "rows=2 in=4 out=2 weight=null", "null weight",
          [&](OpRun& run, const char* what) {
            const float* x = run.In("x", f8);
            float* y = run.Out("y", 4);
            run.ExpectError(what,
                            [&] { return be.LinearForward(x, nullptr, nullptr, y, 2, 4, 2); });
          });
  invalid("LinearBackward", "rows=2 in=4 out=-2", "negative out",
          [&](OpRun& run, const char* what) {
            const float* dy = run.In("dy", f8);
            const float* x = run.In("x", f8);
            const float* w = run.In("weight", f8);
            float* dx = run.InOut("dx", f8);
            run.ExpectError(
                what, [&] { return be.LinearBackward(dy, x, w, dx, nullptr, nullptr, 2, 4, -2); });
          });
  invalid("LmHeadForward", "rows=2 vocab=2 dim=4 embedding=null", "null embedding",
          [&](OpRun& run, const char* what) {
            const float* y = run.In("y", f8);
            float* logits = run.Out("logits", 4);
            run.ExpectError(what, [&] { return be.LmHeadForward(y, nullptr, logits, 2, 2, 4); });
          });
  invalid("RopeForward", "B=1 T=2 H=1 D=7", "odd head_dim", [&](OpRun& run, const char* what) {
    const float* x = run.In("x", f64);
    float* y = run.Out("y", 14);
    const float* inv = run.In("inv_freq", {1.0f, 0.5f, 0.25f, 0.125f});
    const RopeShape shape{.batch = 1, .seq_len = 2, .num_heads = 1, .head_dim = 7};
    run.ExpectError(what, [&] { return be.RopeForward(x, y, shape, inv, 1.0f); });
  });
  invalid("RopeBackward", "B=1 T=2 H=1 D=8 inv_freq=null", "null inv_freq",
          [&](OpRun& run, const char* what) {
            const float* dy = run.In("dy", f64);
            float* dx = run.InOut("dx", f64);
            const RopeShape shape{.batch = 1, .seq_len = 2, .num_heads = 1, .head_dim = 8};
            run.ExpectError(what, [&] { return be.RopeBackward(dy, dx, shape, nullptr, 1.0f); });
          });
  // Buffers sized for the declared heads: 1 x 4 x H x 8 and 1 x 4 x Hkv x 8.
  auto attention_invalid = [&](const char* op, const char* shape_text, const char* what,
                               const AttentionShape& shape) {
    invalid(op, shape_text, what, [&](OpRun& run, const char* w) {
      const float* q = run.In("q", f4096);
      const float* k = run.In("k", f4096);
      const float* v = run.In("v", f4096);
      if (std::string_view(op) == "AttentionForward") {
        float* o = run.Out("o", 256);
        float* lse = run.Out("lse", 64);
        run.ExpectError(w, [&] { return be.AttentionForward(q, k, v, o, lse, shape); });
      } else {
        const float* o = run.In("o", f4096);
        const float* lse = run.In("lse", f64);
        const float* dout = run.In("dout", f4096);
        float* dq = run.InOut("dq", f4096);
        float* dk = run.InOut("dk", f4096);
        float* dv = run.InOut("dv", f4096);
        run.ExpectError(
            w, [&] { return be.AttentionBackward(q, k, v, o, lse, dout, dq, dk, dv, shape); });
      }
    });
  };
  attention_invalid("AttentionForward", "B=1 T=4 H=6 Hkv=4 D=8", "num_heads % num_kv_heads != 0",
                    {.batch = 1, .seq_len = 4, .num_heads = 6, .num_kv_heads = 4, .head_dim = 8});
  attention_invalid("AttentionForward", "B=1 T=4 past=2 cap=5 H=2 Hkv=1 D=8",
                    "kv_capacity < past_len + seq_len",
                    {.batch = 1,
                     .seq_len = 4,
                     .past_len = 2,
                     .kv_capacity = 5,
                     .num_heads = 2,
                     .num_kv_heads = 1,
                     .head_dim = 8});
  attention_invalid("AttentionBackward", "B=1 T=4 H=2 Hkv=2 D=0", "zero head_dim",
                    {.batch = 1, .seq_len = 4, .num_heads = 2, .num_kv_heads = 2, .head_dim = 0});
  attention_invalid("AttentionBackward", "B=-1 T=4 H=2 Hkv=1 D=8", "negative batch",
                    {.batch = -1, .seq_len = 4, .num_heads = 2, .num_kv_heads = 1, .head_dim = 8});
  invalid("DcaAttentionForward", "B=1 T=4 H=2 Hkv=1 D=8 chunk=0", "zero chunk_len",
          [&](OpRun& run, const char* what) {
            const float* q = run.In("q", f4096);
            const float* k = run.In("k", f4096);
            const float* v = run.In("v", f4096);
            float* o = run.Out("o", 64);
            float* lse = run.Out("lse", 8);
            const DcaAttentionShape shape{.batch = 1,
                                          .seq_len = 4,
                                          .num_heads = 2,
                                          .num_kv_heads = 1,
                                          .head_dim = 8,
                                          .chunk_len = 0};
            run.ExpectError(what,
                            [&] { return be.DcaAttentionForward(q, q, q, k, v, o, lse, shape); });
          });
  invalid("SwigluForward", "rows=-1 dim=4", "negative rows", [&](OpRun& run, const char* what) {
    const float* gate = run.In("gate", f8);
    const float* up = run.In("up", f8);
    float* out = run.Out("out", 8);
    run.ExpectError(what, [&] { return be.SwigluForward(gate, up, out, -1, 4); });
  });
  invalid("SwigluBackward", "rows=2 dim=4 gate=null", "null gate",
          [&](OpRun& run, const char* what) {
            const float* dout = run.In("dout", f8);
            const float* up = run.In("up", f8);
            float* dgate = run.InOut("dgate", f8);
            run.ExpectError(
                what, [&] { return be.SwigluBackward(dout, nullptr, up, dgate, nullptr, 2, 4); });
          });
  invalid("ResidualForward", "n=8 a=null", "null a", [&](OpRun& run, const char* what) {
    const float* b = run.In("b", f8);
    float* out = run.Out("out", 8);
    run.ExpectError(what, [&] { return be.ResidualForward(nullptr, b, out, 8); });
  });
  invalid("ResidualBackward", "n=-8", "negative n", [&](OpRun& run, const char* what) {
    const float* dout = run.In("dout", f8);
    float* da = run.InOut("da", f8);
    run.ExpectError(what, [&] { return be.ResidualBackward(dout, da, nullptr, -8); });
  });
  invalid("CrossEntropyForward", "rows=2 vocab=4 labels={1,4}", "label out of range",
          [&](OpRun& run, const char* what) {
            const float* logits = run.In("logits", f8);
            const int32_t* labels = run.Ints("labels", {1, 4});
            float* losses = run.Out("losses", 2);
            float* lse = run.Out("lse", 2);
            double* loss_sum = run.ScalarOut<double>("loss_sum");
            int64_t* num_valid = run.ScalarOut<int64_t>("num_valid");
            run.ExpectError(what, [&] {
              return be.CrossEntropyForward(logits, labels, losses, lse, loss_sum, num_valid, 2, 4,
                                            kIgnoreIndex);
            });
          });
  invalid("CrossEntropyBackward", "rows=-2 vocab=4", "negative rows",
          [&](OpRun& run, const char* what) {
            const float* logits = run.In("logits", f8);
            const int32_t* labels = run.Ints("labels", {1, 2});
            const float* lse = run.In("lse", {1.0f, 1.0f});
            float* dz = run.Out("dlogits", 8);
            run.ExpectError(what, [&] {
              return be.CrossEntropyBackward(logits, labels, lse, 1.0f, dz, -2, 4, kIgnoreIndex);
            });
          });
  invalid("CrossEntropyForwardBackward", "rows=2 vocab=4 labels={-5,0}", "label out of range",
          [&](OpRun& run, const char* what) {
            const float* logits = run.In("logits", f8);
            const int32_t* labels = run.Ints("labels", {-5, 0});
            float* losses = run.Out("losses", 2);
            float* lse = run.Out("lse", 2);
            float* dz = run.Out("dlogits", 8);
            run.ExpectError(what, [&] {
              return be.CrossEntropyForwardBackward(logits, labels, 1.0f, losses, lse, nullptr,
                                                    nullptr, dz, 2, 4, kIgnoreIndex);
            });
          });
  invalid("AdamWStep", "n=8 step=0", "step 0", [&](OpRun& run, const char* what) {
    float* p = run.InOut("param", f8);
    const float* g = run.In("grad", f8);
    float* m = run.InOut("m", f8);
    float* v = run.InOut("v", f8);
    const AdamWParams params{.step = 0};
    run.ExpectError(what, [&] { return be.AdamWStep(p, g, m, v, 8, params); });
  });
  invalid("AdamWStep", "n=8 beta2=1", "beta2 = 1", [&](OpRun& run, const char* what) {
    float* p = run.InOut("param", f8);
    const float* g = run.In("grad", f8);
    float* m = run.InOut("m", f8);
    float* v = run.InOut("v", f8);
    const AdamWParams params{.beta2 = 1.0};
    run.ExpectError(what, [&] { return be.AdamWStep(p, g, m, v, 8, params); });
  });
  invalid("BlockSumsOfSquares", "n=8 block_elements=0", "zero block",
          [&](OpRun& run, const char* what) {
            const float* x = run.In("x", f8);
            double* sums = run.ScalarOut<double>("sums");
            run.ExpectError(what, [&] { return be.BlockSumsOfSquares(x, 8, 0, sums); });
          });
  invalid("SumOfSquares", "sizes={8,-1}", "negative size", [&](OpRun& run, const char* what) {
    const float* t = run.In("t", f8);
    const float* tensors[] = {t, t};
    const int64_t sizes[] = {8, -1};
    double* sum = run.ScalarOut<double>("sum_squares");
    run.ExpectError(what, [&] { return be.SumOfSquares(tensors, sizes, 2, sum); });
  });
}

}  // namespace

std::vector<ConformanceCase> RunConformance(Backend& backend, const ConformanceOptions& options) {
  std::vector<ConformanceCase> cases;
  for (DType dtype : options.dtypes) {
    Suite s(backend, options, dtype);
    // Every op with Tensor arguments runs in each dtype; the fp32-only ops (memory, the loss over
    // fp32 logits, the optimizer, the gradient norm), Cast and the invalid calls in the fp32 pass.
    CheckMemory(s);
    CheckEmbedding(s);
    CheckRmsNorm(s);
    CheckLinear(s);
    CheckLmHead(s);
    CheckRope(s);
    CheckAttention(s);
    CheckDcaAttention(s);
    CheckSwiglu(s);
    CheckResidual(s);
    if (!s.half()) {
      CheckCast(s);
      CheckCrossEntropy(s);
      CheckAdamW(s);
      CheckAdamWMulti(s);
      CheckSumOfSquares(s);
      CheckBlockSumsOfSquares(s);
      CheckInvalidCalls(s);
    }
    std::vector<ConformanceCase> pass = s.Take();
    cases.insert(cases.end(), std::make_move_iterator(pass.begin()),
                 std::make_move_iterator(pass.end()));
  }
  return cases;
}

std::string FormatConformanceReport(const std::vector<ConformanceCase>& cases) {
  std::string out;
  int64_t failed = 0;
  std::vector<std::string> failed_ops;
  for (const ConformanceCase& c : cases) {
    char line[512];
    std::snprintf(line, sizeof(line), "[%s] %-27s %-54s %-20s err %.2e tol %.2e",
                  c.passed ? " OK " : "FAIL", c.op.c_str(), c.shape.c_str(), c.check.c_str(),
                  c.error, c.tolerance);
    out += line;
    if (!c.message.empty()) out += "  " + c.message;
    out += '\n';
    if (!c.passed) {
      ++failed;
      if (std::find(failed_ops.begin(), failed_ops.end(), c.op) == failed_ops.end())
        failed_ops.push_back(c.op);
    }
  }
  out += std::to_string(cases.size()) + " cases, " + std::to_string(failed) + " failed";
  if (!failed_ops.empty()) {
    out += " (";
    for (size_t i = 0; i < failed_ops.size(); ++i) out += (i > 0 ? ", " : "") + failed_ops[i];
    out += ")";
  }
  out += '\n';
  return out;
}

int RunConformanceMain(Backend& backend, int argc, char** argv) {
  ConformanceOptions options;
  bool failures_only = false;
  const char* usage =
      "usage: %s [--quick] [--filter=<op substring>] [--seed=<n>] [--dtype=fp32|bf16|fp16|all]\n"
      "          [--failures-only]\n"
      "Runs the backend conformance suite (kernels/conformance/conformance.h); exits 0 iff every "
      "case passes.\n";
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--quick") {
      options.quick = true;
    } else if (arg == "--failures-only") {
      failures_only = true;
    } else if (arg.substr(0, 8) == "--dtype=") {
      const std::string_view value = arg.substr(8);
      if (value == "fp32") {
        options.dtypes = {DType::kFloat32};
      } else if (value == "bf16") {
        options.dtypes = {DType::kBfloat16};
      } else if (value == "fp16") {
        options.dtypes = {DType::kFloat16};
      } else if (value == "all") {
        options.dtypes = {DType::kFloat32, DType::kBfloat16, DType::kFloat16};
      } else {
        std::fprintf(stderr, "bad --dtype: %s (fp32, bf16, fp16 or all)\n",
                     std::string(value).c_str());
        return 2;
      }
    } else if (arg.substr(0, 9) == "--filter=") {
      options.filter = std::string(arg.substr(9));
    } else if (arg.substr(0, 7) == "--seed=") {
      const std::string value(arg.substr(7));
      char* end = nullptr;
      const unsigned long seed = std::strtoul(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || seed > std::numeric_limits<uint32_t>::max()) {
        std::fprintf(stderr, "bad --seed: %s\n", value.c_str());
        return 2;
      }
      options.seed = static_cast<uint32_t>(seed);
    } else if (arg == "--help" || arg == "-h") {
      std::printf(usage, argv[0]);
      return 0;
    } else {
      std::fprintf(stderr, "unknown flag: %s\n", argv[i]);
      std::fprintf(stderr, usage, argv[0]);
      return 2;
    }
  }
  std::printf("backend conformance: backend %.*s, seed %u%s%s%s\n",
              static_cast<int>(backend.name().size()), backend.name().data(), options.seed,
              options.quick ? ", quick" : "", options.filter.empty() ? "" : ", filter ",
              options.filter.c_str());
  const auto start = std::chrono::steady_clock::now();
  std::vector<ConformanceCase> cases = RunConformance(backend, options);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  bool all_passed = true;
  for (const ConformanceCase& c : cases) all_passed = all_passed && c.passed;
  const std::string report = FormatConformanceReport(cases);
  if (failures_only) {  // the summary line, and the lines of failed cases
    size_t begin = 0;
    while (begin < report.size()) {
      const size_t end = report.find('\n', begin);
      const std::string_view line(report.data() + begin, end - begin);
      if (line.substr(0, 6) != "[ OK ]")
        std::printf("%.*s\n", static_cast<int>(line.size()), line.data());
      begin = end + 1;
    }
  } else {
    std::printf("%s", report.c_str());
  }
  std::printf("%.1f s\n", seconds);
  if (cases.empty()) {
    std::printf("no case matches the filter\n");
    return 1;
  }
  return all_passed ? 0 : 1;
}

}  // namespace qtrain::kernels
