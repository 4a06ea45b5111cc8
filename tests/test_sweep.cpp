// Sweep files of mla_bench (runtime/io/sweep.h): how lists cross into points, what each phase means,
// and bad sweeps refused with the key and line named.
#include <gtest/gtest.h>

#include <string>

#include "runtime/base/errors.h"
#include "runtime/io/sweep.h"

namespace mla {
namespace {

const std::string kBase = R"(model: {dim: 64, n_heads: 4, q_lora_rank: 0, kv_lora_rank: 32, qk_nope_head_dim: 8,
        qk_rope_head_dim: 8, v_head_dim: 8, max_seq_len: 256}
weights: {format: random}
run: {compute_dtype: fp32, threads: 1}
)";

std::string error_of(const std::string& text, const std::vector<std::string>& overrides = {}) {
  try {
    parse_sweep(text, "s.yaml", overrides);
  } catch (const UserError& error) {
    return error.what();
  }
  return "(no error)";
}

TEST(Sweep, ListsAreCrossedWorldOutermostAndChunkOnlyForChunkedPrefill) {
  const Sweep sweep = parse_sweep(kBase + R"(sweep:
  world: [2, 1]
  seq_len: [16, 32]
  phase: [prefill, chunked_prefill, decode]
  chunk: [4, 8]
  attention: [fast, standard]
bench: {warmup: 0, min_reps: 2, max_seconds: 0.5}
)",
                                  "configs/s.yaml");
  // world 2 x 2 seq x (prefill 1 + chunked 2 + decode 1) x 2 attention, twice over world.
  ASSERT_EQ(sweep.points.size(), 2u * 2 * 4 * 2);
  EXPECT_EQ(sweep.points.front().world, 2);
  EXPECT_EQ(sweep.points.back().world, 1);
  EXPECT_EQ(sweep.name, "s");
  EXPECT_EQ(sweep.bench.csv, "results/s.csv");
  EXPECT_EQ(sweep.bench.jsonl, "results/s.jsonl");
  EXPECT_EQ(sweep.bench.min_reps, 2);
  int chunked = 0;
  for (const BenchPoint& point : sweep.points) {
    EXPECT_EQ(point.start_pos() + point.step_len(), point.seq_len);
    if (point.phase == BenchPhase::ChunkedPrefill) {
      ++chunked;
      EXPECT_EQ(point.step_len(), point.chunk);
    } else {
      EXPECT_EQ(point.chunk, 0);
    }
    if (point.phase == BenchPhase::Decode) {
      EXPECT_EQ(point.step_len(), 1);
    }
    if (point.phase == BenchPhase::Prefill) {
      EXPECT_EQ(point.start_pos(), 0);
    }
  }
  EXPECT_EQ(chunked, 2 * 2 * 2 * 2);  // world x seq_len x chunk x attention
}

// ragged_decode: sequence 0 at the longest kv (seq_len), the others drawn from the distribution,
// one token each; mixed: one chunk ending at seq_len beside batch - 1 decodes at seq_len.
TEST(Sweep, TheRaggedPhasesDrawTheirSequences) {
  const Sweep sweep = parse_sweep(kBase + R"(sweep:
  seq_len: [200]
  batch: [64]
  phase: [ragged_decode, mixed]
  chunk: [32]
  kv_distribution: [uniform, longtail]
)",
                                  "s.yaml");
  ASSERT_EQ(sweep.points.size(), 3u);  // ragged_decode x 2 distributions, mixed x 1 chunk
  double mean[2] = {0, 0};
  for (const BenchPoint& point : sweep.points) {
    const std::vector<BenchPoint::Sequence> sequences = point.sequences(2);
    ASSERT_EQ(sequences.size(), 64u);
    EXPECT_TRUE(point.ragged());
    if (point.phase == BenchPhase::Mixed) {
      EXPECT_EQ(point.chunk, 32);
      EXPECT_EQ(sequences[0].start_pos, 168);
      EXPECT_EQ(sequences[0].new_tokens, 32);
      for (size_t b = 1; b < sequences.size(); ++b) EXPECT_EQ(sequences[b].start_pos, 199);
      continue;
    }
    EXPECT_EQ(point.chunk, 0);
    EXPECT_EQ(sequences[0].start_pos, 199);
    for (const BenchPoint::Sequence& sequence : sequences) {
      EXPECT_EQ(sequence.new_tokens, 1);
      EXPECT_GE(sequence.start_pos, 0);
      EXPECT_LT(sequence.start_pos, 200);
      mean[static_cast<int>(point.kv_distribution)] += static_cast<double>(sequence.start_pos + 1) / 64.0;
    }
    EXPECT_EQ(point.sequences(2)[5].start_pos, sequences[5].start_pos) << "drawn from the seed alone";
  }
  EXPECT_GT(mean[0], 70.0);  // uniform in [1, 200]: about 100
  EXPECT_LT(mean[1], 50.0);  // longtail, mean seq_len / 8: about 25
  EXPECT_NE(error_of(kBase + "sweep: {seq_len: [8], phase: decode, kv_distribution: uniform}\n")
                .find("sweep.kv_distribution: only applies to phase ragged_decode"),
            std::string::npos);
  EXPECT_NE(error_of(kBase + "sweep: {seq_len: [8], phase: mixed}\n").find("sweep.chunk: required"), std::string::npos);
}

