// The FLOP and byte model behind mla_bench's GFLOP/s and GB/s (runtime/layer/op_count.h), checked against
// what the layer actually executes: the GEMM FLOPs counted inside gemm() during real steps.
#include <gtest/gtest.h>

#include "kernels/cpu/gemm.h"
#include "runtime/layer/op_count.h"
#include "tests/test_util.h"

namespace mla::test {
namespace {

struct CountCase {
  int64_t q_lora_rank;
  FormulationChoice formulation;
  int64_t start_pos;
  int64_t seq;
};

// On the fast path the attention core runs in its own kernel, so every gemm() call of a step is a
// projection or the formulation's fold/expansion: exactly the model's GEMM list.
TEST(OpCount, GemmFlopsEqualWhatTheLayerExecutes) {
  const std::vector<CountCase> cases = {
      {0, FormulationChoice::Absorb, 0, 7},  {0, FormulationChoice::Naive, 0, 7},
      {24, FormulationChoice::Absorb, 0, 9}, {24, FormulationChoice::Naive, 0, 9},
      {24, FormulationChoice::Absorb, 9, 1}, {24, FormulationChoice::Naive, 9, 1},
      {24, FormulationChoice::Absorb, 9, 4}, {24, FormulationChoice::Naive, 9, 4},
  };
  for (const CountCase& c : cases) {
    const ModelArgs m = model_args(48, 4, c.q_lora_rank, 32, 16, 8, 12, 3, 64);
    const HeadShard shard = shard_heads(m.n_heads, 2, 1, false);  // a rank's slice: 2 local heads
    RunConfig run;
    run.attention = AttentionChoice::Fast;
    run.formulation = c.formulation;
    const LoadedWeights loaded = load_layer_weights(random_weights(WeightDType::BF16, 3), m, shard, ComputeDType::FP32);
    MlaLayer layer(m, shard, loaded.weights, run);
    const int64_t batch = 3;
    const InputTensor x = random_input(m, batch, c.start_pos + c.seq, 4);
    std::vector<float> y(x.values.size());
    if (c.start_pos > 0) layer.forward(x.values.data(), batch, c.start_pos, 0, nullptr, 0, y.data());
    std::vector<float> step_x(static_cast<size_t>(batch * c.seq * m.dim));
    for (int64_t b = 0; b < batch; ++b) {
      std::copy_n(x.values.data() + (b * x.tokens + c.start_pos) * m.dim, c.seq * m.dim,
                  step_x.data() + b * c.seq * m.dim);
    }
    const int64_t before = gemm_flop_executed();
    const StepReport report = layer.forward(step_x.data(), batch, c.seq, c.start_pos, nullptr, 0, y.data());
    const int64_t executed = gemm_flop_executed() - before;
    ASSERT_EQ(report.plan.path, AttentionPath::Fast);

    StepShapeArgs shape;
    shape.n_local_heads = shard.n_local_heads;
    shape.batch = batch;
    shape.seq = c.seq;
    shape.start_pos = c.start_pos;
    shape.formulation = report.plan.formulation;
    const StepCost cost = step_cost(m, shape);
    EXPECT_EQ(cost.gemm_flop, static_cast<double>(executed))
        << "q_lora_rank " << c.q_lora_rank << ", " << to_string(report.plan.formulation) << ", start_pos "
        << c.start_pos << ", seq " << c.seq;
    // The attention core matches the planner's own count, which chooses the formulation by it.
    const double planned =
        report.plan.formulation == Formulation::Naive ? report.plan.naive_flops : report.plan.absorb_flops;
    EXPECT_DOUBLE_EQ(cost.attention_flop + cost.formulation_flop, planned);
  }
}

TEST(OpCount, ReplicatedPartIsTheUnsplitProjections) {
  const ModelArgs m = model_args(7168, 128, 1536, 512, 128, 64, 128, 4, 4096);
  StepShapeArgs shape;
  shape.n_local_heads = 16;
  shape.batch = 4;
  shape.seq = 64;
  const StepCost cost = step_cost(m, shape);
  const double tokens = 4 * 64;
  EXPECT_DOUBLE_EQ(cost.replicated_flop, 2 * tokens * 7168 * (1536 + 512 + 64));
  // Weights read once per step: the fp32 slice is the 146 MB of the decode estimate.
  const double weights =
      4.0 * (1536.0 * 7168 + 16 * 192 * 1536.0 + 576 * 7168.0 + 16 * 256 * 512.0 + 7168 * 16 * 128.0);
  EXPECT_DOUBLE_EQ(cost.weight_bytes, weights);
  EXPECT_NEAR(cost.weight_bytes / 1e6, 146, 1);
  // Decode is bound by those weight bytes: they dominate the traffic.
  shape.seq = 1;
  shape.start_pos = 511;
  EXPECT_GT(step_cost(m, shape).weight_bytes / step_cost(m, shape).bytes(), 0.9);
}

}  // namespace
}  // namespace mla::test
