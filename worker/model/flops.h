// Model FLOPs per trained token, for throughput and utilization figures (MFU).
#ifndef QTRAIN_WORKER_MODEL_FLOPS_H_
#define QTRAIN_WORKER_MODEL_FLOPS_H_

#include <cstdint>

#include "worker/model/config.h"

namespace qtrain::model {

// Parameters that take part in matrix multiplications: every layer's q/k/v/o and MLP
// projections (biases and norms excluded) and the tied LM head (vocab x hidden, counted once;
// the embedding lookup is no matmul).
double MatmulParameters(const ModelConfig& config);

// Forward and backward FLOPs per token at sequence length `seq_len`:
// 6 x MatmulParameters + 12 x layers x hidden x seq_len (attention scores and values).
double FlopsPerToken(const ModelConfig& config, int64_t seq_len);

}  // namespace qtrain::model

#endif  // QTRAIN_WORKER_MODEL_FLOPS_H_
