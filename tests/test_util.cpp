#include "tests/test_util.h"

#include <unistd.h>

#include <atomic>

#include "runtime/io/safetensors.h"

namespace mla::test {

void write_deepseek_checkpoint(const std::string& path, const ModelArgs& m, const WeightsConfig& random,
                               const HeadShard& shard) {
  const LayerWeights w = load_layer_weights(random, m, shard, ComputeDType::FP32).weights;
  const int64_t heads = shard.n_local_heads;
  const auto name = [](const std::string& n) { return "layers.0.attn." + n + ".weight"; };
  write_safetensors_f32(path,
                        {{name("wq_a"), {m.q_lora_rank, m.dim}, w.wq_a.data()},
                         {name("q_norm"), {m.q_lora_rank}, w.q_norm.data()},
                         {name("wq_b"), {heads * m.qk_head_dim(), m.q_lora_rank}, w.wq_b.data()},
                         {name("wkv_a"), {m.kv_lora_rank + m.qk_rope_head_dim, m.dim}, w.wkv_a.data()},
                         {name("kv_norm"), {m.kv_lora_rank}, w.kv_norm.data()},
                         {name("wkv_b"), {heads * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank}, w.wkv_b.data()},
                         {name("wo"), {m.dim, heads * m.v_head_dim}, w.wo.data()}});
}

std::vector<LayerShape> layer_shapes() {
  const auto args = [](int64_t dim, int64_t heads, int64_t q_lora, int64_t latent, int64_t nope, int64_t rope,
                       int64_t v, int64_t max_seq_len) {
    return model_args(dim, heads, q_lora, latent, nope, rope, v, 3, max_seq_len);
  };
  std::vector<LayerShape> list;
  list.push_back({"odd_dims", args(67, 3, 24, 20, 7, 6, 9, 64)});
  list.push_back({"one_head_no_q_lora", args(32, 1, 0, 16, 8, 4, 8, 64)});
  LayerShape yarn{"yarn", args(48, 2, 16, 32, 16, 8, 16, 128)};
  yarn.model.original_seq_len = 32;
  yarn.model.rope_factor = 4.0;
  yarn.model.mscale = 0.707;
  list.push_back(yarn);
  list.push_back({"fp8_partial_blocks", args(200, 2, 136, 144, 16, 8, 24, 64), WeightDType::FP8});
  return list;
}

std::vector<RaggedTestStep> ragged_test_schedule() {
  return {{{0, 0, 6}, {1, 0, 6}, {2, 0, 0}},
          {{2, 0, 9}, {0, 6, 1}, {1, 6, 4}},
          {{0, 7, 1}, {1, 10, 0}, {2, 9, 1}},
          {{1, 10, 3}, {2, 10, 1}, {0, 8, 5}},
          {{0, 13, 1}, {1, 13, 1}, {2, 11, 1}}};
}

std::vector<std::vector<float>> slot_tokens(const ModelArgs& m, uint64_t seed) {
  std::vector<std::vector<float>> tokens;
  for (int64_t slot = 0; slot < m.max_batch_size; ++slot) {
    tokens.push_back(random_input(m, 1, m.max_seq_len, seed + static_cast<uint64_t>(slot)).values);
  }
  return tokens;
}

std::vector<float> packed_input(const ModelArgs& m, const std::vector<std::vector<float>>& tokens,
                                const RaggedTestStep& step) {
  std::vector<float> x;
  for (const SequenceStep& sequence : step) {
    const float* first = tokens[static_cast<size_t>(sequence.slot)].data() + sequence.start_pos * m.dim;
    x.insert(x.end(), first, first + sequence.new_tokens * m.dim);
  }
  return x;
}

std::vector<std::vector<float>> run_ragged_steps(StepExecutor& executor, const ModelArgs& m,
                                                 const std::vector<std::vector<float>>& tokens,
                                                 const std::vector<RaggedTestStep>& steps,
                                                 std::vector<StepReport>* reports) {
  std::vector<std::vector<float>> outputs;
  for (const RaggedTestStep& sequences : steps) {
    RaggedStep step;
    step.sequences = sequences;
    const std::vector<float> x = packed_input(m, tokens, sequences);
    const StepReport report = executor.forward_ragged(x.data(), step);
    if (reports != nullptr) reports->push_back(report);
    executor.reduce(0.0f);
    std::vector<float> y(x.size());
    executor.copy_output(y.data());
    outputs.push_back(std::move(y));
  }
  return outputs;
}

TempDir::TempDir() {
  static std::atomic<int> counter{0};
  path_ = std::filesystem::path(testing::TempDir()) /
          ("mla_test_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
  std::filesystem::remove_all(path_);
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

}  // namespace mla::test
