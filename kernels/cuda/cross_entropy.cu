// Fused softmax cross-entropy forward + backward over a chunk of rows, one block per row.
//   logits, dlogits [rows, vocab]; labels [rows]; losses, lse [rows] fp32
//   pass 1: each thread folds its strided logits into an online-softmax state; the block merges
//           the states in a fixed tree -> lse; loss = lse - logits[label] (0 if ignored)
//   pass 2: dlogits = (exp(z - lse) - onehot) * grad_scale (0 if ignored), in place if asked
//   totals: one block adds the losses in row order (double) and counts the rows not ignored
//   backward alone (CrossEntropyBackward): pass 2 from a saved lse, one block per row
#include <cmath>
#include <string>

#include "kernels/cuda/launch.cuh"

namespace qtrain::kernels::cuda {
namespace {

struct MergeSoftmax {
  __device__ math::SoftmaxState operator()(math::SoftmaxState a, math::SoftmaxState b) const {
    return math::SoftmaxMerge(a, b);
  }
};

template <typename T>
__global__ void CrossEntropyKernel(const T* logits, const int32_t* labels, float* losses,
                                   float* lse_out, T* dlogits, float grad_scale,
                                   int32_t ignore_index, int64_t rows, int64_t vocab) {
  __shared__ math::SoftmaxState scratch[kThreads];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {  // uniform across the block
    const T* z = logits + r * vocab;
    math::SoftmaxState state = math::SoftmaxEmpty();
    for (int64_t j = threadIdx.x; j < vocab; j += kThreads) {
      state = math::SoftmaxAdd(state, math::ToFloat(z[j]));
    }
    const int32_t label = labels[r];
    const bool ignored = label == ignore_index;
    const bool valid = label >= 0 && label < vocab;
    // Read before the reduction's barriers: in place, pass 2 may overwrite it.
    const float label_logit = valid && !ignored ? math::ToFloat(z[label]) : 0.0f;
    const float lse = math::SoftmaxLse(BlockReduce(state, scratch, MergeSoftmax{}));
    if (threadIdx.x == 0) {
      lse_out[r] = lse;
      losses[r] = ignored ? 0.0f : (valid ? lse - label_logit : NAN);
    }
    if (dlogits != nullptr) {
      // In place: each thread writes only the j it read in pass 1, and every read of the label's
      // logit happened before the reduction's barriers.
      T* d = dlogits + r * vocab;
      for (int64_t j = threadIdx.x; j < vocab; j += kThreads) {
        const float g =
            ignored ? 0.0f
            : valid ? math::CrossEntropyGrad(math::ToFloat(z[j]), lse, j == label, grad_scale)
                    : NAN;
        math::Store(g, d[j]);
      }
    }
  }
}

template <typename T>
__global__ void CrossEntropyGradKernel(const T* logits, const int32_t* labels, const float* lse,
                                       T* dlogits, float grad_scale, int32_t ignore_index,
                                       int64_t rows, int64_t vocab) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* z = logits + r * vocab;
    T* d = dlogits + r * vocab;
    const int32_t label = labels[r];
    const bool ignored = label == ignore_index;
    const bool valid = label >= 0 && label < vocab;
    const float row_lse = lse[r];
    // In place: each thread reads and then writes only its own j.
    for (int64_t j = threadIdx.x; j < vocab; j += kThreads) {
      const float g =
          ignored ? 0.0f
          : valid ? math::CrossEntropyGrad(math::ToFloat(z[j]), row_lse, j == label, grad_scale)
                  : NAN;
      math::Store(g, d[j]);
    }
  }
}

__global__ void LossTotalsKernel(const float* losses, const int32_t* labels, int32_t ignore_index,
                                 int64_t rows, double* loss_sum, int64_t* num_valid) {
  __shared__ double sums[kThreads];
  __shared__ long long counts[kThreads];
  double sum = 0.0;
  long long count = 0;
  for (int64_t r = threadIdx.x; r < rows; r += kThreads) {
    if (labels[r] != ignore_index) {
      sum += losses[r];
      ++count;
    }
  }
  sum = BlockSum(sum, sums);
  count = BlockSum(count, counts);
  if (threadIdx.x == 0) {
    if (loss_sum != nullptr) *loss_sum = sum;
    if (num_valid != nullptr) *num_valid = count;
  }
}

unsigned RowGrid(int64_t rows) {
  return static_cast<unsigned>(rows < 0x7fffffff ? rows : 0x7fffffff);
}

}  // namespace

OpStatus CanImplement(const CrossEntropyParams& p) {
  constexpr const char* kKernel = "CrossEntropy";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckDType(kKernel, p.dtype));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckN(kKernel, "rows", p.rows));
  if (p.vocab <= 0 || p.vocab > 0x7fffffff) {
    return OpStatus::Error("CrossEntropy: vocab must be in [1, 2^31)");
  }
  if (!std::isfinite(p.grad_scale))
    return OpStatus::Error("CrossEntropy: grad_scale is not finite");
  if (p.rows == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "logits", p.logits));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "labels", p.labels));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "losses", p.losses));
  return CheckNotNull(kKernel, "lse", p.lse);
}

OpStatus CrossEntropy(const CrossEntropyParams& p, cudaStream_t stream) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(p));
  if (p.rows > 0) {
    const unsigned grid = RowGrid(p.rows);
    QTRAIN_KERNEL_RETURN_IF_ERROR(DispatchDType(p.dtype, "CrossEntropy", [&](auto tag) {
      using T = decltype(tag);
      CrossEntropyKernel<<<grid, kThreads, 0, stream>>>(
          static_cast<const T*>(p.logits), p.labels, p.losses, p.lse, static_cast<T*>(p.dlogits),
          p.grad_scale, p.ignore_index, p.rows, p.vocab);
      return LaunchStatus("CrossEntropy");
    }));
  }
  if (p.loss_sum == nullptr && p.num_valid == nullptr) return OpStatus::Ok();
  LossTotalsKernel<<<1, kThreads, 0, stream>>>(p.losses, p.labels, p.ignore_index, p.rows,
                                               p.loss_sum, p.num_valid);
  return LaunchStatus("CrossEntropy (totals)");
}

OpStatus CanImplement(const CrossEntropyBackwardParams& p) {
  constexpr const char* kKernel = "CrossEntropyBackward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckDType(kKernel, p.dtype));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckN(kKernel, "rows", p.rows));
  if (p.vocab <= 0 || p.vocab > 0x7fffffff) {
    return OpStatus::Error("CrossEntropyBackward: vocab must be in [1, 2^31)");
  }
  if (!std::isfinite(p.grad_scale)) {
    return OpStatus::Error("CrossEntropyBackward: grad_scale is not finite");
  }
  if (p.rows == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "logits", p.logits));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "labels", p.labels));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "lse", p.lse));
  return CheckNotNull(kKernel, "dlogits", p.dlogits);
}

OpStatus CrossEntropyBackward(const CrossEntropyBackwardParams& p, cudaStream_t stream) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(p));
  if (p.rows == 0) return OpStatus::Ok();
  return DispatchDType(p.dtype, "CrossEntropyBackward", [&](auto tag) {
    using T = decltype(tag);
    CrossEntropyGradKernel<<<RowGrid(p.rows), kThreads, 0, stream>>>(
        static_cast<const T*>(p.logits), p.labels, p.lse, static_cast<T*>(p.dlogits), p.grad_scale,
        p.ignore_index, p.rows, p.vocab);
    return LaunchStatus("CrossEntropyBackward");
  });
}

}  // namespace qtrain::kernels::cuda
