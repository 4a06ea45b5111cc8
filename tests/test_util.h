// Shared helpers of the test suite: shapes, weights, the float64 reference, temporary files.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/sharding.h"
#include "runtime/io/config.h"
#include "runtime/io/weights.h"
#include "runtime/layer/mla_layer.h"
#include "runtime/layer/runner.h"
#include "tests/reference/mla_reference.h"

namespace mla::test {

// A model shape for tests; YaRN off (max_seq_len <= original_seq_len) unless a test turns it on.
inline ModelArgs model_args(int64_t dim, int64_t heads, int64_t q_lora, int64_t latent, int64_t nope, int64_t rope,
                            int64_t v, int64_t max_batch_size, int64_t max_seq_len) {
  ModelArgs m;
  m.dim = dim;
  m.n_heads = heads;
  m.q_lora_rank = q_lora;
  m.kv_lora_rank = latent;
  m.qk_nope_head_dim = nope;
  m.qk_rope_head_dim = rope;
  m.v_head_dim = v;
  m.max_batch_size = max_batch_size;
  m.max_seq_len = max_seq_len;
  m.original_seq_len = 4096;
  return m;
}

// Writes `shard`'s slice of random weights (q_lora_rank > 0) as a DeepSeek checkpoint file.
void write_deepseek_checkpoint(const std::string& path, const ModelArgs& m, const WeightsConfig& random,
                               const HeadShard& shard);

inline ref::RefConfig reference_config(const ModelArgs& m, int64_t local_heads) {
  ref::RefConfig config;
  config.dim = m.dim;
  config.n_heads = local_heads;
  config.q_lora_rank = m.q_lora_rank;
  config.kv_lora_rank = m.kv_lora_rank;
  config.qk_nope_head_dim = m.qk_nope_head_dim;
  config.qk_rope_head_dim = m.qk_rope_head_dim;
  config.v_head_dim = m.v_head_dim;
  config.max_seq_len = m.max_seq_len;
  config.original_seq_len = m.original_seq_len;
  config.rope_theta = m.rope_theta;
  config.rope_factor = m.rope_factor;
  config.beta_fast = m.beta_fast;
  config.beta_slow = m.beta_slow;
  config.mscale = m.mscale;
  return config;
}

inline std::vector<double> to_double(const std::vector<float>& values) {
  return std::vector<double>(values.begin(), values.end());
}

inline ref::RefWeights reference_weights(const LayerWeights& w) {
  ref::RefWeights r;
  r.wq = to_double(w.wq);
  r.wq_a = to_double(w.wq_a);
  r.q_norm = to_double(w.q_norm);
  r.wq_b = to_double(w.wq_b);
  r.wkv_a = to_double(w.wkv_a);
  r.kv_norm = to_double(w.kv_norm);
  r.wkv_b = to_double(w.wkv_b);
  r.wo = to_double(w.wo);
  return r;
}

inline WeightsConfig random_weights(WeightDType dtype, uint64_t seed) {
  WeightsConfig config;
  config.format = WeightsFormat::Random;
  config.dtype = dtype;
  config.seed = seed;
  return config;
}

inline HeadShard whole(const ModelArgs& m) { return shard_heads(m.n_heads, 1, 0, false); }

// The reference's output for a schedule: every step's y concatenated into [B, T, D], like y.
inline std::vector<double> reference_run(const ModelArgs& m, const ref::RefWeights& weights, int64_t local_heads,
                                         const InputTensor& x, const std::vector<int64_t>& steps,
                                         ref::RefFormulation formulation, const std::vector<float>& mask = {}) {
  ref::RefMla reference(reference_config(m, local_heads), weights, x.batch, formulation);
  std::vector<double> y(x.values.size());
  int64_t start_pos = 0;
  for (const int64_t seq : steps) {
    std::vector<double> step_x(static_cast<size_t>(x.batch * seq * x.dim));
    for (int64_t b = 0; b < x.batch; ++b)
      for (int64_t i = 0; i < seq * x.dim; ++i)
        step_x[b * seq * x.dim + i] = x.values[(b * x.tokens + start_pos) * x.dim + i];
    std::vector<double> step_mask;
    if (!mask.empty()) {
      for (int64_t s = 0; s < seq; ++s)
        for (int64_t t = 0; t < start_pos + seq; ++t) step_mask.push_back(mask[(start_pos + s) * x.tokens + t]);
    }
    const std::vector<double> step_y = reference.forward(step_x, seq, start_pos, mask.empty() ? nullptr : &step_mask);
    for (int64_t b = 0; b < x.batch; ++b)
      for (int64_t i = 0; i < seq * x.dim; ++i) y[(b * x.tokens + start_pos) * x.dim + i] = step_y[b * seq * x.dim + i];
    start_pos += seq;
  }
  return y;
}

// The same with the reference holding our loaded weights' values.
inline std::vector<double> reference_run(const ModelArgs& m, const LayerWeights& weights, int64_t local_heads,
                                         const InputTensor& x, const std::vector<int64_t>& steps,
                                         ref::RefFormulation formulation, const std::vector<float>& mask = {}) {
  return reference_run(m, reference_weights(weights), local_heads, x, steps, formulation, mask);
}

// Runs our layer (one rank's shard) over a schedule; returns y and the step reports.
inline RunResult layer_run(const ModelArgs& m, const RunConfig& run, const HeadShard& shard, LayerWeights weights,
                           const InputTensor& x, const std::vector<int64_t>& steps,
                           const std::vector<float>& mask = {}) {
  MlaLayer layer(m, shard, std::move(weights), run);
  SingleProcessCommunicator comm;
  return run_schedule(layer, comm, x, steps, mask, {});
}

inline InputTensor random_input(const ModelArgs& m, int64_t batch, int64_t tokens, uint64_t seed) {
  InputConfig config;
  config.random = true;
  config.batch = batch;
  config.tokens = tokens;
  config.seed = seed;
  return load_input(config, m);
}

inline double relative_l2(const std::vector<float>& got, const std::vector<double>& want) {
  return ref::relative_l2(got.data(), want);
}

// The layer shapes that both the CPU layer tests and the CUDA layer tests run: odd dimensions,
// one head without query compression, YaRN, and fp8 weights whose every dimension is off a
// multiple of 128 (partial blocks). Up to 3 sequences of up to 64 positions (128 for yarn).
struct LayerShape {
  std::string name;
  ModelArgs model;
  WeightDType weights_dtype = WeightDType::BF16;
};
std::vector<LayerShape> layer_shapes();

// Ragged steps for the layer tests (docs/design.md, Serving-shaped steps) over three slots: a
// uniform prefill of two sequences beside an idle one, then steps whose sequences sit at different
// positions with different counts (chunks beside decodes), idle sequences, and slots in an order
// other than their numbers. Needs max_batch_size >= 3 and max_seq_len >= 18.
using RaggedTestStep = std::vector<SequenceStep>;
std::vector<RaggedTestStep> ragged_test_schedule();
// Each slot's tokens, [max_seq_len, dim], and a step's packed input drawn from them.
std::vector<std::vector<float>> slot_tokens(const ModelArgs& m, uint64_t seed);
std::vector<float> packed_input(const ModelArgs& m, const std::vector<std::vector<float>>& tokens,
                                const RaggedTestStep& step);
// Runs the steps through an executor (a world of one): each step's output, and its report.
std::vector<std::vector<float>> run_ragged_steps(StepExecutor& executor, const ModelArgs& m,
                                                 const std::vector<std::vector<float>>& tokens,
                                                 const std::vector<RaggedTestStep>& steps,
                                                 std::vector<StepReport>* reports = nullptr);

// A fresh directory under the test temp dir, removed when the object goes.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace mla::test
