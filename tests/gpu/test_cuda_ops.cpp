// What the CUDA ops promise besides matching their CPU twins (the op table's CUDA rows,
// tests/ops, compare every op with its twin): bounds refused, the choice of kernel, the limits.
#include <gtest/gtest.h>

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "kernels/cpu/kv_cache_append.h"
#include "kernels/cpu/paged_latent.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/attention_fast.h"
#include "kernels/cuda/attention_fast_mma.h"
#include "kernels/cuda/attention_flash.h"
#include "kernels/cuda/attention_standard.h"
#include "kernels/cuda/kv_cache_append.h"
#include "kernels/cuda/paged_latent.h"
#include "kernels/cuda/pinned_uploads.h"
#include "kernels/cuda/rope.h"
#include "runtime/layer/latent_cache.h"
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

// The gather of a uniform step's rows, a group of sequences by one launch (no lists): sequences 1
// and 2 of a paged cache with shuffled pages, rows 0 .. 8 each, as the CPU twin reads them, for
// every row dtype; more sequences than a grid holds, or several with the lists, are refused.
TEST_F(CudaOps, TheGatherOfAGroupOfSequencesReadsEachAsTheCpuDoes) {
  for (const LatentDType dtype : {LatentDType::F32, LatentDType::BF16, LatentDType::FP8}) {
    const PagedLatentCase c{dtype, 200, 6, 4, {9, 12, 10}};
    const PagedLatentInputs in = paged_latent_inputs(c);
    const int64_t width = c.latent_dim + c.rope_dim;
    std::vector<uint8_t> pool(static_cast<size_t>(in.pool_bytes), 0);
    PagedLatentView cache{pool.data(),          dtype, c.latent_dim, c.rope_dim, c.page_size, in.block_table.data(),
                          in.pages_per_sequence};
    paged_latent_append({in.rows.data(), width, static_cast<int64_t>(in.sequence.size()), in.sequence.data(),
                         in.position.data(), cache});
    const int64_t first = 1, sequences = 2, rows = 9;
    std::vector<float> want;
    std::vector<float> scratch(static_cast<size_t>(width));
    for (int64_t b = first; b < first + sequences; ++b) {
      for (int64_t t = 0; t < rows; ++t) {
        const float* row = paged_latent_rows(cache, b, t / c.page_size, t % c.page_size, 1, scratch.data());
        want.insert(want.end(), row, row + width);
      }
    }
    DeviceBuffer<uint8_t> device_pool = to_device(pool);
    DeviceBuffer<int32_t> block_table = to_device(in.block_table);
    cache.pool = device_pool.data();
    cache.block_table = block_table.data();
    DeviceBuffer<float> out(sequences * rows * width);
    PagedLatentGatherParams gather;
    gather.cache = cache;
    gather.only_sequence = first;
    gather.sequences = sequences;
    gather.count = rows;
    gather.out = out.data();
    paged_latent_gather_cuda(gather, nullptr);
    CUDA_CHECK(cudaStreamSynchronize(nullptr));
    EXPECT_EQ(to_host(out), want) << to_string(dtype);

    gather.sequences = 70000;
    EXPECT_THROW(paged_latent_gather_cuda(gather, nullptr), std::invalid_argument);
    DeviceBuffer<int64_t> sequence = to_device(std::vector<int64_t>(static_cast<size_t>(rows), 1));
    gather.sequence = sequence.data();
    gather.sequences = 2;
    EXPECT_THROW(paged_latent_gather_cuda(gather, nullptr), std::invalid_argument);
  }
}

// A step's lists through the pinned buffer: more copies than it holds at once (it waits and starts
// again at the front), one larger than the whole buffer (copied from the caller's memory), the
// source changed as soon as each call returns: every device buffer holds what it was given.
TEST_F(CudaOps, PinnedUploadsLandInOrderThroughASmallBuffer) {
  cudaStream_t stream = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  {
    PinnedUploads uploads(256);
    std::vector<DeviceBuffer<int64_t>> buffers;
    std::vector<std::vector<int64_t>> want;
    std::vector<int64_t> source;
    for (int64_t i = 0; i < 40; ++i) {
      const int64_t count = i == 17 ? 100 : 1 + i % 9;  // 800 bytes > 256 once
      source.assign(static_cast<size_t>(count), 0);
      for (int64_t k = 0; k < count; ++k) source[static_cast<size_t>(k)] = 1000 * i + k;
      buffers.emplace_back(count + 2);
      uploads.upload(buffers.back(), source, stream);
      want.push_back(source);
      std::fill(source.begin(), source.end(), -1);  // the copy must not read the caller's memory later
    }
    EXPECT_THROW(uploads.upload(buffers.front(), std::vector<int64_t>(50, 1), stream), std::invalid_argument);
    CUDA_CHECK(cudaStreamSynchronize(stream));
    for (size_t i = 0; i < buffers.size(); ++i) {
      std::vector<int64_t> got = to_host(buffers[i]);
      got.resize(want[i].size());
      EXPECT_EQ(got, want[i]) << "copy " << i;
    }
  }
  CUDA_CHECK(cudaStreamDestroy(stream));
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

// Without a device: the flash kernels' shared memory at DeepSeek-V3's widths (naive: keys of 128 +
// 64, 128 value columns; absorb: bf16 rows of 512 + 64 read through pages, 512 value columns) fits
// an A100's 163 KiB per block at any kv_len, so their fast path has no length bound there either.
TEST(CudaKernelLimits, TheFlashKernelsFitAnA100AtAnyLength) {
  constexpr int64_t kA100SharedBytesPerBlock = 163 * 1024;
  PagedLatentView rows;
  rows.dtype = LatentDType::BF16;
  rows.latent_dim = 512;
  rows.rope_dim = 64;
  AttentionParams naive, absorb;
  naive.round_to_bf16 = absorb.round_to_bf16 = true;
  naive.score_dim = 192;
  naive.value_dim = 128;
  absorb.latent_pages = &rows;
  absorb.score_dim = 576;
  absorb.score_split = 512;
  absorb.value_dim = 512;
  for (AttentionParams* p : {&naive, &absorb}) {
    p->kv_len = 64;
    const int64_t at_64 = attention_flash_shared_bytes(*p);
    EXPECT_GT(at_64, 48 * 1024) << "score_dim " << p->score_dim;  // opted into, as dynamic shared memory
    EXPECT_LE(at_64, kA100SharedBytesPerBlock) << "score_dim " << p->score_dim;
    p->kv_len = int64_t{1} << 20;
    EXPECT_EQ(attention_flash_shared_bytes(*p), at_64) << "score_dim " << p->score_dim;
  }
}

TEST_F(CudaOps, FastKernelKeepsTheDefaultMaxLenOnChip) {
  // DeepSeek-V3's absorb score vector is 576 values; fast_path_max_len 256 must fit.
  EXPECT_GE(attention_fast_max_kv_len(576), 256);
  EXPECT_GE(attention_fast_max_kv_len(192), 256);
}

}  // namespace
}  // namespace mla::test
