// The whole layer against the float64 reference: every path x formulation x phase on shapes that
// hit the edges (docs/design.md, Precision and tolerances: fp32 1e-5, bf16 2e-2 relative L2).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cpu/attention_fast_amx.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/cpu_features.h"
#include "tests/test_util.h"

namespace mla::test {
namespace {

ModelArgs args(int64_t dim, int64_t heads, int64_t q_lora, int64_t latent, int64_t nope, int64_t rope, int64_t v,
               int64_t max_seq_len) {
  return model_args(dim, heads, q_lora, latent, nope, rope, v, 3, max_seq_len);
}

struct Schedule {
  std::string name;
  std::vector<int64_t> steps;
};

// prefill at 0 then decode; chunked prefill (p > 0, S > 1) then decode.
std::vector<Schedule> schedules() { return {{"prefill_decode", {9, 1, 1, 1}}, {"chunked", {4, 3, 5, 1, 1}}}; }

RunConfig run_config(AttentionChoice attention, FormulationChoice formulation, ComputeDType dtype) {
  RunConfig run;
  run.attention = attention;
  run.formulation = formulation;
  run.compute_dtype = dtype;
  return run;
}

struct Case {
  LayerShape shape;
  Schedule schedule;
  AttentionChoice attention;
  FormulationChoice formulation;
};

std::string describe(const Case& c) {
  return c.shape.name + "_" + c.schedule.name + "_" + to_string(c.attention) + "_" + to_string(c.formulation);
}

std::string case_name(const testing::TestParamInfo<Case>& info) { return describe(info.param); }

// gtest prints a parameter in the test's name; without this it dumps the struct's bytes.
void PrintTo(const Case& c, std::ostream* out) { *out << describe(c); }

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (const LayerShape& shape : layer_shapes())
    for (const Schedule& schedule : schedules())
      for (AttentionChoice attention : {AttentionChoice::Fast, AttentionChoice::Standard, AttentionChoice::Auto})
        for (FormulationChoice formulation :
             {FormulationChoice::Naive, FormulationChoice::Absorb, FormulationChoice::Auto})
          cases.push_back({shape, schedule, attention, formulation});
  return cases;
}

int64_t total(const std::vector<int64_t>& steps) {
  int64_t sum = 0;
  for (int64_t step : steps) sum += step;
  return sum;
}

// Relative L2 of each step's tokens, so an error in one decode step cannot hide in the prefill.
std::vector<double> per_step_errors(const std::vector<float>& got, const std::vector<double>& want,
                                    const InputTensor& x, const std::vector<int64_t>& steps) {
  std::vector<double> errors;
  int64_t start = 0;
  for (int64_t seq : steps) {
    std::vector<float> got_step;
    std::vector<double> want_step;
    for (int64_t b = 0; b < x.batch; ++b) {
      const int64_t begin = (b * x.tokens + start) * x.dim;
      got_step.insert(got_step.end(), got.begin() + begin, got.begin() + begin + seq * x.dim);
      want_step.insert(want_step.end(), want.begin() + begin, want.begin() + begin + seq * x.dim);
    }
    errors.push_back(relative_l2(got_step, want_step));
    start += seq;
  }
  return errors;
}

class LayerVsReference : public testing::TestWithParam<Case> {};

TEST_P(LayerVsReference, Fp32WithinTolerance) {
  const Case& c = GetParam();
  const ModelArgs& m = c.shape.model;
  const uint64_t seed = 11;
  const LoadedWeights loaded =
      load_layer_weights(random_weights(c.shape.weights_dtype, seed), m, whole(m), ComputeDType::FP32);
  const InputTensor x = random_input(m, 2, total(c.schedule.steps), seed + 1);
  const RunResult got = layer_run(m, run_config(c.attention, c.formulation, ComputeDType::FP32), whole(m),
                                  loaded.weights, x, c.schedule.steps);
  const ref::RefFormulation formulation =
      c.formulation == FormulationChoice::Naive ? ref::RefFormulation::Naive : ref::RefFormulation::Absorb;
  const std::vector<double> want = reference_run(m, loaded.weights, m.n_heads, x, c.schedule.steps, formulation);
  const std::vector<double> errors = per_step_errors(got.y, want, x, c.schedule.steps);
  for (size_t i = 0; i < errors.size(); ++i) {
    EXPECT_LE(errors[i], 1e-5) << "step " << i << " (" << to_string(got.steps[i].plan.path) << ", "
                               << to_string(got.steps[i].plan.formulation) << "), seed " << seed;
  }
  for (const StepReport& step : got.steps) {
    if (c.attention == AttentionChoice::Fast) {
      EXPECT_EQ(step.plan.path, AttentionPath::Fast);
    } else if (c.attention == AttentionChoice::Standard) {
      EXPECT_EQ(step.plan.path, AttentionPath::Standard);
    }
    if (c.formulation != FormulationChoice::Auto) {
      EXPECT_EQ(step.plan.formulation,
                c.formulation == FormulationChoice::Naive ? Formulation::Naive : Formulation::Absorb);
    }
  }
}

TEST_P(LayerVsReference, Bf16WithinTolerance) {
  const Case& c = GetParam();
  const ModelArgs& m = c.shape.model;
  const uint64_t seed = 23;
  const WeightsConfig weights = random_weights(c.shape.weights_dtype, seed);
  const LoadedWeights exact = load_layer_weights(weights, m, whole(m), ComputeDType::FP32);
  const LoadedWeights rounded = load_layer_weights(weights, m, whole(m), ComputeDType::BF16);
  const InputTensor x = random_input(m, 2, total(c.schedule.steps), seed + 1);
  const RunResult got = layer_run(m, run_config(c.attention, c.formulation, ComputeDType::BF16), whole(m),
                                  rounded.weights, x, c.schedule.steps);
  const std::vector<double> want =
      reference_run(m, exact.weights, m.n_heads, x, c.schedule.steps, ref::RefFormulation::Absorb);
  const std::vector<double> errors = per_step_errors(got.y, want, x, c.schedule.steps);
  for (size_t i = 0; i < errors.size(); ++i) EXPECT_LE(errors[i], 2e-2) << "step " << i << ", seed " << seed;
}

INSTANTIATE_TEST_SUITE_P(AllPaths, LayerVsReference, testing::ValuesIn(all_cases()), case_name);

// kv_len 255, 256, 257 around the default fast_path_max_len: auto switches path at 257 and every
// path agrees with the reference on both sides.
}  // namespace
}  // namespace mla::test

