// One rank's attention weights, as fp32 values (docs/design.md, Weights), which each layer prepares for
// its own GEMMs (the CPU layer: kernels/cpu/packed_linear.h; the CUDA layer uploads them).
//
// bf16 and fp8 checkpoints are converted once, at load: fp8 codes times their 128x128 block
// scale, rounded to bf16 as DeepSeek's weight_dequant returns them (weights.fp8_dequant: bf16, the
// default; `exact` keeps the fp32 product in fp32 compute); in bf16 compute every weight is
// rounded to bf16 as DeepSeek's bf16 path does. The fp8 codes are kept too, for decode steps that
// stream them and round in registers as the loader does (the CPU layer in fp32 compute, the CUDA
// layer in bf16); a layer that does not stream them drops them when it prepares its weights.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "parallel/sharding.h"
#include "runtime/io/config.h"

namespace mla {

// An fp8 weight as stored: codes [rows, cols] row-major and one scale per 128x128 block,
// [ceil(rows/128), scale_cols].
struct Fp8Weight {
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  int64_t scale_cols = 0;
  bool round_to_bf16 = false;  // the values derived from them are rounded to bf16 (weights.fp8_dequant)
};

struct LayerWeights {
  std::vector<float> wq;       // [Hl*dq, D], only when q_lora_rank == 0
  std::vector<float> wq_a;     // [q_lora_rank, D]
  std::vector<float> q_norm;   // [q_lora_rank]
  std::vector<float> wq_b;     // [Hl*dq, q_lora_rank]
  std::vector<float> wkv_a;    // [C + dr, D]
  std::vector<float> kv_norm;  // [C]
  std::vector<float> wkv_b;    // [Hl*(dn+dv), C], per head dn key rows then dv value rows
  std::vector<float> wo;       // [D, Hl*dv]
  // fp8 weights: the codes and scales of each linear weight, by name ("wq_a", ...), so that decode
  // steps can stream 1 byte per weight. Empty for other storage.
  std::map<std::string, Fp8Weight> fp8;
  // Where each weight came from, by name ("wq_a" -> "ckpt/model0-mp1.safetensors: tensor
  // 'layers.0.attn.wq_a.weight'"), for messages about it after loading.
  std::map<std::string, std::string> sources;

  int64_t bytes() const;
};

struct LoadedWeights {
  LayerWeights weights;
  std::string description;    // where they came from, for the run summary
  std::string storage_dtype;  // "bf16", "fp8", "f32", ... as found in the checkpoint
};

// Loads (or, for format random, generates) this rank's slice. Throws UserError naming the file
// and tensor for a missing tensor, a wrong shape or dtype, a missing fp8 scale, an fp8 slice edge
// that is not on a 128 block, or (check_finite) a non-finite value.
LoadedWeights load_layer_weights(const WeightsConfig& config, const ModelArgs& model, const HeadShard& shard,
                                 ComputeDType compute_dtype, bool check_finite = true);

}  // namespace mla
