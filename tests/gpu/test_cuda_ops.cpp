// Every CUDA op against its CPU twin on the same inputs (fresh random data, odd sizes, partial
// blocks; the device output poisoned beforehand, so an unwritten element shows up as NaN).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/finite_check.h"
#include "kernels/cpu/fp8.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/kv_cache_append.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/strided_copy.h"
#include "kernels/cuda/attention_fast.h"
#include "kernels/cuda/attention_fast_mma.h"
#include "kernels/cuda/attention_standard.h"
#include "kernels/cuda/bf16_convert.h"
#include "kernels/cuda/finite_check.h"
#include "kernels/cuda/fp8_dequant.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/kv_cache_append.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/strided_copy.h"
#include "tests/gpu/gpu_test_util.h"

namespace mla::test {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

using CudaOps = GpuTest;

TEST_F(CudaOps, RmsNormMatchesCpuInBothPrecisions) {
  for (const bool bf16 : {false, true}) {
    const int64_t rows = 7, dim = 517, stride = 530;
    std::vector<float> x = random_floats(rows * stride, 1, -3.0f, 3.0f);
    std::vector<float> weight = random_floats(dim, 2, 0.5f, 1.5f);
    std::vector<float> want(static_cast<size_t>(rows * dim), kNaN);
    rmsnorm({x.data(), stride, weight.data(), want.data(), dim, rows, dim, 1e-6f, bf16});
    DeviceBuffer<float> x_dev = to_device(x), w_dev = to_device(weight);
    DeviceBuffer<float> y_dev = to_device(std::vector<float>(want.size(), kNaN));
    rmsnorm_cuda({x_dev.data(), stride, w_dev.data(), y_dev.data(), dim, rows, dim, 1e-6f, bf16}, nullptr);
    EXPECT_LE(relative_l2_error(to_host(y_dev), want), bf16 ? 4e-3 : 1e-6) << "bf16 " << bf16;
  }
}

TEST_F(CudaOps, RopeWithYarnMatchesCpu) {
  RopeFrequencyParams frequencies;
  frequencies.rope_dim = 64;
  frequencies.yarn = true;
  frequencies.original_seq_len = 64;
  const int64_t positions = 300;
  const RopeTable table = make_rope_table(frequencies, positions);
  for (const bool bf16 : {false, true}) {
    const int64_t batch = 3, seq = 5, heads = 4, vec_stride = 96, token_stride = heads * vec_stride;
    std::vector<float> want = random_floats(batch * seq * token_stride, 3);
    DeviceBuffer<float> x_dev = to_device(want);
    RopeParams cpu;
    cpu.x = want.data() + 32;  // q_pe sits after 32 nope values in each head's vector
    cpu.batch = batch;
    cpu.seq = seq;
    cpu.token_stride = token_stride;
    cpu.vecs_per_token = heads;
    cpu.vec_stride = vec_stride;
    cpu.start_pos = 290;
    cpu.table = &table;
    cpu.round_to_bf16 = bf16;
    rope_apply(cpu);
    DeviceBuffer<float> cos_dev = to_device(table.cos), sin_dev = to_device(table.sin);
    RopeCudaParams gpu;
    gpu.x = x_dev.data() + 32;
    gpu.batch = batch;
    gpu.seq = seq;
    gpu.token_stride = token_stride;
    gpu.vecs_per_token = heads;
    gpu.vec_stride = vec_stride;
    gpu.start_pos = 290;
    gpu.cos = cos_dev.data();
    gpu.sin = sin_dev.data();
    gpu.positions = positions;
    gpu.half_dim = table.half_dim;
    gpu.round_to_bf16 = bf16;
    rope_apply_cuda(gpu, nullptr);
    EXPECT_LE(relative_l2_error(to_host(x_dev), want), bf16 ? 2e-3 : 1e-7) << "bf16 " << bf16;
    gpu.start_pos = 296;  // 296 + 5 > 300
    EXPECT_THROW(rope_apply_cuda(gpu, nullptr), std::out_of_range);
  }
}

TEST_F(CudaOps, Fp8BlockDequantIsExactWithPartialBlocks) {
  const int64_t rows = 300, cols = 260, scale_cols = 3;
  std::vector<uint8_t> codes(static_cast<size_t>(rows * cols));
  for (size_t i = 0; i < codes.size(); ++i) {
    const auto code = static_cast<uint8_t>((i * 37 + 11) % 256);
    codes[i] = (code & 0x7f) == 0x7f ? 0x00 : code;  // every finite code, NaN codes left out
  }
  const std::vector<float> scales = random_floats(3 * scale_cols, 4, 0.01f, 2.0f);
  for (const bool bf16 : {false, true}) {
    std::vector<float> want(codes.size());
    fp8_dequant_blocks({codes.data(), scales.data(), want.data(), rows, cols, scale_cols, bf16});
    DeviceBuffer<uint8_t> codes_dev = to_device(codes);
    DeviceBuffer<float> scales_dev = to_device(scales);
    DeviceBuffer<float> out_dev = to_device(std::vector<float>(codes.size(), kNaN));
    fp8_dequant_blocks_cuda({codes_dev.data(), scales_dev.data(), out_dev.data(), rows, cols, scale_cols, bf16}, nullptr);
    EXPECT_EQ(to_host(out_dev), want) << "bf16 " << bf16;
  }
}

TEST_F(CudaOps, KvCacheAppendAndStridedCopyAreExact) {
  const int64_t batch = 3, seq = 4, width = 37, capacity = 11, start_pos = 6;
  const std::vector<float> rows = random_floats(batch * seq * (width + 3), 5);
  std::vector<float> cache = random_floats(batch * capacity * width, 6);
  DeviceBuffer<float> rows_dev = to_device(rows), cache_dev = to_device(cache);
  kv_cache_append({rows.data(), width + 3, cache.data(), capacity, width, batch, seq, start_pos});
  kv_cache_append_cuda({rows_dev.data(), width + 3, cache_dev.data(), capacity, width, batch, seq, start_pos}, nullptr);
  EXPECT_EQ(to_host(cache_dev), cache);
  EXPECT_THROW(kv_cache_append_cuda({rows_dev.data(), width + 3, cache_dev.data(), capacity, width, batch, seq, 8}, nullptr),
               std::out_of_range);

  for (const bool bf16 : {false, true}) {
    // One source vector per outer index repeated over heads (stride 0), as k_pe is, for two
    // sequences at their own strides.
    StridedCopyParams p;
    p.batch = 2;
    p.src_batch_stride = 6 * 40 + 3;
    p.dst_batch_stride = 6 * 5 * 50 + 7;
    p.src_outer_stride = 40;
    p.src_inner_stride = 0;
    p.dst_outer_stride = 5 * 50;
    p.dst_inner_stride = 50;
    p.outer = 6;
    p.inner = 5;
    p.width = 33;
    p.round_to_bf16 = bf16;
    const std::vector<float> src = random_floats(2 * (6 * 40 + 3), 7);
    std::vector<float> want = random_floats(2 * (6 * 5 * 50 + 7), 8);
    DeviceBuffer<float> src_dev = to_device(src), dst_dev = to_device(want);
    p.src = src.data();
    p.dst = want.data();
    strided_copy(p);
    p.src = src_dev.data();
    p.dst = dst_dev.data();
    strided_copy_cuda(p, nullptr);
    EXPECT_EQ(to_host(dst_dev), want) << "bf16 " << bf16;
  }
}

TEST_F(CudaOps, Bf16ConversionRoundsToNearestEven) {
  std::vector<float> values = random_floats(1000, 9, -1e3f, 1e3f);
  values.push_back(1.0f + 1.0f / 256.0f);  // a tie: rounds to even (1.0)
  values.push_back(-0.0f);
  DeviceBuffer<float> src = to_device(values);
  DeviceBuffer<__nv_bfloat16> dst(static_cast<int64_t>(values.size()));
  f32_to_bf16_cuda({src.data(), static_cast<int64_t>(values.size()), dst.data(), 1, static_cast<int64_t>(values.size())},
                   nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<uint16_t> bits(values.size());
  CUDA_CHECK(cudaMemcpy(bits.data(), dst.data(), bits.size() * sizeof(uint16_t), cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < values.size(); ++i) ASSERT_EQ(bits[i], f32_to_bf16_bits(values[i])) << "value " << values[i];

  // Gathered: the first 3 rows (of 7 columns, stride 9) of each of 4 batches 40 floats apart.
  Bf16ConvertParams gather{src.data(), 9, dst.data(), 12, 7, 3, 40};
  f32_to_bf16_cuda(gather, nullptr);
  CUDA_CHECK(cudaMemcpy(bits.data(), dst.data(), 12 * 7 * sizeof(uint16_t), cudaMemcpyDeviceToHost));
  for (int64_t row = 0; row < 12; ++row) {
    for (int64_t col = 0; col < 7; ++col) {
      const float value = values[static_cast<size_t>((row / 3) * 40 + (row % 3) * 9 + col)];
      ASSERT_EQ(bits[static_cast<size_t>(row * 7 + col)], f32_to_bf16_bits(value)) << "row " << row << " col " << col;
    }
  }
}

TEST_F(CudaOps, GemmMatchesCpuForEveryTransposeAndStride) {
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  {
    CublasContext context(stream);
    const int64_t m = 37, n = 29, k = 70, batch = 3;
    for (const bool transpose_a : {false, true}) {
      for (const bool transpose_b : {false, true}) {
        for (const bool shared_b : {false, true}) {
          const int64_t lda = (transpose_a ? m : k) + 3, ldb = (transpose_b ? k : n) + 5, ldc = n + 2;
          const int64_t a_size = (transpose_a ? k : m) * lda, b_size = (transpose_b ? n : k) * ldb;
          const std::vector<float> a = random_floats(batch * a_size, 10);
          const std::vector<float> b = random_floats(batch * b_size, 11);
          std::vector<float> want(static_cast<size_t>(batch * m * ldc), 0.0f);
          for (int64_t i = 0; i < batch; ++i) {
            GemmParams g;
            g.transpose_a = transpose_a;
            g.transpose_b = transpose_b;
            g.m = m;
            g.n = n;
            g.k = k;
            g.a = a.data() + i * a_size;
            g.lda = lda;
            g.b = b.data() + (shared_b ? 0 : i * b_size);
            g.ldb = ldb;
            g.c = want.data() + i * m * ldc;
            g.ldc = ldc;
            gemm(g);
          }
          DeviceBuffer<float> a_dev = to_device(a), b_dev = to_device(b);
          DeviceBuffer<float> c_dev = to_device(std::vector<float>(want.size(), 0.0f));
          GemmCudaParams g;
          g.transpose_a = transpose_a;
          g.transpose_b = transpose_b;
          g.m = m;
          g.n = n;
          g.k = k;
          g.a = a_dev.data();
          g.lda = lda;
          g.stride_a = a_size;
          g.b = b_dev.data();
          g.ldb = ldb;
          g.stride_b = shared_b ? 0 : b_size;
          g.c = c_dev.data();
          g.ldc = ldc;
          g.stride_c = m * ldc;
          g.batch = batch;
          gemm_cuda(context, g);
          EXPECT_LE(relative_l2_error(to_host(c_dev), want), 1e-6)
              << "transpose_a " << transpose_a << " transpose_b " << transpose_b << " shared_b " << shared_b;
        }
      }
    }
  }
  CUDA_CHECK(cudaStreamDestroy(stream));
}

TEST_F(CudaOps, Bf16GemmAccumulatesInFp32) {
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  {
    CublasContext context(stream);
    const int64_t m = 19, n = 45, k = 300;  // y = x W^T, as a linear layer
    std::vector<float> x = random_floats(m * k, 12), w = random_floats(n * k, 13);
    round_to_bf16_inplace(x.data(), m * k);
    round_to_bf16_inplace(w.data(), n * k);
    std::vector<float> want(static_cast<size_t>(m * n));
    linear({x.data(), k, w.data(), want.data(), n, m, k, n, false});
    std::vector<uint16_t> x_bits(x.size()), w_bits(w.size());
    for (size_t i = 0; i < x.size(); ++i) x_bits[i] = f32_to_bf16_bits(x[i]);
    for (size_t i = 0; i < w.size(); ++i) w_bits[i] = f32_to_bf16_bits(w[i]);
    DeviceBuffer<uint16_t> x_dev = to_device(x_bits), w_dev = to_device(w_bits);
    DeviceBuffer<float> y_dev = to_device(std::vector<float>(want.size(), kNaN));
    GemmCudaParams g;
    g.transpose_b = true;
    g.m = m;
    g.n = n;
    g.k = k;
    g.a = x_dev.data();
    g.lda = k;
    g.b = w_dev.data();
    g.ldb = k;
    g.c = y_dev.data();
    g.ldc = n;
    g.operands = GemmOperands::BF16;
    gemm_cuda(context, g);
    EXPECT_LE(relative_l2_error(to_host(y_dev), want), 1e-5);
  }
  CUDA_CHECK(cudaStreamDestroy(stream));
}

TEST_F(CudaOps, FiniteCheckFindsTheFirstBadElement) {
  std::vector<float> values = random_floats(100000, 14);
  DeviceBuffer<unsigned long long> scratch(1);
  {
    DeviceBuffer<float> clean = to_device(values);
    EXPECT_EQ(first_non_finite_cuda(clean.data(), 100000, scratch.data(), nullptr), -1);
  }
  values[77777] = std::numeric_limits<float>::infinity();
  values[99999] = kNaN;
  DeviceBuffer<float> bad = to_device(values);
  EXPECT_EQ(first_non_finite_cuda(bad.data(), 100000, scratch.data(), nullptr), first_non_finite(values.data(), 100000));
  EXPECT_EQ(first_non_finite_cuda(bad.data(), 100000, scratch.data(), nullptr), 77777);
}

// The two layouts the layer uses: naive (keys and values per head) and absorb (one latent row per
// position shared by all heads, the value being its first value_dim entries).
struct AttentionCase {
  bool absorb;
  int64_t batch, seq, start_pos, heads;
  bool mask;
  bool bf16;
  // 0: the small defaults (absorb: latent 61 + rope 16, value = latent; naive: 40, value 24).
  int64_t main_dim = 0, rope_dim = 0, value_dim = 0;
};

struct AttentionData {
  std::vector<float> q, keys, values, mask, out;
  AttentionParams params;  // host pointers into the vectors above
};

AttentionData make_attention(const AttentionCase& c, uint32_t seed) {
  AttentionData d;
  AttentionParams& p = d.params;
  p.batch = c.batch;
  p.seq = c.seq;
  p.n_heads = c.heads;
  p.start_pos = c.start_pos;
  p.kv_len = c.start_pos + c.seq;
  p.round_to_bf16 = c.bf16;
  const int64_t capacity = p.kv_len + 3;  // the cache holds more positions than this step sees
  if (c.absorb) {
    const int64_t latent = c.main_dim > 0 ? c.main_dim : 61, rope = c.rope_dim > 0 ? c.rope_dim : 16;
    p.score_dim = latent + rope;
    p.score_split = latent;
    p.value_dim = latent;
    p.q_head_stride = p.score_dim;
    p.q_token_stride = c.heads * p.score_dim;
    p.key_pos_stride = p.value_pos_stride = p.score_dim;
    p.key_batch_stride = p.value_batch_stride = capacity * p.score_dim;
    p.key_head_stride = p.value_head_stride = 0;
  } else {
    p.score_dim = c.main_dim > 0 ? c.main_dim + c.rope_dim : 40;
    p.value_dim = c.value_dim > 0 ? c.value_dim : 24;
    p.q_head_stride = p.score_dim;
    p.q_token_stride = c.heads * p.score_dim;
    p.key_head_stride = p.score_dim;
    p.key_pos_stride = c.heads * p.score_dim;
    p.key_batch_stride = capacity * p.key_pos_stride;
    // Odd strides for the small default shapes; whole 16-byte groups for the DeepSeek-sized ones,
    // so that both the scalar and the vector loads of the tensor-core kernel are checked.
    p.value_head_stride = p.value_dim + (c.main_dim > 0 ? 8 : 5);
    p.value_pos_stride = c.heads * p.value_head_stride;
    p.value_batch_stride = capacity * p.value_pos_stride;
  }
  p.scale = 0.3f;
  p.out_head_stride = p.value_dim;
  p.out_token_stride = c.heads * p.value_dim;
  d.q = random_floats(c.batch * c.seq * p.q_token_stride, seed);
  d.keys = random_floats(c.batch * p.key_batch_stride, seed + 1);
  d.values = c.absorb ? d.keys : random_floats(c.batch * p.value_batch_stride, seed + 2);
  if (c.bf16) {
    for (std::vector<float>* v : {&d.q, &d.keys, &d.values}) round_to_bf16_inplace(v->data(), static_cast<int64_t>(v->size()));
  }
  if (c.mask) {
    p.mask_stride = p.kv_len + 2;
    d.mask = random_floats(c.seq * p.mask_stride, seed + 3, -2.0f, 0.0f);
    for (int64_t s = 0; s < c.seq; ++s) d.mask[s * p.mask_stride + (s % p.kv_len)] = -INFINITY;
  }
  d.out.assign(static_cast<size_t>(c.batch * c.seq * p.out_token_stride), kNaN);
  p.q = d.q.data();
  p.keys = d.keys.data();
  p.values = d.values.data();
  p.mask = c.mask ? d.mask.data() : nullptr;
  p.out = d.out.data();
  return d;
}

// The same attention on the device: returns the output. standard_chunk 0: the fast kernel;
// sequences: the standard path's sequences per launch (decode over the shared cache only).
std::vector<float> run_on_device(const AttentionData& d, int64_t standard_chunk, int64_t sequences = 1) {
  DeviceBuffer<float> q = to_device(d.q), keys = to_device(d.keys), values = to_device(d.values);
  DeviceBuffer<float> mask = to_device(d.mask), out = to_device(std::vector<float>(d.out.size(), kNaN));
  AttentionParams p = d.params;
  p.q = q.data();
  p.keys = keys.data();
  p.values = d.keys.data() == d.values.data() ? keys.data() : values.data();
  p.mask = d.mask.empty() ? nullptr : mask.data();
  p.out = out.data();
  if (standard_chunk == 0) {
    attention_fast_cuda(p, nullptr);
    return to_host(out);
  }
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  std::vector<float> result;
  {
    CublasContext context(stream);
    const int64_t floats = attention_standard_cuda_workspace_floats(p, standard_chunk, sequences);
    DeviceBuffer<float> scores(floats);
    const bool split = attention_uses_split_scores(p);
    attention_standard_cuda(context, p, standard_chunk, scores.data(), split ? scores.data() + floats / 2 : nullptr,
                            sequences);
    result = to_host(out);
  }
  CUDA_CHECK(cudaStreamDestroy(stream));
  return result;
}

TEST_F(CudaOps, AttentionPathsMatchTheirCpuTwins) {
  const std::vector<AttentionCase> cases = {
      {false, 2, 9, 0, 3, false, false},   // naive prefill, causal
      {false, 2, 3, 40, 3, false, false},  // naive chunk at an offset
      {true, 3, 1, 70, 11, false, false},  // absorb decode: rows across heads
      {true, 2, 13, 5, 4, false, false},   // absorb chunk
      {true, 2, 6, 0, 3, true, false},     // explicit mask
      {true, 2, 7, 20, 5, false, true},    // bf16, split scores
      {false, 1, 5, 3, 2, true, true},     // bf16 naive with a mask
      {true, 1, 1, 255, 16, false, false}, // decode at the default fast_path_max_len
      // bf16: the tensor-core kernel. 64-row blocks (a partial one), 32- and 16-row blocks, key stages
      // past 128, masks, and DeepSeek-V3's dimensions in both formulations.
      {false, 2, 70, 0, 3, false, true},
      {false, 1, 40, 10, 2, false, true},
      {false, 2, 20, 45, 2, false, true},
      {false, 1, 66, 0, 1, true, true},
      {true, 3, 1, 200, 16, false, true},
      {true, 2, 5, 30, 16, true, true},
      {false, 1, 256, 0, 2, false, true, 128, 64, 128},
      {true, 2, 1, 255, 16, false, true, 512, 64, 512},
      {true, 1, 4, 100, 16, false, true, 512, 64, 512},
  };
  uint32_t seed = 100;
  for (const AttentionCase& c : cases) {
    AttentionData d = make_attention(c, seed += 10);
    const std::string name = std::string(c.absorb ? "absorb" : "naive") + " seq " + std::to_string(c.seq) +
                             " start " + std::to_string(c.start_pos) + (c.mask ? " mask" : "") + (c.bf16 ? " bf16" : "");
    const double tolerance = c.bf16 ? 1e-2 : 1e-5;
    // bf16 steps take the tensor cores; fp32 steps the CUDA-core kernel.
    EXPECT_EQ(attention_fast_mma_applies(d.params), c.bf16) << name;
    attention_fast(d.params);
    const std::vector<float> want_fast = d.out;
    EXPECT_LE(relative_l2_error(run_on_device(d, 0), want_fast), tolerance) << "fast, " << name;
    for (const int64_t chunk : {int64_t{1}, int64_t{4}, c.seq}) {
      attention_standard(d.params, chunk);
      EXPECT_LE(relative_l2_error(run_on_device(d, chunk), d.out), tolerance) << "standard chunk " << chunk << ", " << name;
    }
    if (c.absorb && c.seq == 1 && c.batch > 1) {
      // Decode over the shared cache, two sequences per launch (and the rest alone).
      EXPECT_EQ(attention_standard_cuda_sequences_per_call(d.params, 2 * c.heads * d.params.kv_len), 2) << name;
      EXPECT_LE(relative_l2_error(run_on_device(d, 1, 2), d.out), tolerance) << "standard, 2 sequences, " << name;
    }
  }
}

TEST_F(CudaOps, FastKernelKeepsTheDefaultMaxLenOnChip) {
  // DeepSeek-V3's absorb score vector is 576 values; fast_path_max_len 256 must fit.
  EXPECT_GE(attention_fast_max_kv_len(576), 256);
  EXPECT_GE(attention_fast_max_kv_len(192), 256);
}

}  // namespace
}  // namespace mla::test
