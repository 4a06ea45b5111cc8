#include "tests/ops/op_table.h"

#include <chrono>
#include <cmath>
#include <limits>
#include <string>

#include "kernels/cpu/bf16.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/finite_check.h"
#include "kernels/cpu/fp8.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/kv_cache_append.h"
#include "kernels/cpu/paged_latent.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "runtime/bench/harness.h"

#if MLA_HAVE_CUDA
#include "kernels/cuda/cuda_check.h"
#endif

namespace mla::test {

double time_on_cpu(int reps, const std::function<void()>& reset, const std::function<void()>& op) {
  std::vector<double> times_ms;
  for (int rep = 0; rep < std::max(1, reps); ++rep) {
    reset();
    const auto started = std::chrono::steady_clock::now();
    op();
    times_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count());
  }
  return summarize_times(times_ms).median;
}

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

const std::function<void()> kNothing = [] {};

std::string flags(bool bf16) { return bf16 ? " bf16" : ""; }

// ---- the CPU twins ------------------------------------------------------------------------------

OpRun run_cpu(const RmsNormCase& c, int reps) {
  const std::vector<float> x = rmsnorm_input(c), weight = rmsnorm_weight(c);
  OpRun run;
  run.output.assign(static_cast<size_t>(c.rows * c.dim), kNaN);
  RmsNormParams p;
  p.x = x.data();
  p.x_stride = c.stride;
  p.weight = weight.data();
  p.y = run.output.data();
  p.y_stride = c.dim;
  p.rows = c.rows;
  p.dim = c.dim;
  p.round_to_bf16 = c.bf16;
  run.median_ms = time_on_cpu(reps, kNothing, [&] { rmsnorm(p); });
  return run;
}

OpRun run_cpu(const RopeCase& c, int reps) {
  const RopeTable table = rope_table(c);
  const std::vector<float> input = rope_input(c);
  OpRun run;
  RopeParams p;
  p.batch = c.batch;
  p.seq = c.seq;
  p.token_stride = c.heads * c.vec_stride;
  p.vecs_per_token = c.heads;
  p.vec_stride = c.vec_stride;
  p.start_pos = c.start_pos;
  p.table = &table;
  p.round_to_bf16 = c.bf16;
  run.median_ms = time_on_cpu(
      reps,
      [&] {
        run.output = input;
        p.x = run.output.data() + c.offset;
      },
      [&] { rope_apply(p); });
  return run;
}

OpRun run_cpu(const Fp8DequantCase& c, int reps) {
  const std::vector<uint8_t> codes = fp8_codes(c);
  const std::vector<float> scales = fp8_scales(c);
  OpRun run;
  run.output.assign(codes.size(), kNaN);
  const Fp8DequantParams p{codes.data(), scales.data(), run.output.data(), c.rows, c.cols, fp8_scale_cols(c), c.bf16};
  run.median_ms = time_on_cpu(reps, kNothing, [&] { fp8_dequant_blocks(p); });
  return run;
}

OpRun run_cpu(const KvCacheAppendCase& c, int reps) {
  const int64_t row_stride = c.width + c.row_padding;
  const std::vector<float> rows = random_floats(c.batch * c.seq * row_stride, 5);
  OpRun run;
  const KvCacheAppendParams p{rows.data(), row_stride, nullptr, c.capacity, c.width, c.batch, c.seq, c.start_pos};
  KvCacheAppendParams call = p;
  run.median_ms = time_on_cpu(
      reps,
      [&] {
        run.output = random_floats(c.batch * c.capacity * c.width, 6);
        call.cache = run.output.data();
      },
      [&] { kv_cache_append(call); });
  return run;
}

OpRun run_cpu(const PagedLatentCase& c, int reps) {
  const PagedLatentInputs in = paged_latent_inputs(c);
  std::vector<uint8_t> pool;
  const PagedLatentView cache{
      nullptr, c.dtype, c.latent_dim, c.rope_dim, c.page_size, in.block_table.data(), in.pages_per_sequence};
  PagedLatentAppendParams p{in.rows.data(),
                            c.latent_dim + c.rope_dim,
                            static_cast<int64_t>(in.sequence.size()),
                            in.sequence.data(),
                            in.position.data(),
                            cache,
                            c.indexed ? in.row_index.data() : nullptr};
  OpRun run;
  run.median_ms = time_on_cpu(
      reps,
      [&] {
        pool.assign(static_cast<size_t>(in.pool_bytes), 0xa5);
        p.cache.pool = pool.data();
      },
      [&] { paged_latent_append(p); });
  const int64_t width = c.latent_dim + c.rope_dim;
  run.output.resize(in.sequence.size() * static_cast<size_t>(width));
  for (size_t i = 0; i < in.sequence.size(); ++i) {
    float* out = run.output.data() + i * static_cast<size_t>(width);
    const int64_t position = in.position[i];
    const float* row =
        paged_latent_rows(p.cache, in.sequence[i], position / c.page_size, position % c.page_size, 1, out);
    std::copy(row, row + width, out);
  }
  run.output.insert(run.output.end(), pool.begin(), pool.end());
  return run;
}

