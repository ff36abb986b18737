// A backend conformance suite in the style of ggml's test-backend-ops: every op of a Backend
// (kernels/ops.h) on fresh random inputs at several shapes, against the plain-loop reference
// (kernels/reference/reference_ops.h) computed in double.
//
// Tolerance: each output is compared by its max-abs error relative to the tensor's scale,
// max|got - want| / max(|got|_inf, |want|_inf) (per row where rows have their own scale, as the
// softmax gradients do). The same reference run in fp32 is the naive same-precision baseline: a
// backend passes when err <= max(8 * err_fp32_reference, floor), with floor a small multiple of
// FLT_EPSILON chosen per op (0 for the exact ops: copies, fills, gathers). Accumulated gradients,
// and reductions of a few outputs that may cancel to near zero, are measured on the scale of
// their terms instead of the result's.
//
// Besides accuracy, every op run is checked for the contract of ops.h: outputs are poisoned with
// NaN first (an element never written fails), gradients are pre-filled with random values (a
// missed accumulation fails), optional gradients are passed as nullptr, inputs must come back
// unchanged, a guard zone after every buffer must stay intact (writes past the end), and a rerun
// must give bitwise identical outputs. A few invalid calls must return an error without touching
// memory.
//
// Backend memory is only touched through Backend::Alloc/Free/Copy*: the suite runs on any
// backend (CPU or device memory). It depends on the standard library and kernels/ only (no
// BLAS, GoogleTest or absl), so a CUDA-only build can compile it with kernels/rope_tables.cc.
#ifndef QTRAIN_KERNELS_CONFORMANCE_CONFORMANCE_H_
#define QTRAIN_KERNELS_CONFORMANCE_CONFORMANCE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/ops.h"

namespace qtrain::kernels {

// One checked property of one op at one shape.
struct ConformanceCase {
  std::string op;     // the Backend method, e.g. "AttentionBackward"
  std::string shape;  // e.g. "B=2 T=65 past=0 H=6 Hkv=2 D=24"
  std::string check;  // the output compared ("dq"), "rerun+bounds" or "invalid: <what>"
  double error = 0.0;
  double tolerance = 0.0;
  bool passed = false;
  std::string message;  // why it failed, or details (the fp32 reference's error)
};

struct ConformanceOptions {
  uint32_t seed = 1;   // inputs are a function of (seed, op group, shape, dtype)
  bool quick = false;  // smaller shapes only (no T=1024 attention, no full-vocabulary LM head)
  std::string filter;  // case-insensitive substring of the op name; empty runs every op
  // The passes: the dtype of the ops' Tensor arguments (activations and weights). The bf16 and
  // fp16 passes run every op that has them (fp32 arguments such as rstd, lse and parameter
  // gradients stay fp32) on inputs rounded to that dtype, with tolerances floored at two of its
  // steps (2^-6 for bf16, 2^-9 for fp16); their shapes read "bf16 ..." and "fp16 ...". The fp32
  // pass also runs the fp32-only ops, Cast (fp32 <-> bf16, fp32 <-> fp16, bf16 -> fp16) and the
  // invalid calls.
  std::vector<DType> dtypes = {DType::kFloat32, DType::kBfloat16, DType::kFloat16};
};

// Runs every op of `backend` that matches options.filter. Never aborts on a backend error: an
// op that fails (or returns an error where it must not) gives failed cases.
std::vector<ConformanceCase> RunConformance(Backend& backend, const ConformanceOptions& options);

// One line per case, then "N cases, M failed".
std::string FormatConformanceReport(const std::vector<ConformanceCase>& cases);

// A main() for any backend: flags --quick, --filter=<op>, --seed=<n>, --dtype=fp32|bf16|fp16|all,
// --failures-only, --help.
// Prints the report to stdout; returns 0 iff every case passed (2 on a bad flag).
int RunConformanceMain(Backend& backend, int argc, char** argv);

}  // namespace qtrain::kernels

#endif  // QTRAIN_KERNELS_CONFORMANCE_CONFORMANCE_H_
