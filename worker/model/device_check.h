// The whole model on a device backend against the CPU backend: the checks (b)-(d) of
// tests/gpu/run.sh (docs/cuda.md). They take any Backend, so CI runs them with the CPU backend
// behind opaque pointers (OpaqueMemoryBackend) in bf16 against the CPU in fp32, and
// gpu_model_check runs them with the CUDA backend.
//
// Everything here keeps to the Backend interface: parameters are initialized on the host and
// copied in, gradients and losses copied out, and the optimizer is one AdamWMultiStep call over
// every parameter tensor (moments in backend memory).
#ifndef QTRAIN_WORKER_MODEL_DEVICE_CHECK_H_
#define QTRAIN_WORKER_MODEL_DEVICE_CHECK_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/ops.h"
#include "worker/model/config.h"

namespace qtrain::model {

// One model, one batch and one precision: what the checks run.
struct DeviceCheckSetup {
  ModelConfig config;
  int64_t batch_size = 2;
  int64_t seq_len = 64;
  uint64_t seed = 1;  // parameters (InitializeParameters) and tokens
  kernels::DType compute_dtype = kernels::DType::kFloat32;
  bool recompute_activations = false;
  // The device pass's loss scale (fp16), divided out of its gradients before they are compared.
  float loss_scale = 1.0f;
};

// Bounds on the device's difference from the CPU fp32 reference.
struct DeviceTolerance {
  double loss = 0;      // |loss - reference| / |reference|
  double gradient = 0;  // per tensor: ||g - reference||_2 / ||reference||_2
};
// fp32 compute: summation order only. bf16: a few bf16 roundings (8 bits of mantissa) per op;
// fp16: the same with 11 bits.
DeviceTolerance DefaultTolerance(kernels::DType compute_dtype);

// (b) One forward and backward pass on both backends, same parameters and batch.
struct GradientComparison {
  double loss = 0, reference_loss = 0;
  double loss_error = 0;            // relative
  double worst_gradient_error = 0;  // relative L2, over the parameter tensors
  std::string worst_tensor;         // where it is
  bool passed = false;
};
absl::StatusOr<GradientComparison> CompareLossAndGradients(kernels::Backend& device,
                                                           kernels::Backend& reference,
                                                           const DeviceCheckSetup& setup,
                                                           const DeviceTolerance& tolerance);

// (c) A short training run on both backends, each step the trainer's device-resident step of a
// group of one (the norm from per-block sums, clipping to 1, AdamW with lr `lr` and weight decay
// 0.1 rewriting the working copy) on the same batches, drawn from a small fixed set so that the
// loss falls. The device's loss curve must follow the reference's (each step within `tolerance` of
// it, relative) and fall by `min_drop` (relative) from its first step to its last, so a run that
// does not train fails.
struct TrainingCurveOptions {
  int64_t steps = 30;
  double lr = 3e-3;
  double tolerance = 0;  // per step, relative to the reference loss
  double min_drop = 0.2;
};
struct TrainingCurveComparison {
  std::vector<double> losses, reference_losses;
  double worst_error = 0;  // max over steps of |loss - reference| / reference
  bool passed = false;
};
absl::StatusOr<TrainingCurveComparison> CompareTrainingCurves(kernels::Backend& device,
                                                              kernels::Backend& reference,
                                                              const DeviceCheckSetup& setup,
                                                              const TrainingCurveOptions& options);

// (d) Training-step throughput on one backend: `warmup` untimed steps, then `steps` timed ones
// (forward, backward, the norm, AdamW: the step of (c); the backend synchronized after each).
// Parameters are random (InitializeParameters); the tokens too.
struct ThroughputOptions {
  int64_t warmup = 1;
  int64_t steps = 3;
};
struct Throughput {
  double seconds_per_step = 0;
  double tokens_per_second = 0;
  double flops_per_token = 0;  // FlopsPerToken of the config at the sequence length
  double tflops = 0;           // model FLOPs per second / 1e12
  double loss = 0;             // the last step's
  // The most memory allocated through the backend at once (the model, its activations and the
  // optimizer state; not the backend's own workspaces).
  int64_t peak_backend_bytes = 0;
};
absl::StatusOr<Throughput> MeasureTrainingThroughput(kernels::Backend& device,
                                                     const DeviceCheckSetup& setup,
                                                     const ThroughputOptions& options);

// The dtype's name as the checks print it ("fp32", "bf16").
std::string DTypeLabel(kernels::DType dtype);

}  // namespace qtrain::model

#endif  // QTRAIN_WORKER_MODEL_DEVICE_CHECK_H_