OpRun run_cpu(const StridedCopyCase& c, int reps) {
  const std::vector<float> src = strided_copy_source(c);
  OpRun run;
  StridedCopyParams p = c.shape;
  p.src = src.data();
  run.median_ms = time_on_cpu(
      reps,
      [&] {
        run.output = strided_copy_destination(c);
        p.dst = run.output.data();
      },
      [&] { strided_copy(p); });
  return run;
}

OpRun run_cpu(const Bf16ConvertCase& c, int reps) {
  const std::vector<float> src = bf16_convert_source(c);
  std::vector<uint16_t> bits(static_cast<size_t>(c.rows * c.cols));
  OpRun run;
  run.median_ms = time_on_cpu(reps, kNothing, [&] {
    for (int64_t row = 0; row < c.rows; ++row) {
      const float* src_row =
          src.data() + (row / c.rows_per_batch) * c.src_batch_stride + (row % c.rows_per_batch) * c.src_stride;
      for (int64_t col = 0; col < c.cols; ++col) bits[row * c.cols + col] = f32_to_bf16_bits(src_row[col]);
    }
  });
  for (const uint16_t value : bits) run.output.push_back(bf16_bits_to_f32(value));
  return run;
}

OpRun run_cpu(const GemmCase& c, int reps) {
  const GemmInputs operands = gemm_operands(c);
  OpRun run;
  run.output.assign(static_cast<size_t>(c.batch * c.m * operands.ldc), 0.0f);
  run.median_ms = time_on_cpu(reps, kNothing, [&] {
    for (int64_t i = 0; i < c.batch; ++i) {
      GemmParams g;
      g.transpose_a = c.transpose_a;
      g.transpose_b = c.transpose_b;
      g.m = c.m;
      g.n = c.n;
      g.k = c.k;
      g.a = operands.a.data() + i * operands.a_size;
      g.lda = operands.lda;
      g.b = operands.b.data() + (c.shared_b ? 0 : i * operands.b_size);
      g.ldb = operands.ldb;
      g.c = run.output.data() + i * c.m * operands.ldc;
      g.ldc = operands.ldc;
      gemm(g);
    }
  });
  return run;
}

OpRun run_cpu(const FiniteCheckCase& c, int reps) {
  const std::vector<float> values = finite_check_values(c);
  int64_t index = 0;
  OpRun run;
  run.median_ms = time_on_cpu(reps, kNothing, [&] { index = first_non_finite(values.data(), c.count); });
  run.output = {static_cast<float>(index)};
  return run;
}

// The skinny kernel's weight in every storage: fp32, bf16 numbers, fp8 codes with block scales.
struct SkinnyWeight {
  std::vector<float> f32;
  std::vector<uint16_t> bf16;
  std::vector<uint8_t> fp8;
  std::vector<float> scales;
  int64_t scale_cols = 0;
};

SkinnyWeight skinny_weight(const SkinnyLinearCase& c) {
  SkinnyWeight w;
  w.f32 = random_floats(c.out_features * c.in_features, static_cast<uint32_t>(c.out_features * 7 + c.in_features));
  for (const float value : w.f32) w.bf16.push_back(f32_to_bf16_bits(value));
  for (const float value : w.f32) w.fp8.push_back(f32_to_fp8_e4m3(value * 200.0f));
  w.scale_cols = (c.in_features + kFp8BlockSize - 1) / kFp8BlockSize;
  w.scales = random_floats(((c.out_features + kFp8BlockSize - 1) / kFp8BlockSize) * w.scale_cols, 3, 0.001f, 0.01f);
  return w;
}

