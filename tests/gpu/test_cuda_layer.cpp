// The CUDA layer against the CPU layer (and the float64 reference) on the CPU layer tests' shapes
// (layer_shapes(), fp8 weights among them): every path x formulation x precision over a schedule of prefill, chunk and
// decode steps; fast vs standard; emulated tensor parallelism (each rank's head slice in turn, partial outputs summed)
// against world 1; the memory report.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/device_memory.h"
#include "kernels/cuda/fp8_linear.h"
#include "runtime/base/errors.h"
#include "runtime/layer/cuda_step_executor.h"
#include "runtime/layer/mla_layer_cuda.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/test_util.h"

namespace mla::test {
namespace {

RunConfig run_config(AttentionChoice attention, FormulationChoice formulation, ComputeDType dtype) {
  RunConfig run;
  run.attention = attention;
  run.formulation = formulation;
  run.compute_dtype = dtype;
  run.score_chunk_bytes = 4096;  // the standard path in several query chunks
  return run;
}

CudaLayerLimits limits_for(const InputTensor& x, const std::vector<int64_t>& steps, bool mask) {
  CudaLayerLimits limits;
  limits.max_batch = x.batch;
  for (const int64_t step : steps) limits.max_step_len = std::max(limits.max_step_len, step);
  limits.max_kv_len = x.tokens;
  limits.mask = mask;
  return limits;
}

// The CUDA layer over a schedule, through the same runner as the CPU layer (world of one).
RunResult cuda_run(const ModelArgs& m, const RunConfig& run, const HeadShard& shard, const LayerWeights& weights,
                   const InputTensor& x, const std::vector<int64_t>& steps, const std::vector<float>& mask = {}) {
  CudaMlaLayer layer(m, shard, weights, run, limits_for(x, steps, !mask.empty()));
  SingleProcessCommunicator comm;
  CudaStepExecutor executor(layer, comm, mask, x.tokens);
  return run_schedule(executor, x, steps, mask, {});
}

using CudaLayer = GpuTest;

TEST_F(CudaLayer, MatchesTheCpuLayerOnEveryPathFormulationAndPrecision) {
  const std::vector<int64_t> steps = {5, 3, 1, 1};  // prefill, chunk, two decodes
  for (const LayerShape& shape : layer_shapes()) {
    const ModelArgs& m = shape.model;
    const InputTensor x = random_input(m, 2, 10, 21);
    for (const ComputeDType dtype : {ComputeDType::FP32, ComputeDType::BF16}) {
      const LoadedWeights loaded = load_layer_weights(random_weights(shape.weights_dtype, 5), m, whole(m), dtype);
      for (const AttentionChoice attention : {AttentionChoice::Fast, AttentionChoice::Standard}) {
        for (const FormulationChoice formulation : {FormulationChoice::Naive, FormulationChoice::Absorb}) {
          const RunConfig run = run_config(attention, formulation, dtype);
          const RunResult want = layer_run(m, run, whole(m), loaded.weights, x, steps);
          const RunResult got = cuda_run(m, run, whole(m), loaded.weights, x, steps);
          const std::string name = std::string(shape.name) + " " + to_string(dtype) + " " + to_string(attention) + " " +
                                   to_string(formulation);
          EXPECT_LE(relative_l2_error(got.y, want.y), dtype == ComputeDType::FP32 ? 1e-5 : 2e-2) << name;
          ASSERT_EQ(got.steps.size(), want.steps.size());
          for (size_t i = 0; i < got.steps.size(); ++i) {
            EXPECT_EQ(got.steps[i].plan.path, want.steps[i].plan.path) << name << " step " << i;
            EXPECT_EQ(got.steps[i].plan.formulation, want.steps[i].plan.formulation) << name << " step " << i;
          }
          if (dtype == ComputeDType::FP32) {
            const std::vector<double> reference = reference_run(
                m, loaded.weights, m.n_heads, x, steps,
                formulation == FormulationChoice::Naive ? ref::RefFormulation::Naive : ref::RefFormulation::Absorb);
            EXPECT_LE(relative_l2(got.y, reference), 1e-5) << name << " vs the float64 reference";
          }
        }
      }
    }
  }
}

// A kernel switch (MLA_CUDA_*) set to something else than 0 or 1: `construct` (the layer) refuses
// it with a UserError naming the variable and the value.
template <typename Construct>
void expect_switch_refused(const char* variable, const char* value, Construct construct) {
  const ScopedEnv bad(variable, value);
  try {
    construct();
    ADD_FAILURE() << variable << "=" << value << " was taken";
  } catch (const UserError& error) {
    const std::string want = std::string(variable) + ": expected 0 or 1, got '" + value + "'";
    EXPECT_NE(std::string(error.what()).find(want), std::string::npos) << error.what();
  }
}

// bf16 compute on fp8 weights: decode steps stream the projections' codes (kernels/cuda/fp8_linear),
// longer steps read the bf16 copy through cuBLAS; both give the CPU layer's bf16 result, and the
// same as the layer that never streams (MLA_CUDA_FP8_STREAM=0) up to the GEMMs' summation order.
TEST_F(CudaLayer, StreamedFp8DecodeMatchesTheCpuLayerAndCublas) {
  // Every projection in the kernel's shapes: wq_a 128 x 256, wq_b 96 x 128, wkv_a 144 x 256, wo 256 x 64.
  const ModelArgs m = model_args(256, 2, 128, 128, 32, 16, 32, 3, 64);
  const LoadedWeights loaded = load_layer_weights(random_weights(WeightDType::FP8, 8), m, whole(m), ComputeDType::BF16);
  ASSERT_EQ(loaded.weights.fp8.size(), 4u) << "the loader keeps the codes in bf16 compute";
  const InputTensor x = random_input(m, 3, 14, 31);
  const std::vector<int64_t> steps = {9, 1, 1, 1, 1, 1};  // a prefill, then decodes of 3 rows
  for (const FormulationChoice formulation : {FormulationChoice::Naive, FormulationChoice::Absorb}) {
    const RunConfig run = run_config(AttentionChoice::Auto, formulation, ComputeDType::BF16);
    const RunResult want = layer_run(m, run, whole(m), loaded.weights, x, steps);
    const RunResult streamed = cuda_run(m, run, whole(m), loaded.weights, x, steps);
    RunResult unstreamed;
    {
      const ScopedEnv off("MLA_CUDA_FP8_STREAM", "0");
      unstreamed = cuda_run(m, run, whole(m), loaded.weights, x, steps);
    }
    const std::string name = to_string(formulation);
    EXPECT_LE(relative_l2_error(streamed.y, want.y), 2e-2) << name;
    EXPECT_LE(relative_l2_error(unstreamed.y, want.y), 2e-2) << name;
    EXPECT_LE(relative_l2_error(streamed.y, unstreamed.y), 1e-2) << name;
  }

  const CudaLayerLimits limits = limits_for(x, steps, false);
  const RunConfig run = run_config(AttentionChoice::Auto, FormulationChoice::Absorb, ComputeDType::BF16);
  const CudaMlaLayer streaming(m, whole(m), loaded.weights, run, limits);
  // A decode step reads the projections' codes (1 byte each) where a prefill reads their bf16 copy.
  EXPECT_LT(streaming.weight_bytes_read(3), streaming.weight_bytes_read(kFp8LinearMaxRows + 1));
  {
    const ScopedEnv off("MLA_CUDA_FP8_STREAM", "0");
    const CudaMlaLayer plain(m, whole(m), loaded.weights, run, limits);
    EXPECT_EQ(plain.weight_bytes_read(3), plain.weight_bytes_read(kFp8LinearMaxRows + 1));
    EXPECT_GT(streaming.memory().weights_bytes, plain.memory().weights_bytes) << "the codes beside the bf16 copy";
  }
  expect_switch_refused("MLA_CUDA_FP8_STREAM", "yes", [&] { CudaMlaLayer(m, whole(m), loaded.weights, run, limits); });
}

// bf16 naive steps on the fast path take the flash kernel over bf16 keys and values read in place
// (k_pe from the cache rows' bf16 copy, one for every head): the CPU layer's result, and the
// kernel that keeps a row's scores on chip (MLA_CUDA_FLASH=0) up to the probabilities' rounding,
// without the fp32 keys and expansion; and, with no bound on kv_len, a 600-position prefill on the
// fast path.
TEST_F(CudaLayer, FlashNaiveStepsMatchTheCpuLayerWithoutFp32Keys) {
  // Widths in whole 16-byte chunks (the kernel's cp.async copies): dq 48, dv 32, rows of 128 + 16.
  const ModelArgs m = model_args(256, 4, 64, 128, 32, 16, 32, 2, 700);
  const LoadedWeights loaded =
      load_layer_weights(random_weights(WeightDType::BF16, 9), m, whole(m), ComputeDType::BF16);
  const InputTensor x = random_input(m, 2, 150, 41);
  const std::vector<int64_t> steps = {70, 64, 1, 15};  // past a 64-row block and a 64-key stage, a decode, a chunk
  const RunConfig run = run_config(AttentionChoice::Fast, FormulationChoice::Naive, ComputeDType::BF16);
  const RunResult want = layer_run(m, run, whole(m), loaded.weights, x, steps);
  const RunResult flash = cuda_run(m, run, whole(m), loaded.weights, x, steps);
  RunResult score_rows;
  {
    const ScopedEnv off("MLA_CUDA_FLASH", "0");
    score_rows = cuda_run(m, run, whole(m), loaded.weights, x, steps);
  }
  EXPECT_LE(relative_l2_error(flash.y, want.y), 2e-2);
  EXPECT_LE(relative_l2_error(score_rows.y, want.y), 2e-2);
  EXPECT_LE(relative_l2_error(flash.y, score_rows.y), 1e-2);

  // Per cached row and head: fp32 keys (dq) and expansion (dn + dv) without the flash kernel; the
  // expansion in bf16 with it.
  const CudaLayerLimits limits = limits_for(x, steps, false);
  const CudaMlaLayer on(m, whole(m), loaded.weights, run, limits);
  {
    const ScopedEnv off("MLA_CUDA_FLASH", "0");
    const CudaMlaLayer off_layer(m, whole(m), loaded.weights, run, limits);
    const int64_t head_rows = limits.max_batch * limits.max_kv_len * m.n_heads;
    const int64_t expanded = m.qk_nope_head_dim + m.v_head_dim;
    EXPECT_EQ(off_layer.memory().activation_bytes - on.memory().activation_bytes,
              head_rows * (4 * (m.qk_head_dim() + expanded) - 2 * expanded));
  }

  RunConfig long_run = run;
  long_run.fast_path_max_len = 700;
  const InputTensor long_x = random_input(m, 1, 600, 43);
  const RunResult long_want = layer_run(m, long_run, whole(m), loaded.weights, long_x, {600});
  const RunResult long_got = cuda_run(m, long_run, whole(m), loaded.weights, long_x, {600});
  ASSERT_EQ(long_got.steps.size(), 1u);
  EXPECT_EQ(long_got.steps[0].plan.path, AttentionPath::Fast);
  EXPECT_LE(relative_l2_error(long_got.y, long_want.y), 2e-2);

  expect_switch_refused("MLA_CUDA_FLASH", "2", [&] { CudaMlaLayer(m, whole(m), loaded.weights, run, limits); });
}

// bf16 absorb steps on the fast path take the flash kernel over the cache's bf16 rows, read in
// place through the block tables (dense and paged), heads packed into a block's rows: the CPU
// layer's result, and the kernel that reads the gathered fp32 rows (MLA_CUDA_FLASH=0) up to the
// probabilities' rounding; a 600-position prefill on the fast path too.
TEST_F(CudaLayer, FlashAbsorbStepsReadTheBf16CacheInPlace) {
  const ModelArgs m = model_args(256, 4, 64, 128, 32, 16, 32, 2, 700);  // rows of 128 + 16
  const LoadedWeights loaded =
      load_layer_weights(random_weights(WeightDType::BF16, 10), m, whole(m), ComputeDType::BF16);
  const InputTensor x = random_input(m, 2, 150, 42);
  const std::vector<int64_t> steps = {70, 64, 1, 15};  // past a 64-row block and 32-key stages, a decode, a chunk
  for (const KvCacheLayout layout : {KvCacheLayout::Dense, KvCacheLayout::Paged}) {
    RunConfig run = run_config(AttentionChoice::Fast, FormulationChoice::Absorb, ComputeDType::BF16);
    run.kv_cache.layout = layout;
    run.kv_cache.page_size = 16;
    const RunResult want = layer_run(m, run, whole(m), loaded.weights, x, steps);
    const RunResult flash = cuda_run(m, run, whole(m), loaded.weights, x, steps);
    RunResult gathered;
    {
      const ScopedEnv off("MLA_CUDA_FLASH", "0");
      gathered = cuda_run(m, run, whole(m), loaded.weights, x, steps);
    }
    const std::string name = layout == KvCacheLayout::Paged ? "paged" : "dense";
    EXPECT_LE(relative_l2_error(flash.y, want.y), 2e-2) << name;
    EXPECT_LE(relative_l2_error(gathered.y, want.y), 2e-2) << name;
    EXPECT_LE(relative_l2_error(flash.y, gathered.y), 1e-2) << name;
  }

  RunConfig long_run = run_config(AttentionChoice::Fast, FormulationChoice::Absorb, ComputeDType::BF16);
  long_run.fast_path_max_len = 700;
  const InputTensor long_x = random_input(m, 1, 600, 44);
  const RunResult long_want = layer_run(m, long_run, whole(m), loaded.weights, long_x, {600});
  const RunResult long_got = cuda_run(m, long_run, whole(m), loaded.weights, long_x, {600});
  ASSERT_EQ(long_got.steps.size(), 1u);
  EXPECT_EQ(long_got.steps[0].plan.path, AttentionPath::Fast);
  EXPECT_LE(relative_l2_error(long_got.y, long_want.y), 2e-2);
}

TEST_F(CudaLayer, FastAndStandardAgreeAndAutoSwitchesPastTheMaxLen) {
  const ModelArgs m = model_args(64, 4, 32, 48, 16, 8, 16, 2, 300);
  const LoadedWeights loaded =
      load_layer_weights(random_weights(WeightDType::BF16, 6), m, whole(m), ComputeDType::FP32);
  const InputTensor x = random_input(m, 2, 258, 22);
  const std::vector<int64_t> steps = {255, 1, 1, 1};  // kv 255, 256, 257, 258
  const RunResult fast = cuda_run(m, run_config(AttentionChoice::Fast, FormulationChoice::Absorb, ComputeDType::FP32),
                                  whole(m), loaded.weights, x, steps);
  const RunResult standard =
      cuda_run(m, run_config(AttentionChoice::Standard, FormulationChoice::Absorb, ComputeDType::FP32), whole(m),
               loaded.weights, x, steps);
  const RunResult automatic =
      cuda_run(m, run_config(AttentionChoice::Auto, FormulationChoice::Auto, ComputeDType::FP32), whole(m),
               loaded.weights, x, steps);
  EXPECT_LE(relative_l2_error(fast.y, standard.y), 2e-6);
  EXPECT_LE(relative_l2_error(automatic.y, standard.y), 2e-6);
  ASSERT_EQ(automatic.steps.size(), 4u);
  EXPECT_EQ(automatic.steps[0].plan.path, AttentionPath::Fast);
  // Decode steps take the split-KV decode kernel at any kv_len under fast_path_max_len auto, and
  // say so (the planner's decode rule, CudaMlaLayer::takes_decode_kernel).
  for (size_t i = 1; i < 4; ++i) {
    EXPECT_EQ(automatic.steps[i].plan.path, AttentionPath::Fast) << "step " << i;
    EXPECT_NE(automatic.steps[i].plan.reason.find("split-KV decode kernel"), std::string::npos)
        << automatic.steps[i].plan.reason;
  }
  EXPECT_NE(automatic.steps[2].plan.reason.find("but a decode step"), std::string::npos)
      << automatic.steps[2].plan.reason;
  // A number keeps the seed's rule: past it a decode step takes the standard path.
  RunConfig seed_rule = run_config(AttentionChoice::Auto, FormulationChoice::Auto, ComputeDType::FP32);
  seed_rule.fast_path_max_len = 256;
  seed_rule.fast_path_auto = false;
  const RunResult numbered = cuda_run(m, seed_rule, whole(m), loaded.weights, x, steps);
  EXPECT_LE(relative_l2_error(numbered.y, standard.y), 2e-6);
  EXPECT_EQ(numbered.steps[1].plan.path, AttentionPath::Fast);
  EXPECT_EQ(numbered.steps[2].plan.path, AttentionPath::Standard);
}

TEST_F(CudaLayer, AnExplicitMaskMatchesTheCpuLayer) {
  const ModelArgs m = model_args(72, 4, 24, 36, 12, 6, 10, 2, 32);
  const LoadedWeights loaded =
      load_layer_weights(random_weights(WeightDType::BF16, 7), m, whole(m), ComputeDType::FP32);
  const InputTensor x = random_input(m, 2, 9, 23);
  std::vector<float> mask(81, -INFINITY);
  for (int64_t row = 0; row < 9; ++row)
    for (int64_t col = 0; col <= row; ++col) mask[row * 9 + col] = (row + col) % 3 == 0 ? -1.5f : 0.0f;
  const std::vector<int64_t> steps = {6, 3};
  const RunConfig run = run_config(AttentionChoice::Auto, FormulationChoice::Auto, ComputeDType::FP32);
  const RunResult want = layer_run(m, run, whole(m), loaded.weights, x, steps, mask);
  const RunResult got = cuda_run(m, run, whole(m), loaded.weights, x, steps, mask);
  EXPECT_LE(relative_l2_error(got.y, want.y), 1e-5);
}

TEST_F(CudaLayer, EmulatedWorldsOfTwoAndFourEqualWorldOne) {
  const ModelArgs m = model_args(72, 4, 24, 36, 12, 6, 10, 2, 32);
  const InputTensor x = random_input(m, 2, 8, 24);
  const std::vector<int64_t> steps = {6, 1, 1};
  const WeightsConfig weights = random_weights(WeightDType::BF16, 8);
  for (const FormulationChoice formulation : {FormulationChoice::Naive, FormulationChoice::Absorb}) {
    const RunConfig run = run_config(AttentionChoice::Auto, formulation, ComputeDType::FP32);
    const RunResult world_one =
        cuda_run(m, run, whole(m), load_layer_weights(weights, m, whole(m), ComputeDType::FP32).weights, x, steps);
    for (const int world : {2, 4}) {
      std::vector<float> summed(world_one.y.size(), 0.0f);
      for (int rank = 0; rank < world; ++rank) {
        const HeadShard shard = shard_heads(m.n_heads, world, rank, false);
        const RunResult partial =
            cuda_run(m, run, shard, load_layer_weights(weights, m, shard, ComputeDType::FP32).weights, x, steps);
        for (size_t i = 0; i < summed.size(); ++i) summed[i] += partial.y[i];
      }
      EXPECT_LE(relative_l2_error(summed, world_one.y), 1e-5) << "world " << world << " " << to_string(formulation);
    }
  }
}

// Device memory as measured (every DeviceBuffer's allocation counted, and the driver's view), not
// as the layer adds it up: the layer's report equals what it allocated; the driver sees at least
// that much more in use; the fast path's layer holds less than the standard path's (no score
// buffers), with the same weights, kept in bf16 in bf16 mode.
TEST_F(CudaLayer, TheFastPathHoldsLessDeviceMemoryAsMeasured) {
  const ModelArgs m = model_args(128, 8, 64, 64, 16, 8, 16, 4, 256);
  const LoadedWeights loaded =
      load_layer_weights(random_weights(WeightDType::BF16, 9), m, whole(m), ComputeDType::BF16);
  const CudaLayerLimits limits{4, 256, 256, false};
  RunConfig fast = run_config(AttentionChoice::Fast, FormulationChoice::Auto, ComputeDType::BF16);
  RunConfig standard = run_config(AttentionChoice::Standard, FormulationChoice::Auto, ComputeDType::BF16);
  standard.score_chunk_bytes = int64_t{64} << 20;
  struct Held {
    int64_t measured, reported, weights, workspace;
  };
  const auto held_by = [&](const RunConfig& run) {
    CUDA_CHECK(cudaDeviceSynchronize());
    const int64_t before = device_memory_use().in_use_bytes;
    const int64_t driver_before = device_memory_used_by_driver();
    const CudaMlaLayer layer(m, whole(m), loaded.weights, run, limits);
    const Held held{device_memory_use().in_use_bytes - before, layer.memory().total(), layer.memory().weights_bytes,
                    layer.memory().attention_workspace_bytes};
    EXPECT_GE(device_memory_used_by_driver() - driver_before, held.measured) << "the driver sees less than we hold";
    return held;
  };
  const Held fast_held = held_by(fast);
  const Held standard_held = held_by(standard);
  EXPECT_EQ(fast_held.reported, fast_held.measured) << "a buffer the memory report leaves out (fast)";
  EXPECT_EQ(standard_held.reported, standard_held.measured) << "a buffer the memory report leaves out (standard)";
  EXPECT_LT(fast_held.measured, standard_held.measured);
  EXPECT_EQ(fast_held.workspace, 0);
  EXPECT_EQ(fast_held.weights, standard_held.weights);
  // bf16 mode keeps the matrices in bf16 (the two norm vectors stay fp32).
  EXPECT_LT(fast_held.weights, loaded.weights.bytes() * 6 / 10);
}

// The driver's per-process figure (mla_bench's device_process_bytes, which leaves out the PyTorch
// worker sharing the device) covers what this process holds and grows with a buffer it allocates.
TEST_F(CudaLayer, TheDriversPerProcessFigureSeesOurBuffers) {
  CUDA_CHECK(cudaDeviceSynchronize());
  const int64_t before = device_memory_used_by_this_process();
  if (before < 0) GTEST_SKIP() << "nvidia-smi does not list this process (no nvidia-smi, or a sandbox's process ids)";
  EXPECT_GE(before, device_memory_use().in_use_bytes);
  constexpr int64_t kBlockBytes = int64_t{256} << 20;
  const DeviceBuffer<float> block(kBlockBytes / static_cast<int64_t>(sizeof(float)));
  CUDA_CHECK(cudaDeviceSynchronize());
  const int64_t holding = device_memory_used_by_this_process();
  EXPECT_GE(holding - before, kBlockBytes - (int64_t{2} << 20)) << "whole MiB, less what the driver had reserved";
  EXPECT_LE(holding, device_memory_used_by_driver()) << "one process above the whole device";
}

// keep_input_resident (mla_bench's timed steps): the first forward after turning it on copies x, and
// later ones with the same buffer and tokens read the device's copy; turned off, every forward
// copies again. The host buffer is changed here on purpose to see which copy a step read.
TEST_F(CudaLayer, AResidentInputIsCopiedOnceAndAgainWhenTurnedOff) {
  const ModelArgs m = model_args(64, 2, 0, 32, 16, 8, 16, 1, 8);
  const LoadedWeights loaded =
      load_layer_weights(random_weights(WeightDType::BF16, 12), m, whole(m), ComputeDType::FP32);
  const RunConfig run = run_config(AttentionChoice::Auto, FormulationChoice::Auto, ComputeDType::FP32);
  CudaMlaLayer layer(m, whole(m), loaded.weights, run, {1, 2, 2, false});
  SingleProcessCommunicator comm;
  CudaStepExecutor executor(layer, comm, {}, 2);
  std::vector<float> x = random_floats(2 * m.dim, 13);
  const auto step = [&] {
    executor.forward(x.data(), 1, 2, 0, nullptr, 0, nullptr);  // positions 0 and 1 again each time
    executor.reduce(0.0f);
    std::vector<float> y(x.size());
    executor.copy_output(y.data());
    return y;
  };
  executor.keep_input_resident(true);
  const std::vector<float> first = step();
  for (float& value : x) value *= 2.0f;
  EXPECT_EQ(step(), first) << "the second step should read the copy the first one made";
  executor.keep_input_resident(false);
  const std::vector<float> doubled = step();
  EXPECT_NE(doubled, first) << "turned off, the step should copy the changed x";
  executor.keep_input_resident(true);
  EXPECT_EQ(step(), doubled) << "turned on again, the first step copies";
}

TEST_F(CudaLayer, ATooLongFastPathIsRefusedNamingTheKey) {
  const ModelArgs m = model_args(64, 2, 0, 512, 16, 64, 16, 1, 20000);
  const LoadedWeights loaded =
      load_layer_weights(random_weights(WeightDType::BF16, 10), m, whole(m), ComputeDType::FP32);
  RunConfig run = run_config(AttentionChoice::Auto, FormulationChoice::Auto, ComputeDType::FP32);
  run.fast_path_max_len = 20000;
  try {
    CudaMlaLayer layer(m, whole(m), loaded.weights, run, {1, 1, 20000, false});
    FAIL() << "a fast path of 20000 positions cannot fit in shared memory";
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find("run.fast_path_max_len"), std::string::npos) << error.what();
  }
}

}  // namespace
}  // namespace mla::test
