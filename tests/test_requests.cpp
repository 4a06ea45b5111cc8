// Continuous batching (docs/design.md, Continuous batching): the planned steps keep every rule
// (arrival, slots, the token budget, decodes first, pages never over-committed, every token once
// and in order), and each request's output equals the same request run alone.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "runtime/base/errors.h"
#include "runtime/layer/backend.h"
#include "runtime/layer/request_runner.h"
#include "runtime/layer/request_schedule.h"
#include "tests/test_util.h"

namespace mla::test {
namespace {

std::vector<RequestConfig> mixed_requests() {
  return {{"a", 30, 5, 0}, {"b", 7, 9, 0},  {"c", 45, 2, 1}, {"d", 3, 12, 2},
          {"e", 20, 0, 2}, {"f", 11, 6, 9}, {"g", 9, 3, 40}};
}

RequestLimits limits(int64_t slots, int64_t budget, int64_t page_size, int64_t pages) {
  return {slots, 64, budget, page_size, pages};
}

// Replays a plan and checks every rule; returns each request's first step.
std::vector<int64_t> check_plan(const std::vector<RequestConfig>& requests, const RequestLimits& lim,
                                const std::vector<PlannedStep>& plan) {
  std::vector<int64_t> position(requests.size(), 0), slot(requests.size(), -1), first(requests.size(), -1);
  std::vector<bool> done(requests.size(), false);
  int64_t last_clock = -1;
  for (size_t index = 0; index < plan.size(); ++index) {
    const PlannedStep& step = plan[index];
    EXPECT_GT(step.clock, last_clock) << "step " << index;
    last_clock = step.clock;
    EXPECT_LE(step.step.total_tokens(), lim.max_step_tokens) << "step " << index;
    EXPECT_GE(step.step.total_tokens(), 1) << "step " << index;
    EXPECT_LE(static_cast<int64_t>(step.step.sequences.size()), lim.slots) << "step " << index;
    int64_t held_pages = 0;
    bool prefill_seen_with_budget_left = false;
    for (size_t i = 0; i < step.step.sequences.size(); ++i) {
      const SequenceStep& sequence = step.step.sequences[i];
      const size_t r = static_cast<size_t>(step.request[i]);
      const RequestConfig& request = requests[r];
      EXPECT_FALSE(done[r]) << request.name << " runs after it finished";
      EXPECT_GE(step.clock, request.arrival) << request.name << " ran before it arrived";
      if (slot[r] < 0) slot[r] = sequence.slot;
      EXPECT_EQ(sequence.slot, slot[r]) << request.name << " changed slot";
      EXPECT_EQ(sequence.start_pos, position[r]) << request.name << " skipped or repeated tokens";
      if (position[r] >= request.prompt) {
        EXPECT_EQ(sequence.new_tokens, 1) << request.name << " decodes one token (every budget here >= slots)";
      }
      if (position[r] < request.prompt && sequence.new_tokens < request.prompt - position[r]) {
        prefill_seen_with_budget_left = true;  // a chunk cut short: the budget must be spent
      }
      if (sequence.new_tokens > 0 && first[r] < 0) first[r] = static_cast<int64_t>(index);
      position[r] += sequence.new_tokens;
      held_pages += (request.prompt + request.generate + lim.page_size - 1) / lim.page_size;
    }
    if (prefill_seen_with_budget_left) {
      EXPECT_EQ(step.step.total_tokens(), lim.max_step_tokens) << "step " << index;
    }
    EXPECT_LE(held_pages, lim.pages) << "step " << index << " over-commits the pages";
    for (const int64_t r : step.finished) {
      EXPECT_EQ(position[r], requests[r].prompt + requests[r].generate);
      done[r] = true;
    }
  }
  for (size_t r = 0; r < requests.size(); ++r) EXPECT_TRUE(done[r]) << requests[r].name << " never finished";
  return first;
}

TEST(RequestPlan, KeepsEveryRuleUnderTightLimits) {
  const std::vector<RequestConfig> requests = mixed_requests();
  for (const RequestLimits& lim : {limits(3, 16, 8, 12), limits(2, 5, 4, 20), limits(4, 64, 64, 4), limits(1, 1, 16, 4),
                                   limits(8, 1000, 16, 100)}) {
    const std::vector<PlannedStep> plan = plan_requests(requests, lim);
    check_plan(requests, lim, plan);
  }
}

TEST(RequestPlan, DecodesComeFirstAndIdleTimeIsSkipped) {
  const std::vector<RequestConfig> requests = {{"short", 2, 4, 0}, {"long", 40, 3, 0}, {"late", 4, 1, 100}};
  const std::vector<PlannedStep> plan = plan_requests(requests, limits(4, 8, 64, 4));
  // Step 0: short's prompt, then long's first chunk in the budget left (admission order).
  ASSERT_GE(plan.size(), 2u);
  EXPECT_EQ(plan[0].step.sequences[0].new_tokens, 2);
  EXPECT_EQ(plan[0].step.sequences[1].new_tokens, 6);
  // Then short decodes: its token is taken before long's chunk, 1 + 7.
  EXPECT_EQ(plan[1].decode_tokens, 1);
  EXPECT_EQ(plan[1].prefill_tokens, 7);
  // Nothing runs between the first requests' end and step 100: the clock jumps there.
  EXPECT_EQ(plan.back().clock, 101);
  EXPECT_EQ(plan[plan.size() - 2].clock, 100);
}

TEST(RequestPlan, ARequestWaitsForPagesThenTakesThemBack) {
  // 6 pages of 8: a (3 pages) and b (3 pages) fill them; c waits until one finishes.
  const std::vector<RequestConfig> requests = {{"a", 20, 2, 0}, {"b", 4, 18, 0}, {"c", 8, 1, 0}};
  const RequestLimits lim = limits(3, 64, 8, 6);
  const std::vector<PlannedStep> plan = plan_requests(requests, lim);
  const std::vector<int64_t> first = check_plan(requests, lim, plan);
  int64_t first_finish = -1;
  for (size_t i = 0; i < plan.size() && first_finish < 0; ++i) {
    if (!plan[i].finished.empty()) first_finish = static_cast<int64_t>(i);
  }
  EXPECT_EQ(first[2], first_finish + 1) << "c starts right after a slot's pages come back";
}

TEST(RequestPlan, ARequestThatCanNeverRunIsNamed) {
  try {
    plan_requests({{"ok", 4, 1, 0}, {"huge", 60, 10, 0}}, limits(2, 8, 8, 100));
    FAIL();
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find("run.schedule.requests[1] (huge)"), std::string::npos) << error.what();
    EXPECT_NE(std::string(error.what()).find("model.max_seq_len 64"), std::string::npos) << error.what();
  }
  try {
    plan_requests({{"wide", 40, 0, 0}}, limits(2, 8, 8, 4));
    FAIL();
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find("run.kv_cache.pages 4"), std::string::npos) << error.what();
  }
}