OpRun run_cpu(const SkinnyLinearCase& c, int reps) {
  const SkinnyWeight w = skinny_weight(c);
  const int64_t x_stride = c.in_features + 5, y_stride = c.out_features + 3;
  std::vector<float> x = random_floats(c.rows * x_stride, static_cast<uint32_t>(c.rows));
  std::vector<uint16_t> x_bf16;
  if (c.x_bf16) {
    for (int64_t r = 0; r < c.rows; ++r) {
      for (int64_t i = 0; i < c.in_features; ++i) x_bf16.push_back(f32_to_bf16_bits(x[r * x_stride + i]));
    }
  }
  OpRun run;
  run.output.assign(static_cast<size_t>(c.rows * y_stride), kNaN);
  SkinnyLinearParams p;
  p.x = c.x_bf16 ? nullptr : x.data();
  p.x_stride = x_stride;
  p.x_bf16 = c.x_bf16 ? x_bf16.data() : nullptr;
  p.rows = c.rows;
  p.codes = c.codes;
  p.weight = c.codes == WeightCodes::F32    ? static_cast<const void*>(w.f32.data())
             : c.codes == WeightCodes::BF16 ? static_cast<const void*>(w.bf16.data())
                                            : static_cast<const void*>(w.fp8.data());
  p.block_scales = w.scales.data();
  p.scale_cols = w.scale_cols;
  p.y = run.output.data();
  p.y_stride = y_stride;
  p.out_features = c.out_features;
  p.in_features = c.in_features;
  run.median_ms = time_on_cpu(reps, kNothing, [&] { skinny_linear(p); });
  return run;
}

OpRun run_cpu(const Fp8LinearCase& c, int reps) {
  const Fp8LinearInputs in = fp8_linear_inputs(c);
  OpRun run;
  run.output.assign(static_cast<size_t>(c.rows * c.out_features), kNaN);
  SkinnyLinearParams p;
  p.x = in.x.data();
  p.x_stride = c.in_features;
  p.rows = c.rows;
  p.codes = WeightCodes::FP8_E4M3;
  p.weight = in.codes.data();
  p.block_scales = in.scales.data();
  p.scale_cols = in.scale_cols;
  p.round_fp8_to_bf16 = true;
  p.y = run.output.data();
  p.y_stride = c.out_features;
  p.out_features = c.out_features;
  p.in_features = c.in_features;
  run.median_ms = time_on_cpu(reps, kNothing, [&] { skinny_linear(p); });
  return run;
}

OpRun run_cpu(const AttentionCase& c, uint32_t seed, const AttentionRun& how, int reps) {
  AttentionData d = make_attention(c, seed);
  OpRun run;
  run.median_ms = time_on_cpu(reps, kNothing, [&] {
    if (how.standard_chunk == 0) {
      attention_fast(d.params);
    } else {
      attention_standard(d.params, how.standard_chunk);
    }
  });
  run.output = d.out;
  return run;
}

// A case's runner: the CPU twin on every CPU level (the level is set by the caller), the CUDA
// side on cuda.
template <typename Case>
std::function<OpRun(OpBackend, int)> runner(const Case& c) {
  return [c](OpBackend backend, int reps) {
#if MLA_HAVE_CUDA
    if constexpr (requires { run_cuda(c, reps); }) {  // the ops with a CUDA twin
      if (backend == OpBackend::Cuda) return run_cuda(c, reps);
    }
#endif
    (void)backend;
    return run_cpu(c, reps);
  };
}

std::function<OpRun(OpBackend, int)> attention_runner(const AttentionCase& c, uint32_t seed, AttentionRun how) {
  return [c, seed, how](OpBackend backend, int reps) {
#if MLA_HAVE_CUDA
    if (backend == OpBackend::Cuda) return run_cuda(c, seed, how, reps);
#endif
    (void)backend;
    return run_cpu(c, seed, how, reps);
  };
}

// ---- the table ----------------------------------------------------------------------------------

const std::vector<OpBackend> kCudaOnly = {OpBackend::Cuda};