// sweep.context_parallel crosses like the other axes and each point's config carries its groups;
// groups that do not divide a world are refused, and so is a CUDA backend beside them with the
// naive formulation or the standard path (the CUDA layer attends a split cache with the split-KV
// kernel, absorb only).
TEST(Sweep, TheContextParallelAxisCrossesAndIsChecked) {
  EXPECT_NE(error_of(kBase + "sweep: {seq_len: [8], world: [2, 4], context_parallel: [4]}\n")
                .find("sweep.context_parallel: groups of 4 at world 2"),
            std::string::npos);
  const std::string cuda_axes = "sweep: {seq_len: [8], world: [2], backend: [cpu, cuda], context_parallel: [1, 2], ";
  for (const char* split_axis : {"formulation: [absorb, naive]}", "attention: [fast, standard]}"}) {
    EXPECT_NE(error_of(kBase + cuda_axes + std::string(split_axis) + "\n")
                  .find("sweep.context_parallel: groups of 2 on the CUDA backend take the absorb formulation"),
              std::string::npos)
        << split_axis;
  }
  EXPECT_EQ(parse_sweep(kBase + cuda_axes + "formulation: [absorb], attention: [fast]}\n", "s.yaml", {}).points.size(),
            4u);
  // The axis crosses like the others; each point's config carries its groups.
  const Sweep sweep =
      parse_sweep(kBase + "sweep: {seq_len: [8], world: [2], context_parallel: [1, 2]}\n", "s.yaml", {});
  ASSERT_EQ(sweep.points.size(), 2u);
  EXPECT_EQ(sweep.points[1].context_parallel, 2);
  EXPECT_NE(sweep.points[1].label().find("context_parallel 2"), std::string::npos);
  EXPECT_EQ(point_config(sweep, sweep.points[1]).parallel.context_parallel, 2);
}

TEST(Sweep, PointConfigCarriesThePointAndKeepsTheBase) {
  const Sweep sweep = parse_sweep(kBase + "sweep: {seq_len: 40, batch: 3, phase: decode, compute_dtype: bf16}\n",
                                  "s.yaml", {"sweep.formulation=[absorb]", "model.max_seq_len=128"});
  ASSERT_EQ(sweep.points.size(), 1u);
  const Config config = point_config(sweep, sweep.points[0]);
  EXPECT_EQ(config.run.input.batch, 3);
  EXPECT_EQ(config.run.input.tokens, 40);
  EXPECT_EQ(config.run.schedule.steps(40), (std::vector<int64_t>{39, 1}));
  EXPECT_EQ(config.run.compute_dtype, ComputeDType::BF16);
  EXPECT_EQ(config.run.formulation, FormulationChoice::Absorb);
  EXPECT_EQ(config.model.max_seq_len, 128);  // --set reached the base
  EXPECT_EQ(config.model.max_batch_size, 3);
  EXPECT_EQ(config.run.threads, 1);
  EXPECT_TRUE(config.run.output.empty());
}

// bench.fill fork: a decode or chunked_prefill point of several sequences computes sequence 0 alone
// (its input one sequence) and copies it; prefill, ragged points and single sequences compute.
TEST(Sweep, AForkedFillTakesOneSequencesInput) {
  const Sweep sweep =
      parse_sweep(kBase + R"(sweep: {seq_len: 40, batch: [1, 3], phase: [decode, prefill, ragged_decode]}
bench: {fill: fork}
)",
                  "s.yaml");
  ASSERT_EQ(sweep.bench.fill, BenchFill::Fork);
  for (const BenchPoint& point : sweep.points) {
    const bool forks = point.batch == 3 && point.phase == BenchPhase::Decode;
    EXPECT_EQ(fills_by_fork(point, sweep.bench.fill), forks) << point.label();
    EXPECT_EQ(point_config(sweep, point).run.input.batch, forks ? 1 : point.batch) << point.label();
  }
  EXPECT_EQ(parse_sweep(kBase + "sweep: {seq_len: 8}\n", "s.yaml").bench.fill, BenchFill::Compute);
  EXPECT_NE(
      error_of(kBase + "sweep: {seq_len: 8}\nbench: {fill: copy}\n").find("bench.fill: expected one of compute | fork"),
      std::string::npos)
      << error_of(kBase + "sweep: {seq_len: 8}\nbench: {fill: copy}\n");
}

