// What the CUDA ops promise besides matching their CPU twins (the op table's CUDA rows,
// tests/ops, compare every op with its twin): bounds refused, the choice of kernel, the limits.
#include <gtest/gtest.h>

#include <stdexcept>
#include <vector>

#include "kernels/cpu/kv_cache_append.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/attention_fast.h"
#include "kernels/cuda/attention_fast_mma.h"
#include "kernels/cuda/attention_standard.h"
#include "kernels/cuda/kv_cache_append.h"
#include "kernels/cuda/rope.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/ops/op_table.h"

namespace mla::test {
namespace {

using CudaOps = GpuTest;

TEST_F(CudaOps, PositionsPastTheRopeTableOrTheCacheAreRefused) {
  RopeFrequencyParams frequencies;
  frequencies.rope_dim = 64;
  const RopeTable table = make_rope_table(frequencies, 300);
  DeviceBuffer<float> x = to_device(random_floats(5 * 64, 3));
  DeviceBuffer<float> cos_table = to_device(table.cos), sin_table = to_device(table.sin);
  RopeCudaParams rope;
  rope.x = x.data();
  rope.batch = 1;
  rope.seq = 5;
  rope.token_stride = 64;
  rope.vec_stride = 64;
  rope.start_pos = 296;  // 296 + 5 > 300
  rope.cos = cos_table.data();
  rope.sin = sin_table.data();
  rope.positions = 300;
  rope.half_dim = table.half_dim;
  EXPECT_THROW(rope_apply_cuda(rope, nullptr), std::out_of_range);

  const int64_t width = 37, capacity = 11;
  DeviceBuffer<float> rows = to_device(random_floats(4 * width, 5)),
                      cache = to_device(random_floats(capacity * width, 6));
  EXPECT_THROW(kv_cache_append_cuda({rows.data(), width, cache.data(), capacity, width, 1, 4, 8}, nullptr),
               std::out_of_range);
}

TEST_F(CudaOps, Bf16StepsTakeTheTensorCoresAndDecodeBatchesSequences) {
  // bf16 attention takes the tensor-core kernel, fp32 the CUDA-core one.
  for (const bool bf16 : {false, true}) {
    const AttentionData d = make_attention({false, 2, 70, 0, 3, false, bf16}, 1);
    EXPECT_EQ(attention_fast_mma_applies(d.params), bf16) << "bf16 " << bf16;
  }
  // Decode over the shared cache: as many sequences per launch as the score buffer holds.
  const AttentionData decode = make_attention({true, 3, 1, 70, 11, false, false}, 2);
  EXPECT_EQ(attention_standard_cuda_sequences_per_call(decode.params, 2 * 11 * decode.params.kv_len), 2);
}

// Without a device: the fp32 fast kernel's shared memory at DeepSeek-V3's score widths (absorb
// 512 + 64, naive 128 + 64) and the default fast_path_max_len fits an A100's 163 KiB per block, so
// the layer's fast path starts there too. (The tensor-core kernel sizes its stages from the device
// it runs on; without a layout that fits, steps take this kernel.)
TEST(CudaKernelLimits, TheFastKernelFitsAnA100AtTheDefaultMaxLen) {
  constexpr int64_t kA100SharedBytesPerBlock = 163 * 1024;
  EXPECT_LE(attention_fast_shared_bytes(576, 256), kA100SharedBytesPerBlock);
  EXPECT_LE(attention_fast_shared_bytes(192, 256), kA100SharedBytesPerBlock);
}

TEST_F(CudaOps, FastKernelKeepsTheDefaultMaxLenOnChip) {
  // DeepSeek-V3's absorb score vector is 576 values; fast_path_max_len 256 must fit.
  EXPECT_GE(attention_fast_max_kv_len(576), 256);
  EXPECT_GE(attention_fast_max_kv_len(192), 256);
}

}  // namespace
}  // namespace mla::test