void add_elementwise_cases(std::vector<OpCase>& table) {
  for (const bool bf16 : {false, true}) {
    for (const RmsNormCase& c : {RmsNormCase{7, 517, 530, bf16}, RmsNormCase{1, 512, 512, bf16},
                                 RmsNormCase{33, 1536, 1536, bf16}, RmsNormCase{3, 1, 4, bf16}}) {
      table.push_back({"rmsnorm",
                       "rows " + std::to_string(c.rows) + " dim " + std::to_string(c.dim) + " stride " +
                           std::to_string(c.stride) + flags(bf16),
                       kCudaOnly, bf16 ? 4e-3 : 1e-6, runner(c)});
    }
    for (const RopeCase& c :
         {RopeCase{3, 5, 4, 96, 32, 290, 300, 64, true, bf16}, RopeCase{2, 17, 16, 192, 128, 0, 64, 64, false, bf16},
          RopeCase{4, 1, 1, 576, 512, 63, 64, 64, true, bf16}}) {
      table.push_back({"rope",
                       "batch " + std::to_string(c.batch) + " seq " + std::to_string(c.seq) + " heads " +
                           std::to_string(c.heads) + " start " + std::to_string(c.start_pos) + (c.yarn ? " yarn" : "") +
                           flags(bf16),
                       kCudaOnly, bf16 ? 2e-3 : 1e-7, runner(c)});
    }
    for (const Fp8DequantCase& c :
         {Fp8DequantCase{300, 260, bf16}, Fp8DequantCase{128, 128, bf16}, Fp8DequantCase{129, 1, bf16}}) {
      table.push_back({"fp8_dequant",
                       "rows " + std::to_string(c.rows) + " cols " + std::to_string(c.cols) + flags(bf16), kCudaOnly, 0,
                       runner(c)});
    }
  }
  for (const KvCacheAppendCase& c : {KvCacheAppendCase{3, 4, 37, 3, 11, 6}, KvCacheAppendCase{2, 16, 576, 0, 40, 24},
                                     KvCacheAppendCase{1, 1, 576, 0, 4096, 4095}}) {
    table.push_back({"kv_cache_append",
                     "batch " + std::to_string(c.batch) + " seq " + std::to_string(c.seq) + " width " +
                         std::to_string(c.width) + " start " + std::to_string(c.start_pos),
                     kCudaOnly, 0, runner(c)});
  }
  for (const LatentDType dtype : {LatentDType::F32, LatentDType::BF16, LatentDType::FP8}) {
    const char* dtype_name = dtype == LatentDType::F32 ? "fp32" : dtype == LatentDType::BF16 ? "bf16" : "fp8";
    for (const PagedLatentCase& c :
         {PagedLatentCase{dtype, 512, 64, 64, {70, 1, 130}}, PagedLatentCase{dtype, 200, 6, 5, {9, 12}},
          PagedLatentCase{dtype, 200, 6, 5, {9, 12}, true}}) {
      table.push_back({"paged_latent",
                       "C " + std::to_string(c.latent_dim) + " dr " + std::to_string(c.rope_dim) + " pages of " +
                           std::to_string(c.page_size) + " " + dtype_name + (c.indexed ? " rows by index" : ""),
                       kCudaOnly, 0, runner(c)});
    }
  }
  for (const bool bf16 : {false, true}) {
    // One source vector per outer index repeated over heads (source stride 0), as k_pe is, for two
    // sequences at their own strides; and a plain gather of rows.
    StridedCopyParams repeated;
    repeated.batch = 2;
    repeated.src_batch_stride = 6 * 40 + 3;
    repeated.dst_batch_stride = 6 * 5 * 50 + 7;
    repeated.src_outer_stride = 40;
    repeated.src_inner_stride = 0;
    repeated.dst_outer_stride = 5 * 50;
    repeated.dst_inner_stride = 50;
    repeated.outer = 6;
    repeated.inner = 5;
    repeated.width = 33;
    repeated.round_to_bf16 = bf16;
    StridedCopyParams rows;
    rows.src_outer_stride = 600;
    rows.dst_outer_stride = 512;
    rows.outer = 40;
    rows.width = 512;
    rows.round_to_bf16 = bf16;
    table.push_back({"strided_copy", "repeated over heads, 2 sequences" + flags(bf16), kCudaOnly, 0,
                     runner(StridedCopyCase{repeated})});
    table.push_back({"strided_copy", "40 rows of 512" + flags(bf16), kCudaOnly, 0, runner(StridedCopyCase{rows})});
  }
  table.push_back({"bf16_convert", "1002 values", kCudaOnly, 0, runner(Bf16ConvertCase{1, 1002, 1002, 1, 0})});
  table.push_back({"bf16_convert", "3 rows of 7 (stride 9) from each of 4 batches", kCudaOnly, 0,
                   runner(Bf16ConvertCase{12, 7, 9, 3, 40})});
  table.push_back({"finite_check", "100000 values, all finite", kCudaOnly, 0, runner(FiniteCheckCase{100000, {}})});
  table.push_back({"finite_check", "100000 values, inf at 77777, NaN at 99999", kCudaOnly, 0,
                   runner(FiniteCheckCase{100000, {77777, 99999}})});
}