// Every request's output under continuous batching equals the same request run alone in an empty
// layer, within the fp32 bound (batching changes the GEMMs' shapes, so not bit for bit); with an
// fp8 cache within 1e-4 (a c_n value at a rounding edge may take the neighbouring code); in bf16
// compute within docs/design.md's bf16 bound (a different GEMM shape may round a value to the
// neighbouring bf16 number).
struct BatchingCase {
  KvCacheDType cache_dtype;
  ComputeDType compute;
  double bound;
};

TEST(ContinuousBatching, EachRequestEqualsItselfRunAlone) {
  const LayerShape shape = layer_shapes().front();  // odd dims
  ModelArgs m = shape.model;
  m.max_batch_size = 3;
  const std::vector<RequestConfig> requests = mixed_requests();
  for (const BatchingCase& c : {BatchingCase{KvCacheDType::Auto, ComputeDType::FP32, 1e-5},
                                BatchingCase{KvCacheDType::FP8, ComputeDType::FP32, 1e-4},
                                BatchingCase{KvCacheDType::Auto, ComputeDType::BF16, 2e-2}}) {
    RunConfig run;
    run.compute_dtype = c.compute;
    run.max_step_tokens = 16;
    run.kv_cache.layout = KvCacheLayout::Paged;
    run.kv_cache.page_size = 8;
    run.kv_cache.pages = 20;
    run.kv_cache.dtype = c.cache_dtype;
    const LoadedWeights loaded = load_layer_weights(random_weights(shape.weights_dtype, 8), m, whole(m), c.compute);
    InputConfig input;
    input.random = true;
    input.seed = 9;
    const RequestInputs inputs = load_request_inputs(input, requests, m);
    MlaLayer layer(m, whole(m), loaded.weights, run);
    SingleProcessCommunicator comm;
    CpuStepExecutor executor(layer, comm);
    const std::vector<PlannedStep> plan = plan_requests(requests, request_limits(m, run));
    const RequestRunResult together = run_requests(executor, requests, inputs, plan);
    EXPECT_GT(together.peak_cache_bytes_in_use, 0);
    EXPECT_LE(together.peak_cache_bytes_in_use, together.cache_pool_bytes);
    for (size_t r = 0; r < requests.size(); ++r) {
      RequestConfig alone_request = requests[r];
      alone_request.arrival = 0;
      RequestInputs alone_input;
      alone_input.dim = inputs.dim;
      alone_input.x = {inputs.x[r]};
      MlaLayer alone_layer(m, whole(m), loaded.weights, run);
      CpuStepExecutor alone_executor(alone_layer, comm);
      const RequestRunResult alone = run_requests(alone_executor, {alone_request}, alone_input,
                                                  plan_requests({alone_request}, request_limits(m, run)));
      const double error = relative_l2(together.y[r], to_double(alone.y[0]));
      EXPECT_LE(error, c.bound) << requests[r].name << ", cache " << to_string(c.cache_dtype) << ", compute "
                                << to_string(c.compute);
    }
  }
}

}  // namespace
}  // namespace mla::test
