// The CUDA side of the op table: each case's inputs uploaded, the op run on the device (its output
// poisoned with NaN beforehand, so an element it does not write shows up), timed by CUDA events.
#include <cuda_runtime.h>

#include <algorithm>
#include <cuda_bf16.h>
#include <limits>
#include <vector>

#include "kernels/cpu/bf16.h"
#include "kernels/cpu/fp8.h"
#include "kernels/cpu/kv_cache_append.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/attention_decode.h"
#include "kernels/cuda/attention_fast.h"
#include "kernels/cuda/attention_merge.h"
#include "kernels/cuda/attention_standard.h"
#include "kernels/cuda/bf16_convert.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/finite_check.h"
#include "kernels/cuda/fp8_dequant.h"
#include "kernels/cuda/fp8_linear.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/kv_cache_append.h"
#include "kernels/cuda/paged_latent.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/strided_copy.h"
#include "runtime/bench/harness.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/ops/op_table.h"

namespace mla::test {

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// A stream for the ops that take one (cuBLAS), destroyed with the object.
class Stream {
 public:
  Stream() { CUDA_CHECK(cudaStreamCreate(&stream_)); }
  ~Stream() { cudaStreamDestroy(stream_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

// Runs `op` reps times (at least once) on `stream`, `reset` before each, untimed; the median of the
// op's times as CUDA events on the stream see them.
double time_on_device(int reps, cudaStream_t stream, const std::function<void()>& reset,
                      const std::function<void()>& op) {
  cudaEvent_t begin, end;
  CUDA_CHECK(cudaEventCreate(&begin));
  CUDA_CHECK(cudaEventCreate(&end));
  std::vector<double> times_ms;
  for (int rep = 0; rep < std::max(1, reps); ++rep) {
    reset();
    CUDA_CHECK(cudaStreamSynchronize(stream));
    CUDA_CHECK(cudaEventRecord(begin, stream));
    op();
    CUDA_CHECK(cudaEventRecord(end, stream));
    CUDA_CHECK(cudaEventSynchronize(end));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, begin, end));
    times_ms.push_back(ms);
  }
  CUDA_CHECK(cudaEventDestroy(begin));
  CUDA_CHECK(cudaEventDestroy(end));
  return summarize_times(times_ms).median;
}

const std::function<void()> kNothing = [] {};

template <typename T>
void upload(DeviceBuffer<T>& buffer, const std::vector<T>& host) {
  CUDA_CHECK(cudaMemcpy(buffer.data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
}

}  // namespace

OpRun run_cuda(const RmsNormCase& c, int reps) {
  DeviceBuffer<float> x = to_device(rmsnorm_input(c)), weight = to_device(rmsnorm_weight(c));
  DeviceBuffer<float> y = to_device(std::vector<float>(static_cast<size_t>(c.rows * c.dim), kNaN));
  RmsNormParams p;
  p.x = x.data();
  p.x_stride = c.stride;
  p.weight = weight.data();
  p.y = y.data();
  p.y_stride = c.dim;
  p.rows = c.rows;
  p.dim = c.dim;
  p.round_to_bf16 = c.bf16;
  OpRun run;
  run.median_ms = time_on_device(reps, nullptr, kNothing, [&] { rmsnorm_cuda(p, nullptr); });
  run.output = to_host(y);
  return run;
}

OpRun run_cuda(const RopeCase& c, int reps) {
  const RopeTable table = rope_table(c);
  const std::vector<float> input = rope_input(c);
  DeviceBuffer<float> x = to_device(input), cos_table = to_device(table.cos), sin_table = to_device(table.sin);
  RopeCudaParams p;
  p.x = x.data() + c.offset;
  p.batch = c.batch;
  p.seq = c.seq;
  p.token_stride = c.heads * c.vec_stride;
  p.vecs_per_token = c.heads;
  p.vec_stride = c.vec_stride;
  p.start_pos = c.start_pos;
  p.cos = cos_table.data();
  p.sin = sin_table.data();
  p.positions = c.positions;
  p.half_dim = table.half_dim;
  p.round_to_bf16 = c.bf16;
  OpRun run;
  run.median_ms = time_on_device(
      reps, nullptr, [&] { upload(x, input); }, [&] { rope_apply_cuda(p, nullptr); });
  run.output = to_host(x);
  return run;
}

OpRun run_cuda(const Fp8DequantCase& c, int reps) {
  DeviceBuffer<uint8_t> codes = to_device(fp8_codes(c));
  DeviceBuffer<float> scales = to_device(fp8_scales(c));
  DeviceBuffer<float> out = to_device(std::vector<float>(static_cast<size_t>(c.rows * c.cols), kNaN));
  const Fp8DequantParams p{codes.data(), scales.data(), out.data(), c.rows, c.cols, fp8_scale_cols(c), c.bf16};
  OpRun run;
  run.median_ms = time_on_device(reps, nullptr, kNothing, [&] { fp8_dequant_blocks_cuda(p, nullptr); });
  run.output = to_host(out);
  return run;
}

OpRun run_cuda(const KvCacheAppendCase& c, int reps) {
  const int64_t row_stride = c.width + c.row_padding;
  DeviceBuffer<float> rows = to_device(random_floats(c.batch * c.seq * row_stride, 5));
  const std::vector<float> cache_before = random_floats(c.batch * c.capacity * c.width, 6);
  DeviceBuffer<float> cache = to_device(cache_before);
  const KvCacheAppendParams p{rows.data(), row_stride, cache.data(), c.capacity, c.width, c.batch, c.seq, c.start_pos};
  OpRun run;
  run.median_ms = time_on_device(
      reps, nullptr, [&] { upload(cache, cache_before); }, [&] { kv_cache_append_cuda(p, nullptr); });
  run.output = to_host(cache);
  return run;
}

OpRun run_cuda(const PagedLatentCase& c, int reps) {
  const PagedLatentInputs in = paged_latent_inputs(c);
  DeviceBuffer<float> rows = to_device(in.rows);
  DeviceBuffer<int64_t> sequence = to_device(in.sequence), position = to_device(in.position);
  DeviceBuffer<int64_t> row_index = to_device(in.row_index);
  DeviceBuffer<int32_t> block_table = to_device(in.block_table);
  const std::vector<uint8_t> pool_before(static_cast<size_t>(in.pool_bytes), 0xa5);
  DeviceBuffer<uint8_t> pool = to_device(pool_before);
  const PagedLatentView cache{pool.data(),          c.dtype, c.latent_dim, c.rope_dim, c.page_size, block_table.data(),
                              in.pages_per_sequence};
  const int64_t tokens = static_cast<int64_t>(in.sequence.size());
  const PagedLatentAppendParams p{rows.data(),
                                  c.latent_dim + c.rope_dim,
                                  tokens,
                                  sequence.data(),
                                  position.data(),
                                  cache,
                                  c.indexed ? row_index.data() : nullptr};
  OpRun run;
  run.median_ms = time_on_device(
      reps, nullptr, [&] { upload(pool, pool_before); }, [&] { paged_latent_append_cuda(p, nullptr); });
  DeviceBuffer<float> gathered(tokens * (c.latent_dim + c.rope_dim));
  paged_latent_gather_cuda({cache, sequence.data(), position.data(), tokens, gathered.data()}, nullptr);
  CUDA_CHECK(cudaStreamSynchronize(nullptr));
  run.output = to_host(gathered);
  const std::vector<uint8_t> pool_after = to_host(pool);
  run.output.insert(run.output.end(), pool_after.begin(), pool_after.end());
  return run;
}

OpRun run_cuda(const StridedCopyCase& c, int reps) {
  DeviceBuffer<float> src = to_device(strided_copy_source(c));
  const std::vector<float> dst_before = strided_copy_destination(c);
  DeviceBuffer<float> dst = to_device(dst_before);
  StridedCopyParams p = c.shape;
  p.src = src.data();
  p.dst = dst.data();
  OpRun run;
  run.median_ms = time_on_device(
      reps, nullptr, [&] { upload(dst, dst_before); }, [&] { strided_copy_cuda(p, nullptr); });
  run.output = to_host(dst);
  return run;
}

OpRun run_cuda(const Bf16ConvertCase& c, int reps) {
  DeviceBuffer<float> src = to_device(bf16_convert_source(c));
  DeviceBuffer<__nv_bfloat16> dst(c.rows * c.cols);
  const Bf16ConvertParams p{src.data(), c.src_stride, dst.data(), c.rows, c.cols, c.rows_per_batch, c.src_batch_stride};
  OpRun run;
  run.median_ms = time_on_device(reps, nullptr, kNothing, [&] { f32_to_bf16_cuda(p, nullptr); });
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<uint16_t> bits(static_cast<size_t>(c.rows * c.cols));
  CUDA_CHECK(cudaMemcpy(bits.data(), dst.data(), bits.size() * sizeof(uint16_t), cudaMemcpyDeviceToHost));
  for (const uint16_t value : bits) run.output.push_back(bf16_bits_to_f32(value));
  return run;
}

OpRun run_cuda(const GemmCase& c, int reps) {
  const GemmInputs operands = gemm_operands(c);
  Stream stream;
  OpRun run;
  {
    CublasContext context(stream.get());
    DeviceBuffer<float> y = to_device(std::vector<float>(static_cast<size_t>(c.batch * c.m * operands.ldc), 0.0f));
    GemmCudaParams g;
    g.transpose_a = c.transpose_a;
    g.transpose_b = c.transpose_b;
    g.m = c.m;
    g.n = c.n;
    g.k = c.k;
    g.lda = operands.lda;
    g.stride_a = operands.a_size;
    g.ldb = operands.ldb;
    g.stride_b = c.shared_b ? 0 : operands.b_size;
    g.c = y.data();
    g.ldc = operands.ldc;
    g.stride_c = c.m * operands.ldc;
    g.batch = c.batch;
    // bf16: the operands as bf16 numbers in bf16 storage, as the layer's bf16 GEMMs read them.
    DeviceBuffer<float> a, b;
    DeviceBuffer<uint16_t> a_bf16, b_bf16;
    if (c.bf16) {
      std::vector<uint16_t> a_bits, b_bits;
      for (const float value : operands.a) a_bits.push_back(f32_to_bf16_bits(value));
      for (const float value : operands.b) b_bits.push_back(f32_to_bf16_bits(value));
      a_bf16 = to_device(a_bits);
      b_bf16 = to_device(b_bits);
      g.a = a_bf16.data();
      g.b = b_bf16.data();
      g.operands = GemmOperands::BF16;
    } else {
      a = to_device(operands.a);
      b = to_device(operands.b);
      g.a = a.data();
      g.b = b.data();
    }
    run.median_ms = time_on_device(reps, stream.get(), kNothing, [&] { gemm_cuda(context, g); });
    run.output = to_host(y);
  }
  return run;
}

OpRun run_cuda(const Fp8LinearCase& c, int reps) {
  const Fp8LinearInputs in = fp8_linear_inputs(c);
  std::vector<uint16_t> x_bits;
  for (const float value : in.x) x_bits.push_back(f32_to_bf16_bits(value));
  DeviceBuffer<uint16_t> x = to_device(x_bits);
  DeviceBuffer<uint8_t> codes = to_device(fp8_linear_pack(in.codes.data(), c.out_features, c.in_features));
  DeviceBuffer<float> scales = to_device(in.scales);
  DeviceBuffer<float> y = to_device(std::vector<float>(static_cast<size_t>(c.rows * c.out_features), kNaN));
  Fp8LinearCudaParams p;
  p.x = reinterpret_cast<const __nv_bfloat16*>(x.data());
  p.rows = c.rows;
  p.packed_codes = codes.data();
  p.block_scales = scales.data();
  p.scale_cols = in.scale_cols;
  p.y = y.data();
  p.y_stride = c.out_features;
  p.out_features = c.out_features;
  p.in_features = c.in_features;
  OpRun run;
  run.median_ms = time_on_device(reps, nullptr, kNothing, [&] { fp8_linear_cuda(p, nullptr); });
  run.output = to_host(y);
  return run;
}

OpRun run_cuda(const FiniteCheckCase& c, int reps) {
  DeviceBuffer<float> values = to_device(finite_check_values(c));
  DeviceBuffer<unsigned long long> scratch(1);
  int64_t index = 0;
  OpRun run;
  run.median_ms = time_on_device(
      reps, nullptr, kNothing, [&] { index = first_non_finite_cuda(values.data(), c.count, scratch.data(), nullptr); });
  run.output = {static_cast<float>(index)};
  return run;
}

std::vector<uint16_t> bf16_bits_of(const std::vector<float>& values) {
  std::vector<uint16_t> bits;
  bits.reserve(values.size());
  for (const float value : values) bits.push_back(f32_to_bf16_bits(value));
  return bits;
}

// The flash kernel's bf16 operands and the buffers and block table that hold them.
struct FlashInputs {
  DeviceBuffer<uint16_t> q, keys, values, tail, pool;
  DeviceBuffer<int32_t> block_table;
  PagedLatentView pages;
};

// The case's operands as bf16 buffers for the flash kernel (the fp32 pointers cleared); shared
// keys (absorb) give their values as the key rows. TailApart: the queries as bf16 too, and the
// keys' last dimensions (k_pe's place) from a buffer of their own, laid out head-major, while their
// places in the joined buffer hold NaN: a kernel that read them there would write NaN. Pages: the
// rows in pages of 16 positions, every other page of a pool taken in reverse order.
void set_flash_operands(const AttentionCase& c, const AttentionData& d, FlashOperands how, AttentionParams& p,
                        FlashInputs& in) {
  std::vector<uint16_t> keys = bf16_bits_of(d.keys);
  const int64_t positions = p.key_batch_stride / p.key_pos_stride;
  p.keys = p.values = nullptr;
  if (how == FlashOperands::Pages) {
    constexpr int64_t kPageSize = 16;
    const int64_t pages_per_sequence = (positions + kPageSize - 1) / kPageSize;
    const int64_t pool_pages = 2 * c.batch * pages_per_sequence;
    std::vector<uint16_t> pool(static_cast<size_t>(pool_pages * kPageSize * p.score_dim), 0x7fc0);
    std::vector<int32_t> table;
    for (int64_t b = 0; b < c.batch; ++b) {
      for (int64_t i = 0; i < pages_per_sequence; ++i) {
        const auto page = static_cast<int32_t>(pool_pages - 1 - 2 * (b * pages_per_sequence + i));
        table.push_back(page);
        for (int64_t r = 0; r < kPageSize && i * kPageSize + r < positions; ++r) {
          const int64_t t = i * kPageSize + r;
          std::copy_n(keys.begin() + b * p.key_batch_stride + t * p.key_pos_stride, p.score_dim,
                      pool.begin() + (page * kPageSize + r) * p.score_dim);
        }
      }
    }
    in.pool = to_device(pool);
    in.block_table = to_device(table);
    in.pages.pool = reinterpret_cast<uint8_t*>(in.pool.data());
    in.pages.dtype = LatentDType::BF16;
    in.pages.latent_dim = p.score_split;
    in.pages.rope_dim = p.score_dim - p.score_split;
    in.pages.page_size = kPageSize;
    in.pages.block_table = in.block_table.data();
    in.pages.block_table_stride = pages_per_sequence;
    p.latent_pages = &in.pages;
    return;
  }
  if (how == FlashOperands::TailApart) {
    in.q = to_device(bf16_bits_of(d.q));
    p.q_bf16 = in.q.data();
    p.q = nullptr;
    const int64_t width = c.rope_dim > 0 ? c.rope_dim : c.absorb ? 16 : 8;
    const int64_t from = p.score_dim - width;
    const int64_t heads = p.key_head_stride == 0 ? 1 : c.heads;
    std::vector<uint16_t> tail(static_cast<size_t>(c.batch * heads * positions * width));
    for (int64_t b = 0; b < c.batch; ++b) {
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t t = 0; t < positions; ++t) {
          for (int64_t i = 0; i < width; ++i) {
            const int64_t joined = b * p.key_batch_stride + t * p.key_pos_stride + h * p.key_head_stride + from + i;
            tail[static_cast<size_t>(((b * heads + h) * positions + t) * width + i)] =
                keys[static_cast<size_t>(joined)];
            keys[static_cast<size_t>(joined)] = 0x7fc0;  // NaN
          }
        }
      }
    }
    in.tail = to_device(tail);
    p.key_tail_bf16 = in.tail.data();
    p.key_tail_from = from;
    p.key_tail_batch_stride = heads * positions * width;
    p.key_tail_head_stride = heads > 1 ? positions * width : 0;
    p.key_tail_pos_stride = width;
  }
  in.keys = to_device(keys);
  p.key_bf16 = in.keys.data();
  if (c.absorb) {
    p.value_bf16 = p.key_bf16;  // the latent rows: the values are their first value_dim columns
  } else {
    in.values = to_device(bf16_bits_of(d.values));
    p.value_bf16 = in.values.data();
  }
}

OpRun run_cuda(const AttentionCase& c, uint32_t seed, const AttentionRun& how, int reps) {
  const AttentionData d = make_attention(c, seed);
  DeviceBuffer<float> q = to_device(d.q), keys = to_device(d.keys), values = to_device(d.values);
  DeviceBuffer<float> mask = to_device(d.mask), out = to_device(std::vector<float>(d.out.size(), kNaN));
  AttentionParams p = d.params;
  p.q = q.data();
  p.keys = keys.data();
  p.values = c.absorb ? keys.data() : values.data();
  p.mask = d.mask.empty() ? nullptr : mask.data();
  p.out = out.data();
  Stream stream;
  OpRun run;
  FlashInputs flash;
  if (how.flash != FlashOperands::None) {  // attention_fast_cuda sends bf16 operands to the flash kernel
    set_flash_operands(c, d, how.flash, p, flash);
  }
  if (how.standard_chunk == 0) {
    run.median_ms = time_on_device(reps, stream.get(), kNothing, [&] { attention_fast_cuda(p, stream.get()); });
    run.output = to_host(out);
    return run;
  }
  {
    CublasContext context(stream.get());
    const int64_t floats = attention_standard_cuda_workspace_floats(p, how.standard_chunk, how.sequences);
    DeviceBuffer<float> scores(floats);
    float* tail_scores = attention_uses_split_scores(p) ? scores.data() + floats / 2 : nullptr;
    run.median_ms = time_on_device(reps, stream.get(), kNothing, [&] {
      attention_standard_cuda(context, p, how.standard_chunk, scores.data(), tail_scores, how.sequences);
    });
    run.output = to_host(out);
  }
  return run;
}

OpRun run_cuda(const DecodeAttentionCase& c, uint32_t seed, int reps) {
  const DecodeAttentionData d = make_decode_attention(c, seed);
  DeviceBuffer<uint8_t> pool = to_device(d.pool);
  DeviceBuffer<int32_t> block_table = to_device(d.block_table);
  DeviceBuffer<int64_t> lists = to_device(d.lists);
  DeviceBuffer<float> q = to_device(d.q), out = to_device(d.out), lse = to_device(d.lse);
  PagedLatentView cache = d.cache;
  cache.pool = pool.data();
  cache.block_table = block_table.data();
  AttentionParams p = d.params;
  const int64_t sequences = p.batch;
  p.q = q.data();
  p.out = out.data();
  p.lse = lse.data();
  p.latent_pages = &cache;
  p.seq_start_pos = lists.data();
  p.seq_new_tokens = lists.data() + sequences;
  p.seq_token_offset = lists.data() + 2 * sequences;
  AttentionDecodeSplit split;
  int64_t partial_rows = 0;
  if (c.keys_per_split == 0) {
    partial_rows = attention_decode_partial_rows();
    split = attention_decode_split(p, d.tokens, partial_rows);
  } else if (c.keys_per_split > 0) {
    split.keys_per_split = c.keys_per_split;
    split.splits = std::max<int64_t>(1, (p.kv_len + c.keys_per_split - 1) / c.keys_per_split);
    partial_rows = split.splits * d.tokens * p.n_heads;
  } else {
    split.keys_per_split = std::max<int64_t>(32, (p.kv_len + 31) / 32 * 32);
  }
  DeviceBuffer<float> workspace(attention_decode_workspace_floats(partial_rows, p.value_dim));
  Stream stream;
  const double median_ms = time_on_device(reps, stream.get(), kNothing, [&] {
    attention_decode_cuda(p, d.tokens, split, workspace.data(), partial_rows, stream.get());
  });
  OpRun run = decode_attention_output(to_host(out), to_host(lse));
  run.median_ms = median_ms;
  return run;
}

OpRun run_cuda(const AttentionMergeCase& c, int reps) {
  const AttentionMergeInputs in = attention_merge_inputs(c);
  DeviceBuffer<float> parts_out = to_device(in.out), parts_lse = to_device(in.lse);
  DeviceBuffer<float> merged = to_device(std::vector<float>(static_cast<size_t>(c.rows * c.dim), kNaN));
  DeviceBuffer<float> merged_lse = to_device(std::vector<float>(static_cast<size_t>(c.rows), kNaN));
  const AttentionMergeParams p{parts_out.data(), parts_lse.data(),  c.parts, c.rows,     c.dim,
                               merged.data(),    merged_lse.data(), c.bf16,  c.part_rows};
  const double median_ms = time_on_device(reps, nullptr, kNothing, [&] { attention_merge_cuda(p, nullptr); });
  OpRun run = decode_attention_output(to_host(merged), to_host(merged_lse));
  run.median_ms = median_ms;
  return run;
}

}  // namespace mla::test