void add_linear_cases(std::vector<OpCase>& table) {
  for (const bool transpose_a : {false, true}) {
    for (const bool transpose_b : {false, true}) {
      for (const bool shared_b : {false, true}) {
        const GemmCase c{37, 29, 70, 3, transpose_a, transpose_b, shared_b, false};
        table.push_back({"gemm",
                         std::string("37x29x70 batch 3") + (transpose_a ? " a^T" : "") + (transpose_b ? " b^T" : "") +
                             (shared_b ? " shared b" : ""),
                         kCudaOnly, 1e-6, runner(c)});
      }
    }
  }
  table.push_back({"gemm", "linear 19 rows 300 -> 45 bf16", kCudaOnly, 1e-5,
                   runner(GemmCase{19, 45, 300, 1, false, true, false, true})});

  // The decode kernel's own code per ISA: column, feature and row tails, every storage.
  const std::vector<OpBackend> isa_levels = {OpBackend::CpuAvx2, OpBackend::CpuAvx512, OpBackend::CpuAvx512Bf16,
                                             OpBackend::CpuAmx};
  for (const auto& [out, in] : {std::pair<int64_t, int64_t>{13, 300}, {261, 392}, {4, 16}}) {
    for (const int64_t rows : {int64_t{1}, int64_t{4}, int64_t{9}}) {
      for (const WeightCodes codes : {WeightCodes::F32, WeightCodes::BF16, WeightCodes::FP8_E4M3}) {
        const char* storage = codes == WeightCodes::F32 ? "fp32" : codes == WeightCodes::BF16 ? "bf16" : "fp8";
        const std::string shape = std::to_string(rows) + " rows " + std::to_string(in) + " -> " + std::to_string(out) +
                                  " " + storage + " weight";
        table.push_back(
            {"skinny_linear", shape, isa_levels, 1e-5, runner(SkinnyLinearCase{rows, out, in, codes, false})});
        if (codes == WeightCodes::BF16) {
          table.push_back({"skinny_linear", shape + ", bf16 x", isa_levels, 1e-5,
                           runner(SkinnyLinearCase{rows, out, in, codes, true})});
        }
      }
    }
  }
}

// The streamed fp8 projection on the tensor cores: one and two row tiles (1, 5, 16 | 17, 32 rows),
// inputs that fill the block's steps or end inside one, 128-blocks of scales cut by the tiles.
void add_fp8_linear_cases(std::vector<OpCase>& table) {
  for (const auto& [out, in] : {std::pair<int64_t, int64_t>{16, 64}, {48, 320}, {144, 1024}, {576, 448}}) {
    for (const int64_t rows : {int64_t{1}, int64_t{5}, int64_t{16}, int64_t{17}, int64_t{32}}) {
      table.push_back({"fp8_linear",
                       std::to_string(rows) + " rows " + std::to_string(in) + " -> " + std::to_string(out), kCudaOnly,
                       1e-5, runner(Fp8LinearCase{rows, out, in})});
    }
  }
}

std::string attention_shape(const AttentionCase& c) {
  return std::string(c.absorb ? "absorb" : "naive") + " batch " + std::to_string(c.batch) + " seq " +
         std::to_string(c.seq) + " start " + std::to_string(c.start_pos) + " heads " + std::to_string(c.heads) +
         (c.main_dim > 0 ? " dim " + std::to_string(c.main_dim) : "") + (c.mask ? " mask" : "") + flags(c.bf16);
}

// The flash kernel (bf16 operands read in place, an online softmax) against the CPU's
// attention_fast over the same numbers: the keys joined, k_pe apart, and in absorb the rows as a
// bf16 cache's pages.
void add_flash_cases(std::vector<OpCase>& table, const AttentionCase& c, uint32_t seed, const std::string& shape) {
  table.push_back({"attention_flash", shape + " keys joined", kCudaOnly, 1e-2,
                   attention_runner(c, seed, {0, 1, FlashOperands::Joined})});
  table.push_back({"attention_flash", shape + " k_pe apart", kCudaOnly, 1e-2,
                   attention_runner(c, seed, {0, 1, FlashOperands::TailApart})});
  if (c.absorb) {
    table.push_back({"attention_flash", shape + " pages", kCudaOnly, 1e-2,
                     attention_runner(c, seed, {0, 1, FlashOperands::Pages})});
  }
}