namespace mla {
void PrintTo(FormulationChoice formulation, std::ostream* out) { *out << to_string(formulation); }
}  // namespace mla

namespace mla::test {
namespace {

class LayerAtFastPathEdge : public testing::TestWithParam<FormulationChoice> {};

TEST_P(LayerAtFastPathEdge, AutoSwitchesAndStaysExact) {
  const ModelArgs m = args(64, 2, 0, 32, 8, 8, 8, 320);
  const std::vector<int64_t> steps = {128, 127, 1, 1, 6};  // kv_len 128, 255, 256, 257, 263
  const LoadedWeights loaded =
      load_layer_weights(random_weights(WeightDType::BF16, 5), m, whole(m), ComputeDType::FP32);
  const InputTensor x = random_input(m, 1, total(steps), 6);
  const std::vector<double> want = reference_run(m, loaded.weights, m.n_heads, x, steps, ref::RefFormulation::Absorb);
  for (AttentionChoice attention : {AttentionChoice::Auto, AttentionChoice::Fast, AttentionChoice::Standard}) {
    const RunResult got =
        layer_run(m, run_config(attention, GetParam(), ComputeDType::FP32), whole(m), loaded.weights, x, steps);
    const std::vector<double> errors = per_step_errors(got.y, want, x, steps);
    for (size_t i = 0; i < errors.size(); ++i)
      EXPECT_LE(errors[i], 1e-5) << "step " << i << ", " << to_string(attention);
    // A decode step past the limit: absorb's fused kernel takes any length under auto (measured
    // faster at decode); naive keeps the limit, and so does a chunk of 6 tokens in either.
    const bool absorb = GetParam() == FormulationChoice::Absorb;
    if (attention == AttentionChoice::Auto) {
      EXPECT_EQ(got.steps[1].plan.path, AttentionPath::Fast) << "kv_len 255";
      EXPECT_EQ(got.steps[2].plan.path, AttentionPath::Fast) << "kv_len 256";
      EXPECT_EQ(got.steps[3].plan.path, absorb ? AttentionPath::Fast : AttentionPath::Standard) << "kv_len 257";
      EXPECT_NE(got.steps[3].plan.reason.find(absorb ? "but a decode step" : "257 > fast_path_max_len 256"),
                std::string::npos)
          << got.steps[3].plan.reason;
      EXPECT_EQ(got.steps[4].plan.path, AttentionPath::Standard) << "a chunk at kv_len 263";
      EXPECT_NE(got.steps[4].plan.reason.find("263 > fast_path_max_len 256"), std::string::npos)
          << got.steps[4].plan.reason;
    }
    if (attention == AttentionChoice::Fast) {
      EXPECT_EQ(got.steps[3].plan.path, absorb ? AttentionPath::Fast : AttentionPath::Standard) << "kv_len 257";
      EXPECT_EQ(got.steps[4].plan.path, AttentionPath::Standard) << "the fast path cannot take a chunk at 263";
      EXPECT_NE(got.steps[4].plan.reason.find("fast path requested, but"), std::string::npos);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Formulations, LayerAtFastPathEdge,
                         testing::Values(FormulationChoice::Naive, FormulationChoice::Absorb),
                         [](const testing::TestParamInfo<FormulationChoice>& param_info) {
                           return std::string(to_string(param_info.param));
                         });

// On every shape the fast path accepts, fast and standard compute the same function.
TEST(FastVsStandard, AgreeOnEveryAcceptedShape) {
  for (const LayerShape& shape : layer_shapes()) {
    const ModelArgs& m = shape.model;
    const LoadedWeights loaded =
        load_layer_weights(random_weights(shape.weights_dtype, 3), m, whole(m), ComputeDType::FP32);
    for (const Schedule& schedule : schedules()) {
      const InputTensor x = random_input(m, 3, total(schedule.steps), 4);
      for (FormulationChoice formulation : {FormulationChoice::Naive, FormulationChoice::Absorb}) {
        for (ComputeDType dtype : {ComputeDType::FP32, ComputeDType::BF16}) {
          const RunResult fast = layer_run(m, run_config(AttentionChoice::Fast, formulation, dtype), whole(m),
                                           loaded.weights, x, schedule.steps);
          const RunResult standard = layer_run(m, run_config(AttentionChoice::Standard, formulation, dtype), whole(m),
                                               loaded.weights, x, schedule.steps);
          // bf16: the two paths round at the same places, so they differ only by fp32 summation order
          // flipping an occasional bf16 rounding.
          const double tolerance = dtype == ComputeDType::FP32 ? 2e-6 : 1e-2;
          EXPECT_LE(relative_l2(fast.y, to_double(standard.y)), tolerance)
              << shape.name << " " << schedule.name << " " << to_string(formulation) << " " << to_string(dtype);
        }
      }
    }
  }
}

// The schedules above prefill fewer than kAmxMinQueryRows tokens. A longer bf16 prefill runs the
// naive fast path on AMX tiles where the CPU has them, with the expansion's bf16 keys and values
// read in place: against the reference, and on AMX against the same layer on the fp32 loops.
TEST(Bf16Prefill, LongEnoughForAmxTilesMatchesTheReferenceAndTheLoops) {
  const LayerShape shape = layer_shapes()[0];  // odd dimensions: every tile partly empty
  const ModelArgs& m = shape.model;
  const uint64_t seed = 31;
  const WeightsConfig weights = random_weights(shape.weights_dtype, seed);
  const LoadedWeights exact = load_layer_weights(weights, m, whole(m), ComputeDType::FP32);
  const LoadedWeights rounded = load_layer_weights(weights, m, whole(m), ComputeDType::BF16);
  const std::vector<int64_t> steps = {kAmxMinQueryRows + 5, 1};
  const InputTensor x = random_input(m, 2, total(steps), seed + 1);
  const RunConfig run = run_config(AttentionChoice::Fast, FormulationChoice::Naive, ComputeDType::BF16);
  const RunResult got = layer_run(m, run, whole(m), rounded.weights, x, steps);
  const std::vector<double> want = reference_run(m, exact.weights, m.n_heads, x, steps, ref::RefFormulation::Absorb);
  const std::vector<double> errors = per_step_errors(got.y, want, x, steps);
  for (size_t i = 0; i < errors.size(); ++i) EXPECT_LE(errors[i], 2e-2) << "step " << i;
  if (cpu_isa() == CpuIsa::Amx) {
    set_cpu_isa_limit(CpuIsa::Avx512Bf16);
    const RunResult loops = layer_run(m, run, whole(m), rounded.weights, x, steps);
    set_cpu_isa_limit(CpuIsa::Amx);
    EXPECT_LE(relative_l2(got.y, to_double(loops.y)), 1e-2);
  }
}

// A bf16 step handed its input as bf16 numbers (as mla_bench hands it, and as a bf16 model's
// previous layer would) computes exactly what it computes from the fp32 input it rounds itself,
// on every path, the AMX one included; an fp32 step refuses bf16 input.
TEST(Bf16Input, BitsInGiveTheSameOutputAsFp32InOnEveryPath) {
  const LayerShape shape = layer_shapes()[0];
  const ModelArgs& m = shape.model;
  const LoadedWeights rounded =
      load_layer_weights(random_weights(shape.weights_dtype, 41), m, whole(m), ComputeDType::BF16);
  const std::vector<int64_t> steps = {kAmxMinQueryRows + 3, 4, 1};
  const InputTensor x = random_input(m, 2, total(steps), 42);
  for (AttentionChoice attention : {AttentionChoice::Fast, AttentionChoice::Standard}) {
    for (FormulationChoice formulation : {FormulationChoice::Naive, FormulationChoice::Absorb}) {
      const RunConfig run = run_config(attention, formulation, ComputeDType::BF16);
      MlaLayer from_fp32(m, whole(m), rounded.weights, run);
      MlaLayer from_bits(m, whole(m), rounded.weights, run);
      int64_t start_pos = 0;
      for (const int64_t seq : steps) {
        std::vector<float> step_x(static_cast<size_t>(x.batch * seq * m.dim));
        for (int64_t b = 0; b < x.batch; ++b) {
          std::copy_n(x.values.begin() + (b * x.tokens + start_pos) * m.dim, seq * m.dim,
                      step_x.begin() + b * seq * m.dim);
        }
        std::vector<uint16_t> step_bf16(step_x.size());
        for (size_t i = 0; i < step_x.size(); ++i) step_bf16[i] = f32_to_bf16_bits(step_x[i]);
        std::vector<float> want(step_x.size()), got(step_x.size());
        from_fp32.forward(step_x.data(), x.batch, seq, start_pos, nullptr, 0, want.data());
        from_bits.forward(nullptr, x.batch, seq, start_pos, nullptr, 0, got.data(), step_bf16.data());
        for (size_t i = 0; i < want.size(); ++i) {
          ASSERT_EQ(std::memcmp(&got[i], &want[i], sizeof(float)), 0)
              << to_string(attention) << " " << to_string(formulation) << ", step at " << start_pos << ", element "
              << i;
        }
        start_pos += seq;
      }
    }
  }
  MlaLayer fp32(m, whole(m),
                load_layer_weights(random_weights(shape.weights_dtype, 41), m, whole(m), ComputeDType::FP32).weights,
                run_config(AttentionChoice::Auto, FormulationChoice::Auto, ComputeDType::FP32));
  const std::vector<uint16_t> bits(static_cast<size_t>(m.dim), 0);
  std::vector<float> y(static_cast<size_t>(m.dim));
  EXPECT_THROW(fp32.forward(nullptr, 1, 1, 0, nullptr, 0, y.data(), bits.data()), std::invalid_argument);
}

// A score budget of 4 KB forces the standard path through many query chunks per head.
TEST(StandardPath, SmallScoreBudgetsSplitQueriesIntoChunksExactly) {
  const ModelArgs m = args(40, 2, 16, 24, 8, 4, 8, 64);
  const std::vector<int64_t> steps = {20, 20, 5};
  const LoadedWeights loaded =
      load_layer_weights(random_weights(WeightDType::BF16, 21), m, whole(m), ComputeDType::FP32);
  const InputTensor x = random_input(m, 2, total(steps), 22);
  const std::vector<double> want = reference_run(m, loaded.weights, m.n_heads, x, steps, ref::RefFormulation::Absorb);
  for (FormulationChoice formulation : {FormulationChoice::Naive, FormulationChoice::Absorb}) {
    RunConfig run = run_config(AttentionChoice::Standard, formulation, ComputeDType::FP32);
    run.score_chunk_bytes = 4096;
    const RunResult got = layer_run(m, run, whole(m), loaded.weights, x, steps);
    EXPECT_LE(relative_l2(got.y, want), 1e-5) << to_string(formulation);
    // The reported workspace is the chunked one, within the budget.
    for (const StepReport& step : got.steps) EXPECT_LE(step.attention_workspace_bytes, 4096 * 2) << step.kv_len;
  }
}

// With a budget that holds every row, the chunk is still at most kStandardMaxQueryChunk rows (a
// longer one only adds masked work); a budget smaller than that chunk lowers it.
TEST(StandardPath, QueryChunksAreCappedAndFitTheBudget) {
  AttentionParams p;
  p.kv_len = 1000;
  p.seq = 1000;
  EXPECT_EQ(attention_standard_query_chunk(p, int64_t{1} << 40, 2), kStandardMaxQueryChunk);
  EXPECT_EQ(attention_standard_query_chunk(p, 2 * 10 * 1000 * 4, 2), 10);
  EXPECT_EQ(attention_standard_query_chunk(p, 1, 2), 1);
  p.seq = 20;
  EXPECT_EQ(attention_standard_query_chunk(p, int64_t{1} << 40, 2), 20);
  // Heads sharing the latent rows (absorb) are stacked into one block per chunk of tokens: the
  // cap and the budget count their rows.
  p.n_heads = 16;
  p.q_head_stride = p.out_head_stride = 8;
  p.q_token_stride = p.out_token_stride = 16 * 8;
  EXPECT_EQ(attention_standard_query_chunk(p, int64_t{1} << 40, 2), kStandardMaxQueryChunk / 16);
  EXPECT_EQ(attention_standard_query_chunk(p, 2 * 16 * 3 * 1000 * 4, 2), 3);
}

// An explicit mask: equal to the causal rule it changes nothing; a padding mask matches the
// reference and forces the standard path.
TEST(ExplicitMask, CausalMaskEqualsDefaultAndPaddingAndBiasMatchTheReference) {
  const ModelArgs m = args(40, 2, 0, 24, 8, 4, 8, 64);
  const std::vector<int64_t> steps = {6, 3, 1, 1};
  const int64_t tokens = total(steps);
  const LoadedWeights loaded =
      load_layer_weights(random_weights(WeightDType::BF16, 8), m, whole(m), ComputeDType::FP32);
  const InputTensor x = random_input(m, 2, tokens, 9);
  const float minus_inf = -std::numeric_limits<float>::infinity();
  std::vector<float> causal(static_cast<size_t>(tokens * tokens), 0.0f), padded = causal;
  for (int64_t row = 0; row < tokens; ++row) {
    for (int64_t t = 0; t < tokens; ++t) {
      if (t > row) causal[row * tokens + t] = padded[row * tokens + t] = minus_inf;
      if (t < 2 && row >= 2) padded[row * tokens + t] = minus_inf;  // the first two tokens are padding
    }
  }
  const RunConfig run = run_config(AttentionChoice::Auto, FormulationChoice::Auto, ComputeDType::FP32);
  const RunResult plain = layer_run(m, run, whole(m), loaded.weights, x, steps);
  const RunResult with_causal = layer_run(m, run, whole(m), loaded.weights, x, steps, causal);
  EXPECT_LE(relative_l2(with_causal.y, to_double(plain.y)), 2e-6);
  for (const StepReport& step : with_causal.steps) EXPECT_EQ(step.plan.path, AttentionPath::Standard);

  // A mask is additive: besides -inf, any finite value biases its score (an ALiBi-like slope here).
  std::vector<float> biased = padded;
  for (int64_t row = 0; row < tokens; ++row) {
    for (int64_t t = 0; t <= row; ++t) {
      if (std::isfinite(biased[row * tokens + t])) biased[row * tokens + t] = -0.25f * static_cast<float>(row - t);
    }
  }
  for (const std::vector<float>* mask : {&padded, &biased}) {
    const RunResult masked = layer_run(m, run, whole(m), loaded.weights, x, steps, *mask);
    for (ref::RefFormulation formulation : {ref::RefFormulation::Naive, ref::RefFormulation::Absorb}) {
      const std::vector<double> want = reference_run(m, loaded.weights, m.n_heads, x, steps, formulation, *mask);
      EXPECT_LE(relative_l2(masked.y, want), 1e-5) << (mask == &biased ? "biased" : "padded");
    }
  }
  const RunResult padded_run = layer_run(m, run, whole(m), loaded.weights, x, steps, padded);
  const RunResult biased_run = layer_run(m, run, whole(m), loaded.weights, x, steps, biased);
  EXPECT_GT(relative_l2(biased_run.y, to_double(padded_run.y)), 1e-3) << "the bias changed nothing";
}

// fp8 weights as DeepSeek dequantizes them (docs/design.md, Weights): each code * scale rounded to bf16
// by default, the exact product with weights.fp8_dequant: exact. The reference dequantizes the
// same codes and scales itself, by the same rule, so the loader, the GEMM operands and the
// streamed decode kernel (which rounds in registers) are all checked against it, on every path
// and formulation, prefill and decode, in fp32 compute within docs/design.md's 1e-5.
TEST(Fp8LayerVsReference, BothDequantRulesOnEveryPathAndFormulation) {
  const ModelArgs m = args(200, 2, 136, 144, 16, 8, 24, 64);  // partial 128-blocks on every axis
  const std::vector<int64_t> steps = {9, 1, 1, 1};
  const InputTensor x = random_input(m, 2, total(steps), 21);
  const int64_t heads = m.n_heads;
  std::vector<float> y_of_rule[2];
  for (const Fp8Dequant rule : {Fp8Dequant::Bf16, Fp8Dequant::Exact}) {
    WeightsConfig weights = random_weights(WeightDType::FP8, 5);
    weights.fp8_dequant = rule;
    const LoadedWeights loaded = load_layer_weights(weights, m, whole(m), ComputeDType::FP32);
    ref::RefWeights reference = reference_weights(loaded.weights);  // the norms; the fp8 weights below
    const struct {
      const char* name;
      int64_t rows;
      std::vector<double>* values;
    } fp8_weights[] = {{"wq_a", m.q_lora_rank, &reference.wq_a},
                       {"wq_b", heads * m.qk_head_dim(), &reference.wq_b},
                       {"wkv_a", m.kv_lora_rank + m.qk_rope_head_dim, &reference.wkv_a},
                       {"wkv_b", heads * (m.qk_nope_head_dim + m.v_head_dim), &reference.wkv_b},
                       {"wo", m.dim, &reference.wo}};
    for (const auto& weight : fp8_weights) {
      const Fp8Weight& stored = loaded.weights.fp8.at(weight.name);
      const int64_t cols = static_cast<int64_t>(stored.codes.size()) / weight.rows;
      *weight.values = ref::fp8_dequant(stored.codes, weight.rows, cols, stored.scales, rule == Fp8Dequant::Bf16);
    }
    for (const AttentionChoice attention : {AttentionChoice::Fast, AttentionChoice::Standard}) {
      for (const ref::RefFormulation formulation : {ref::RefFormulation::Naive, ref::RefFormulation::Absorb}) {
        const FormulationChoice ours =
            formulation == ref::RefFormulation::Naive ? FormulationChoice::Naive : FormulationChoice::Absorb;
        const RunResult got =
            layer_run(m, run_config(attention, ours, ComputeDType::FP32), whole(m), loaded.weights, x, steps);
        const std::vector<double> want = reference_run(m, reference, heads, x, steps, formulation);
        EXPECT_LE(relative_l2(got.y, want), 1e-5)
            << to_string(rule) << " " << to_string(attention) << " " << to_string(ours);
        y_of_rule[rule == Fp8Dequant::Bf16 ? 0 : 1] = got.y;
      }
    }
  }
  // The rule matters: far more than the fp32 tolerance apart (DeepSeek's outputs follow bf16).
  EXPECT_GT(relative_l2(y_of_rule[0], to_double(y_of_rule[1])), 1e-4);
}

// Tensor parallelism seam: the sum of every rank's partial output equals the whole layer's output,
// for even and uneven head splits (emulated ranks run one after another).
TEST(HeadShards, PartialOutputsSumToTheWholeLayer) {
  const ModelArgs m = args(72, 6, 16, 24, 8, 4, 12, 64);
  const std::vector<int64_t> steps = {5, 2, 1};
  const InputTensor x = random_input(m, 2, total(steps), 13);
  const RunConfig run = run_config(AttentionChoice::Auto, FormulationChoice::Auto, ComputeDType::FP32);
  const WeightsConfig weights = random_weights(WeightDType::BF16, 12);
  const RunResult whole_run =
      layer_run(m, run, whole(m), load_layer_weights(weights, m, whole(m), ComputeDType::FP32).weights, x, steps);
  for (const auto& [world, uneven] : std::vector<std::pair<int, bool>>{{2, false}, {3, false}, {4, true}, {6, false}}) {
    std::vector<float> sum(whole_run.y.size(), 0.0f);
    for (int rank = 0; rank < world; ++rank) {
      const HeadShard shard = shard_heads(m.n_heads, world, rank, uneven);
      const RunResult part =
          layer_run(m, run, shard, load_layer_weights(weights, m, shard, ComputeDType::FP32).weights, x, steps);
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += part.y[i];
    }
    EXPECT_LE(relative_l2(sum, to_double(whole_run.y)), 1e-5) << "world " << world;
  }
}

}  // namespace
}  // namespace mla::test
