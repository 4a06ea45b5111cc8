// One rank's attention weights, as fp32 compute copies (SPEC.md, Weights).
//
// bf16 and fp8 checkpoints are converted once, at load: fp8 codes times their 128x128 block
// scale, exactly as DeepSeek's weight_dequant; in bf16 compute mode the result is rounded to bf16
// as DeepSeek's bf16 path does. Why at load: the CPU GEMMs run on fp32 operands (cblas_sgemm),
// so dequantizing on the fly would redo the same conversion every step for no saving in time;
// the cost is memory, 4 bytes per weight.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "parallel/sharding.h"
#include "runtime/config.h"

namespace mla {

struct LayerWeights {
  std::vector<float> wq;       // [Hl*dq, D], only when q_lora_rank == 0
  std::vector<float> wq_a;     // [q_lora_rank, D]
  std::vector<float> q_norm;   // [q_lora_rank]
  std::vector<float> wq_b;     // [Hl*dq, q_lora_rank]
  std::vector<float> wkv_a;    // [C + dr, D]
  std::vector<float> kv_norm;  // [C]
  std::vector<float> wkv_b;    // [Hl*(dn+dv), C], per head dn key rows then dv value rows
  std::vector<float> wo;       // [D, Hl*dv]

  int64_t bytes() const;
};

struct LoadedWeights {
  LayerWeights weights;
  std::string description;   // where they came from, for the run summary
  std::string storage_dtype; // "bf16", "fp8", "f32", ... as found in the checkpoint
};

// Loads (or, for format random, generates) this rank's slice. Throws UserError naming the file
// and tensor for a missing tensor, a wrong shape or dtype, a missing fp8 scale, an fp8 slice edge
// that is not on a 128 block, or (check_finite) a non-finite value.
LoadedWeights load_layer_weights(const WeightsConfig& config, const ModelArgs& model, const HeadShard& shard,
                                 ComputeDType compute_dtype, bool check_finite = true);

}  // namespace mla