void add_attention_cases(std::vector<OpCase>& table) {
  const std::vector<AttentionCase> cases = {
      {false, 2, 9, 0, 3, false, false},    // naive prefill, causal
      {false, 2, 3, 40, 3, false, false},   // naive chunk at an offset
      {true, 3, 1, 70, 11, false, false},   // absorb decode: rows across heads
      {true, 2, 13, 5, 4, false, false},    // absorb chunk
      {true, 2, 6, 0, 3, true, false},      // explicit mask
      {true, 2, 7, 20, 5, false, true},     // bf16, split scores
      {false, 1, 5, 3, 2, true, true},      // bf16 naive with a mask
      {true, 1, 1, 255, 16, false, false},  // decode at the default fast_path_max_len
      // bf16: the tensor-core kernel (and on the CPU the AMX tiles, 16+ query rows of per-head
      // keys). 64-row blocks (a partial one), 32- and 16-row blocks, key stages past 128, masks,
      // and DeepSeek-V3's dimensions in both formulations.
      {false, 2, 70, 0, 3, false, true},
      {false, 1, 40, 10, 2, false, true},
      {false, 2, 20, 45, 2, false, true},
      {false, 1, 66, 0, 1, true, true},
      {true, 3, 1, 200, 16, false, true},
      {true, 2, 5, 30, 16, true, true},
      {false, 1, 256, 0, 2, false, true, 128, 64, 128},
      {true, 2, 1, 255, 16, false, true, 512, 64, 512},
      {true, 1, 4, 100, 16, false, true, 512, 64, 512},
      // bf16 naive for the flash kernel: one query, rows past a block of 64 and past a stage of 64
      // keys, 37 sequences, a chunk at an offset.
      {false, 1, 1, 0, 3, false, true},
      {false, 37, 17, 0, 3, false, true},
      {false, 2, 15, 240, 1, false, true, 128, 64, 128},
      {false, 1, 255, 0, 2, false, true, 128, 64, 128},
      {false, 1, 65, 0, 1, true, true, 128, 64, 128},
  };
  // The flash kernel alone: kv_len past what the kernels that keep a row's scores on chip take,
  // and absorb chunks (heads packed into a block's rows).
  const std::vector<AttentionCase> flash_only_cases = {
      {false, 2, 17, 300, 2, false, true, 128, 64, 128},
      {false, 1, 130, 1000, 1, false, true, 128, 64, 128},
      {false, 1, 9, 700, 2, true, true},
      {true, 2, 9, 600, 16, false, true, 512, 64, 512},
      {true, 1, 70, 0, 3, false, true, 512, 64, 512},
      {true, 3, 5, 40, 7, false, true, 128, 32, 128},
  };
  uint32_t seed = 100;
  for (const AttentionCase& c : cases) {
    seed += 10;
    const std::string shape = attention_shape(c);
    const double tolerance = c.bf16 ? 1e-2 : 1e-5;
    std::vector<OpBackend> fast_backends = {OpBackend::Cuda};
    if (c.bf16 && !c.absorb && c.seq >= 16) fast_backends.push_back(OpBackend::CpuAmx);
    table.push_back({"attention_fast", shape, fast_backends, tolerance, attention_runner(c, seed, {0, 1})});
    if (c.bf16) add_flash_cases(table, c, seed, shape);
    for (const int64_t chunk : {int64_t{1}, int64_t{4}, c.seq}) {
      if ((chunk == 4 && c.seq <= 4) || (chunk == c.seq && c.seq == 1)) continue;  // a chunk listed already
      table.push_back({"attention_standard", shape + " query chunk " + std::to_string(chunk), kCudaOnly, tolerance,
                       attention_runner(c, seed, {chunk, 1})});
    }
    if (c.absorb && c.seq == 1 && c.batch > 1) {  // decode over the shared cache, 2 sequences a launch
      table.push_back({"attention_standard", shape + " 2 sequences a launch", kCudaOnly, tolerance,
                       attention_runner(c, seed, {1, 2})});
    }
  }
  for (const AttentionCase& c : flash_only_cases) {
    seed += 10;
    add_flash_cases(table, c, seed, attention_shape(c));
  }
}

}  // namespace

// ---- inputs -------------------------------------------------------------------------------------

Fp8LinearInputs fp8_linear_inputs(const Fp8LinearCase& c) {
  Fp8LinearInputs in;
  in.x = random_floats(c.rows * c.in_features, static_cast<uint32_t>(c.rows * 5 + c.in_features));
  round_to_bf16_inplace(in.x.data(), static_cast<int64_t>(in.x.size()));
  for (const float value : random_floats(c.out_features * c.in_features, static_cast<uint32_t>(c.out_features))) {
    in.codes.push_back(f32_to_fp8_e4m3(value * 448.0f));
  }
  in.scale_cols = (c.in_features + kFp8BlockSize - 1) / kFp8BlockSize;
  in.scales = random_floats(((c.out_features + kFp8BlockSize - 1) / kFp8BlockSize) * in.scale_cols, 11, 0.001f, 0.01f);
  return in;
}

