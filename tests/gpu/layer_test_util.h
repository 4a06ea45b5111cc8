// Helpers of the GPU layer tests on serving-shaped steps: the bounds against the CPU layer and the
// limits a layer is sized with.
#pragma once

#include <algorithm>
#include <vector>

#include "runtime/io/config.h"
#include "runtime/layer/mla_layer_cuda.h"
#include "tests/test_util.h"

namespace mla::test {

// Against the CPU layer, fp32 compute: 1e-5 with fp32 rows. With bf16 rows 1e-4 and with fp8 rows
// 5e-4: both layers round their own fp32 c_n, which differ in the last bits (GEMM summation
// order), so a value at a tie between two codes can land on neighbouring codes, one value off by
// a bf16 or an e4m3 step (1/8 of the value). bf16 compute: SPEC.md's 2e-2.
inline double bound_for(ComputeDType compute, KvCacheDType cache_dtype) {
  if (compute == ComputeDType::BF16) return 2e-2;
  if (cache_dtype == KvCacheDType::FP8) return 5e-4;
  if (cache_dtype == KvCacheDType::BF16) return 1e-4;
  return 1e-5;
}

// Limits that hold every step of `steps`, and no more (so the standard path's score buffer, sized
// for the longest kv_len, splits the sequences into query chunks).
inline CudaLayerLimits limits_for(const ModelArgs& m, const std::vector<RaggedTestStep>& steps) {
  CudaLayerLimits limits;
  limits.max_batch = m.max_batch_size;
  for (const RaggedTestStep& sequences : steps) {
    RaggedStep step;
    step.sequences = sequences;
    limits.max_step_len = std::max(limits.max_step_len, step.max_new_tokens());
    limits.max_step_tokens = std::max(limits.max_step_tokens, step.total_tokens());
    limits.max_kv_len = std::max(limits.max_kv_len, step.max_kv_len());
  }
  return limits;
}

}  // namespace mla::test