// bench.torch_variants: the baseline's ways of running its step, eager alone unless listed, each once.
TEST(Sweep, TheBaselineVariantsAreListedOnce) {
  EXPECT_EQ(parse_sweep(kBase + "sweep: {seq_len: 8}\n", "s.yaml").bench.torch_variants,
            std::vector<TorchVariant>{TorchVariant::Eager});
  const Sweep sweep = parse_sweep(kBase + "sweep: {seq_len: 8}\nbench: {torch_variants: [graph, eager]}\n", "s.yaml");
  EXPECT_EQ(sweep.bench.torch_variants, (std::vector<TorchVariant>{TorchVariant::Graph, TorchVariant::Eager}));
  EXPECT_EQ(
      parse_sweep(kBase + "sweep: {seq_len: 8}\nbench: {torch_variants: compile}\n", "s.yaml").bench.torch_variants,
      std::vector<TorchVariant>{TorchVariant::Compile});
  const std::string twice = error_of(kBase + "sweep: {seq_len: 8}\nbench: {torch_variants: [compile, compile]}\n");
  EXPECT_NE(twice.find("bench.torch_variants: lists compile twice"), std::string::npos) << twice;
  const std::string unknown = error_of(kBase + "sweep: {seq_len: 8}\nbench: {torch_variants: [jit]}\n");
  EXPECT_NE(unknown.find("bench.torch_variants[0]: expected one of eager | compile | graph"), std::string::npos)
      << unknown;
}

TEST(Sweep, BadSweepsNameTheKeyAndWhere) {
  EXPECT_NE(error_of(kBase).find("sweep: required section"), std::string::npos) << error_of(kBase);
  EXPECT_NE(error_of(kBase + "sweep: {seq_len: [16], phse: [decode]}\n").find("s.yaml:5: sweep.phse: unknown key"),
            std::string::npos);
  EXPECT_NE(error_of(kBase + "sweep: {seq_len: [16, 300]}\n").find("sweep.seq_len[1]: expected an integer in [1, 256]"),
            std::string::npos);
  EXPECT_NE(error_of(kBase + "sweep: {seq_len: [16], world: [3]}\n").find("3 does not divide model.n_heads 4"),
            std::string::npos);
  EXPECT_NE(error_of(kBase + "sweep: {seq_len: [8], phase: chunked_prefill, chunk: 16}\n")
                .find("chunk 16 is longer than seq_len 8"),
            std::string::npos);
  EXPECT_NE(error_of(kBase + "sweep: {seq_len: [8], phase: chunked_prefill}\n").find("sweep.chunk: required"),
            std::string::npos);
  EXPECT_NE(error_of(kBase + "sweep: {seq_len: [8], attention: [quick]}\n")
                .find("sweep.attention[0]: expected one of auto | fast | standard"),
            std::string::npos);
  EXPECT_NE(error_of(kBase + "sweep: {seq_len: []}\n").find("sweep.seq_len: expected a value or a non-empty list"),
            std::string::npos);
  EXPECT_NE(error_of(kBase + "sweep: {seq_len: 8}\nbench: {min_reps: 0}\n").find("bench.min_reps"), std::string::npos);
  EXPECT_NE(error_of(kBase + "sweep: {seq_len: 8}\nbnch: {}\n").find("bnch: unknown key"), std::string::npos);
  EXPECT_NE(error_of(kBase + "sweep: {seq_len: 8}\n", {"sweep.batch=[0]"}).find("--set sweep.batch"), std::string::npos)
      << error_of(kBase + "sweep: {seq_len: 8}\n", {"sweep.batch=[0]"});
  // The sweep sets the input and schedule per point: a file that sets them would be silently overridden.
  EXPECT_NE(
      error_of(kBase + "sweep: {seq_len: 8}\n", {"run.output=y.safetensors"}).find("run.output: is set per point"),
      std::string::npos);
  // The base config is checked like mla_run's, with its line.
  EXPECT_NE(error_of(kBase + "sweep: {seq_len: 8}\n", {"model.qk_rope_head_dim=7"}).find("must be even"),
            std::string::npos);
}

}  // namespace
}  // namespace mla