std::vector<float> rmsnorm_input(const RmsNormCase& c) { return random_floats(c.rows * c.stride, 1, -3.0f, 3.0f); }
std::vector<float> rmsnorm_weight(const RmsNormCase& c) { return random_floats(c.dim, 2, 0.5f, 1.5f); }

RopeTable rope_table(const RopeCase& c) {
  RopeFrequencyParams frequencies;
  frequencies.rope_dim = c.rope_dim;
  frequencies.yarn = c.yarn;
  frequencies.original_seq_len = c.yarn ? c.positions / 4 : c.positions;  // YaRN: 4x the trained length
  return make_rope_table(frequencies, c.positions);
}

std::vector<float> rope_input(const RopeCase& c) {
  std::vector<float> x = random_floats(c.batch * c.seq * c.heads * c.vec_stride, 3);
  if (c.bf16) round_to_bf16_inplace(x.data(), static_cast<int64_t>(x.size()));
  return x;
}

std::vector<uint8_t> fp8_codes(const Fp8DequantCase& c) {
  std::vector<uint8_t> codes(static_cast<size_t>(c.rows * c.cols));
  for (size_t i = 0; i < codes.size(); ++i) {
    const auto code = static_cast<uint8_t>((i * 37 + 11) % 256);
    codes[i] = (code & 0x7f) == 0x7f ? 0x00 : code;  // every finite code; NaN codes are refused at load
  }
  return codes;
}

int64_t fp8_scale_cols(const Fp8DequantCase& c) { return (c.cols + kFp8BlockSize - 1) / kFp8BlockSize; }

std::vector<float> fp8_scales(const Fp8DequantCase& c) {
  const int64_t scale_rows = (c.rows + kFp8BlockSize - 1) / kFp8BlockSize;
  return random_floats(scale_rows * fp8_scale_cols(c), 4, 0.01f, 2.0f);
}

PagedLatentInputs paged_latent_inputs(const PagedLatentCase& c) {
  PagedLatentInputs in;
  const int64_t width = c.latent_dim + c.rope_dim;
  int64_t most = 0;
  for (size_t b = 0; b < c.lengths.size(); ++b) {
    most = std::max(most, c.lengths[b]);
    for (int64_t t = 0; t < c.lengths[b]; ++t) {
      in.sequence.push_back(static_cast<int64_t>(b));
      in.position.push_back(t);
    }
  }
  const int64_t tokens = static_cast<int64_t>(in.sequence.size());
  in.rows = random_floats((c.indexed ? 2 : 1) * tokens * width, 9, -3.0f, 3.0f);
  if (c.indexed) {
    for (int64_t i = 0; i < tokens; ++i) in.row_index.push_back(2 * (tokens - 1 - i) + 1);
  }
  if (tokens > 0) {
    // The first token's row has a zero block; the second's one block's scale set by a large value.
    const int64_t first = c.indexed ? in.row_index[0] : 0;
    const int64_t second = c.indexed && tokens > 1 ? in.row_index[1] : 1;
    std::fill(in.rows.begin() + first * width,
              in.rows.begin() + first * width + std::min<int64_t>(c.latent_dim, kLatentFp8Block), 0.0f);
    if (tokens > 1) in.rows[static_cast<size_t>(second * width + c.latent_dim - 1)] = 1e4f;
  }
  in.pages_per_sequence = (most + c.page_size - 1) / c.page_size;
  in.block_table.resize(c.lengths.size() * static_cast<size_t>(in.pages_per_sequence));
  for (size_t i = 0; i < in.block_table.size(); ++i) in.block_table[i] = static_cast<int32_t>(i);
  std::shuffle(in.block_table.begin(), in.block_table.end(), std::mt19937(11));
  in.pool_bytes =
      static_cast<int64_t>(in.block_table.size()) * c.page_size * latent_row_bytes(c.dtype, c.latent_dim, c.rope_dim);
  return in;
}

std::vector<float> strided_copy_source(const StridedCopyCase& c) {
  const StridedCopyParams& s = c.shape;
  const int64_t span = (s.outer - 1) * s.src_outer_stride + (s.inner - 1) * s.src_inner_stride + s.width;
  return random_floats((s.batch - 1) * s.src_batch_stride + span, 7);
}

std::vector<float> strided_copy_destination(const StridedCopyCase& c) {
  const StridedCopyParams& s = c.shape;
  const int64_t span = (s.outer - 1) * s.dst_outer_stride + (s.inner - 1) * s.dst_inner_stride + s.width;
  return random_floats((s.batch - 1) * s.dst_batch_stride + span, 8);
}

std::vector<float> bf16_convert_source(const Bf16ConvertCase& c) {
  const int64_t batches = (c.rows + c.rows_per_batch - 1) / c.rows_per_batch;
  const int64_t count = (batches - 1) * c.src_batch_stride + (c.rows_per_batch - 1) * c.src_stride + c.cols;
  std::vector<float> values = random_floats(count, 9, -1e3f, 1e3f);
  values[0] = 1.0f + 1.0f / 256.0f;  // a tie: rounds to even (1.0)
  values[static_cast<size_t>(count - 1)] = -0.0f;
  return values;
}

std::vector<float> finite_check_values(const FiniteCheckCase& c) {
  std::vector<float> values = random_floats(c.count, 14);
  for (size_t i = 0; i < c.non_finite.size(); ++i) {
    values[static_cast<size_t>(c.non_finite[i])] = i % 2 ? kNaN : std::numeric_limits<float>::infinity();
  }
  return values;
}

GemmInputs gemm_operands(const GemmCase& c) {
  GemmInputs o;
  // Padded leading dimensions, so that strides are checked, except for the dense bf16 linear case.
  o.lda = (c.transpose_a ? c.m : c.k) + (c.bf16 ? 0 : 3);
  o.ldb = (c.transpose_b ? c.k : c.n) + (c.bf16 ? 0 : 5);
  o.ldc = c.n + (c.bf16 ? 0 : 2);
  o.a_size = (c.transpose_a ? c.k : c.m) * o.lda;
  o.b_size = (c.transpose_b ? c.n : c.k) * o.ldb;
  o.a = random_floats(c.batch * o.a_size, 10);
  o.b = random_floats((c.shared_b ? 1 : c.batch) * o.b_size, 11);
  if (c.bf16) {
    round_to_bf16_inplace(o.a.data(), static_cast<int64_t>(o.a.size()));
    round_to_bf16_inplace(o.b.data(), static_cast<int64_t>(o.b.size()));
  }
  return o;
}

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
    for (std::vector<float>* v : {&d.q, &d.keys, &d.values}) {
      round_to_bf16_inplace(v->data(), static_cast<int64_t>(v->size()));
    }
  }
  if (c.mask) {
    p.mask_stride = p.kv_len + 2;
    d.mask = random_floats(c.seq * p.mask_stride, seed + 3, -2.0f, 0.0f);
    for (int64_t s = 0; s < c.seq; ++s) d.mask[s * p.mask_stride + (s % p.kv_len)] = -INFINITY;
  }
  d.out.assign(static_cast<size_t>(c.batch * c.seq * p.out_token_stride), kNaN);
  p.q = d.q.data();
  p.keys = d.keys.data();
  p.values = c.absorb ? d.keys.data() : d.values.data();
  p.mask = c.mask ? d.mask.data() : nullptr;
  p.out = d.out.data();
  return d;
}

// ---- backends -----------------------------------------------------------------------------------

const char* backend_name(OpBackend backend) {
  switch (backend) {
    case OpBackend::CpuPortable: return "cpu_portable";
    case OpBackend::CpuAvx2: return "cpu_avx2";
    case OpBackend::CpuAvx512: return "cpu_avx512";
    case OpBackend::CpuAvx512Bf16: return "cpu_avx512_bf16";
    case OpBackend::CpuAmx: return "cpu_amx";
    case OpBackend::Cuda: return "cuda";
  }
  return "?";
}

bool backend_present(OpBackend backend) {
  const CpuIsa best = best_cpu_isa(cpu_features());
  switch (backend) {
    case OpBackend::CpuPortable: return true;
    case OpBackend::CpuAvx2: return best >= CpuIsa::Avx2;
    case OpBackend::CpuAvx512: return best >= CpuIsa::Avx512;
    case OpBackend::CpuAvx512Bf16: return best >= CpuIsa::Avx512Bf16;
    case OpBackend::CpuAmx: return best >= CpuIsa::Amx;
    case OpBackend::Cuda:
#if MLA_HAVE_CUDA
      return cuda_device_count() > 0;
#else
      return false;
#endif
  }
  return false;
}

const std::vector<OpCase>& op_table() {
  static const std::vector<OpCase> table = [] {
    std::vector<OpCase> cases;
    add_elementwise_cases(cases);
    add_linear_cases(cases);
    add_fp8_linear_cases(cases);
    add_attention_cases(cases);
    add_decode_attention_cases(cases);
    return cases;
  }();
  return table;
}

}  // namespace mla::test
