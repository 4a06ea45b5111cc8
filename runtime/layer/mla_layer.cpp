#include "runtime/layer/mla_layer.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/attention_fast_amx.h"
#include "kernels/cpu/attention_merge.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/finite_check.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/paged_latent.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/strided_copy.h"
#include "kernels/cpu/vector_ops.h"
#include "runtime/layer/attention_layout.h"

namespace mla {

namespace {

template <typename T, typename Allocator>
T* sized(std::vector<T, Allocator>& buffer, int64_t count) {
  if (static_cast<int64_t>(buffer.size()) < count) buffer.resize(static_cast<size_t>(count));
  return buffer.data();
}

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// Prepares a loaded weight (with its fp8 codes, when the loader kept them) and frees the copies.
PackedLinear pack(LayerWeights& weights, std::vector<float> LayerWeights::*member, const char* name,
                  int64_t out_features, int64_t in_features, LinearPrecision precision, bool keep_fp32 = false) {
  std::vector<float>& weight = weights.*member;
  if (weight.empty()) return {};
  const auto fp8 = weights.fp8.find(name);
  Fp8Blocks blocks;
  if (fp8 != weights.fp8.end()) {
    blocks = {fp8->second.codes.data(), fp8->second.scales.data(), fp8->second.scale_cols, fp8->second.round_to_bf16};
  }
  PackedLinear packed(weight.data(), out_features, in_features, precision,
                      fp8 != weights.fp8.end() ? &blocks : nullptr);
  if (!keep_fp32) std::vector<float>().swap(weight);
  if (fp8 != weights.fp8.end()) weights.fp8.erase(fp8);
  return packed;
}

}  // namespace

void MlaLayer::run_linear(const float* x, int64_t x_stride, const PackedLinear& weight, int64_t rows, float* y,
                          int64_t y_stride, const uint16_t* x_bf16, uint16_t* y_bf16) {
  const auto started = Clock::now();
  PackedLinearCall call;
  call.x = x;
  call.x_stride = x_stride;
  call.x_bf16 = x_bf16;
  call.y = y;
  call.y_stride = y_stride;
  call.y_bf16 = y_bf16;
  call.rows = rows;
  call.round_to_bf16 = round_bf16_;
  weight.forward(call);
  step_linear_ms_ += ms_since(started);
  const std::string name = linear_name(weight);
  const int64_t width = weight.out_features();
  trace({"the output of " + name, name, y, y_bf16, rows, width, y_bf16 != nullptr ? width : y_stride});
}

std::string MlaLayer::linear_name(const PackedLinear& weight) const {
  const std::pair<const PackedLinear*, const char*> names[] = {
      {&wq_, "wq"},       {&wq_a_, "wq_a"}, {&wq_b_, "wq_b"},        {&wkv_a_, "wkv_a"},
      {&wkv_b_, "wkv_b"}, {&wo_, "wo"},     {&group_wkv_b_, "wkv_b"}};
  for (const auto& [member, name] : names) {
    if (member == &weight) return name;
  }
  return "a linear layer";
}

std::string MlaLayer::explain_non_finite() const {
  for (const TracedTensor& tensor : step_trace_) {
    for (int64_t row = 0; row < tensor.rows; ++row) {
      int64_t col = -1;
      if (tensor.values != nullptr) {
        col = first_non_finite(tensor.values + row * tensor.stride, tensor.width);
      } else {
        const uint16_t* bits = tensor.bits + row * tensor.stride;
        for (int64_t c = 0; c < tensor.width && col < 0; ++c) col = (bits[c] & 0x7f80) == 0x7f80 ? c : -1;
      }
      if (col < 0) continue;
      std::string text = "the first non-finite value of the step is in " + tensor.what + " (row " +
                         std::to_string(row) + ", column " + std::to_string(col) + "), whose inputs were finite";
      if (tensor.weight.empty()) return text;
      const auto source = weights_.sources.find(tensor.weight);
      return text + ": weight " + tensor.weight +
             (source == weights_.sources.end() ? "" : " (" + source->second + ")") +
             " overflows fp32 (values, or products, too large)";
    }
  }
  return "";
}

RopeFrequencyParams rope_params(const ModelArgs& m) {
  RopeFrequencyParams params;
  params.rope_dim = m.qk_rope_head_dim;
  params.rope_theta = m.rope_theta;
  params.yarn = m.yarn_active();
  params.rope_factor = m.rope_factor;
  params.beta_fast = m.beta_fast;
  params.beta_slow = m.beta_slow;
  params.original_seq_len = m.original_seq_len;
  return params;
}

StepReport plan_step_report(const ModelArgs& model, const RunConfig& run, int64_t n_local_heads, int64_t batch,
                            int64_t seq, int64_t start_pos, bool has_mask) {
  StepReport report;
  report.batch = batch;
  report.seq = seq;
  report.start_pos = start_pos;
  report.kv_len = start_pos + seq;
  report.plan = plan_step(model, run, StepShape{batch, seq, start_pos, n_local_heads, has_mask});
  return report;
}

StepReport plan_step_report(const ModelArgs& model, const RunConfig& run, int64_t n_local_heads, const RaggedStep& step,
                            const RaggedIndex& index, bool has_mask) {
  if (is_uniform(index)) {
    return plan_step_report(model, run, n_local_heads, index.sequences(), index.new_tokens[0], index.start_pos[0],
                            has_mask);
  }
  std::vector<StepShape> shapes;
  for (int64_t b = 0; b < index.sequences(); ++b) {
    shapes.push_back(StepShape{1, index.new_tokens[b], index.start_pos[b], n_local_heads, false});
  }
  StepReport report;
  report.batch = index.sequences();
  report.seq = step.total_tokens();
  report.start_pos = -1;  // per sequence
  report.kv_len = step.max_kv_len();
  report.plan = plan_ragged_step(model, run, shapes);
  return report;
}

MlaLayer::MlaLayer(const ModelArgs& model, const HeadShard& shard, LayerWeights weights, const RunConfig& run,
                   Communicator* context_group)
    : model_(model),
      shard_(shard),
      weights_(std::move(weights)),
      run_(run),
      round_bf16_(run.compute_dtype == ComputeDType::BF16),
      rope_table_(make_rope_table(rope_params(model), model.max_seq_len)),
      latent_width_(model.kv_lora_rank + model.qk_rope_head_dim),
      context_group_(context_group != nullptr && context_group->world() > 1 ? context_group : nullptr),
      cache_(latent_cache_shape(model, run.kv_cache, round_bf16_, context_shards())) {
  const LinearPrecision precision = round_bf16_ ? LinearPrecision::BF16 : LinearPrecision::FP32;
  const int64_t heads = shard_.n_local_heads;
  const int64_t q_width = heads * model_.qk_head_dim();
  wq_ = pack(weights_, &LayerWeights::wq, "wq", q_width, model_.dim, precision);
  wq_a_ = pack(weights_, &LayerWeights::wq_a, "wq_a", model_.q_lora_rank, model_.dim, precision);
  wq_b_ = pack(weights_, &LayerWeights::wq_b, "wq_b", q_width, model_.q_lora_rank, precision);
  wkv_a_ = pack(weights_, &LayerWeights::wkv_a, "wkv_a", latent_width_, model_.dim, precision);
  // wkv_b's fp32 copy stays: the absorb formulation's per-head folds read it.
  wkv_b_ = pack(weights_, &LayerWeights::wkv_b, "wkv_b", heads * (model_.qk_nope_head_dim + model_.v_head_dim),
                model_.kv_lora_rank, precision, /*keep_fp32=*/true);
  wo_ = pack(weights_, &LayerWeights::wo, "wo", model_.dim, heads * model_.v_head_dim, precision);
  if (context_group_ != nullptr) gather_group_wkv_b(precision);
}

// The group's ranks are consecutive ranks of the job (MpiCommunicator's groups), so each one's heads
// follow from the job's head split; with uneven heads the first ones hold one more. Naive under the
// split: this rank expands its rows for every head of the group, so it holds the group's wkv_b,
// gathered from the ranks that own the heads (collective), each rank's block padded to the most
// heads a rank of the group holds.
void MlaLayer::gather_group_wkv_b(LinearPrecision precision) {
  const int64_t shards = context_shards();
  const int group_rank = context_group_->rank();
  if (shard_.rank % shards != group_rank) {
    throw std::invalid_argument("MlaLayer: rank " + std::to_string(shard_.rank) + " is rank " +
                                std::to_string(group_rank) + " of its context group of " + std::to_string(shards) +
                                ", but the groups are consecutive ranks of the job");
  }
  group_heads_ = context_group_heads(shard_, shards);
  group_heads_max_ = *std::max_element(group_heads_.begin(), group_heads_.end());
  const int64_t head_values = (model_.qk_nope_head_dim + model_.v_head_dim) * model_.kv_lora_rank;
  const int64_t block = group_heads_max_ * head_values;
  std::vector<float> mine(static_cast<size_t>(block), 0.0f);
  std::copy(weights_.wkv_b.begin(), weights_.wkv_b.end(), mine.begin());
  std::vector<float> gathered(static_cast<size_t>(shards * block));
  context_group_->allgather(mine.data(), block, gathered.data());
  std::vector<float> group;
  for (int64_t r = 0; r < shards; ++r) {
    const auto first = gathered.begin() + r * block;
    group.insert(group.end(), first, first + group_heads_[r] * head_values);
  }
  group_wkv_b_ = PackedLinear(group.data(), group_head_begin(shards) * (model_.qk_nope_head_dim + model_.v_head_dim),
                              model_.kv_lora_rank, precision);
}

int64_t MlaLayer::group_head_begin(int64_t group_rank) const {
  int64_t begin = 0;
  for (int64_t r = 0; r < group_rank; ++r) begin += group_heads_[r];
  return begin;
}

int64_t MlaLayer::weight_bytes() const {
  int64_t bytes = 0;
  for (const PackedLinear* weight : {&wq_, &wq_a_, &wq_b_, &wkv_a_, &wkv_b_, &wo_}) bytes += weight->bytes();
  return bytes + static_cast<int64_t>((weights_.q_norm.size() + weights_.kv_norm.size() + weights_.wkv_b.size()) *
                                      sizeof(float));
}

int64_t MlaLayer::weight_bytes_read(int64_t tokens, Formulation formulation) const {
  int64_t bytes = 0;
  for (const PackedLinear* weight : {&wq_, &wq_a_, &wq_b_, &wkv_a_, &wo_}) bytes += weight->bytes_read(tokens);
  // wkv_b: the absorb folds read its fp32 copy; the naive expansion its prepared form.
  if (formulation == Formulation::Absorb) return bytes + static_cast<int64_t>(weights_.wkv_b.size() * sizeof(float));
  return bytes + wkv_b_.bytes_read(expanded_rows_);
}

StepReport MlaLayer::forward(const float* x, int64_t batch, int64_t seq, int64_t start_pos, const float* mask,
                             int64_t mask_stride, float* y_partial, const uint16_t* x_bf16) {
  if (batch < 1 || batch > model_.max_batch_size || seq < 1 || start_pos < 0 || start_pos + seq > model_.max_seq_len) {
    throw std::invalid_argument("MlaLayer::forward: batch " + std::to_string(batch) + ", positions [" +
                                std::to_string(start_pos) + ", " + std::to_string(start_pos + seq) +
                                ") do not fit the cache (max_batch_size " + std::to_string(model_.max_batch_size) +
                                ", max_seq_len " + std::to_string(model_.max_seq_len) + ")");
  }
  return run_step(x, x_bf16, uniform_step(batch, seq, start_pos), mask, mask_stride, y_partial);
}

StepReport MlaLayer::forward(const float* x, const RaggedStep& step, float* y_partial, const uint16_t* x_bf16) {
  return run_step(x, x_bf16, step, nullptr, 0, y_partial);
}

StepReport MlaLayer::run_step(const float* x, const uint16_t* x_bf16, const RaggedStep& step, const float* mask,
                              int64_t mask_stride, float* y_partial) {
  const auto started = Clock::now();
  step_linear_ms_ = 0.0;
  step_trace_.clear();
  check_ragged_step("MlaLayer::forward", step, model_.max_batch_size, model_.max_seq_len);
  check_step_follows_cache("MlaLayer", step, cache_);
  if (x_bf16 != nullptr && !round_bf16_) {
    throw std::invalid_argument("MlaLayer::forward: x_bf16 given, but run.compute_dtype is fp32");
  }
  if (x == nullptr && x_bf16 == nullptr) throw std::invalid_argument("MlaLayer::forward: no input x");
  const RaggedIndex index = ragged_index(step);
  const bool uniform = is_uniform(index);
  if (mask != nullptr && !uniform) throw std::invalid_argument("MlaLayer::forward: a mask with a ragged step");
  cache_.reserve(step);

  const int64_t tokens = step.total_tokens();
  if (round_bf16_ && x_bf16 == nullptr) {
    // DeepSeek's activations are bf16 from the embedding on.
    uint16_t* bits = sized(x_bf16_, tokens * model_.dim);
    const int64_t dim = model_.dim;
#pragma omp parallel for schedule(static) if (tokens * dim > 65536)
    for (int64_t token = 0; token < tokens; ++token) f32_to_bf16_bits_rne(x + token * dim, bits + token * dim, dim);
    x_bf16 = bits;
  }
  StepReport report = plan_step_report(model_, run_, shard_.n_local_heads, step, index, mask != nullptr);
  AttentionStep attention{index.sequences(), index.new_tokens[0], index.start_pos[0], shard_.n_local_heads, mask,
                          mask_stride,       round_bf16_};
  // Under the split the step's attention goes a run of its tokens at a time, which takes the ragged
  // form (attend_split).
  if (!uniform || context_group_ != nullptr) attention.ragged = &index;
  // On the AMX fast path q and the attention's output stay bf16 numbers from the GEMM that writes
  // them to the GEMM that reads them.
  const bool amx_attention = context_group_ == nullptr && report.plan.path == AttentionPath::Fast &&
                             report.plan.formulation == Formulation::Naive &&
                             attention_fast_amx_applies(naive_head_major_attention_params(model_, attention, nullptr,
                                                                                          nullptr, nullptr, nullptr));
  project_queries(x, x_bf16, tokens, amx_attention);
  step_cache_ = cache_.view(index.slot, step_block_table_);
  project_latent(x, x_bf16, index, amx_attention);
  cache_.hold(step);

  attend(report.plan, attention, amx_attention, report);
  const int64_t o_width = shard_.n_local_heads * model_.v_head_dim;
  trace({"the attention output o", "", amx_attention ? nullptr : o_.data(), amx_attention ? o_bits_.data() : nullptr,
         tokens, o_width, o_width});

  if (amx_attention) {
    run_linear(nullptr, o_width, wo_, tokens, y_partial, model_.dim, o_bits_.data());
  } else {
    run_linear(o_.data(), o_width, wo_, tokens, y_partial, model_.dim);
  }
  report.time_ms = ms_since(started);
  report.linear_ms = step_linear_ms_;
  return report;
}

// docs/design.md step 1-2: q = wq(x) or wq_b(rmsnorm(wq_a(x))), then RoPE on each head's q_pe (in
// project_latent). In bf16 the q latent stays bf16 numbers between its two GEMMs, and so does q
// itself when q_as_bf16 (then in q_bf16_, else in q_).
void MlaLayer::project_queries(const float* x, const uint16_t* x_bf16, int64_t tokens, bool q_as_bf16) {
  const int64_t q_width = shard_.n_local_heads * model_.qk_head_dim();
  float* q = q_as_bf16 ? nullptr : sized(q_, tokens * q_width);
  uint16_t* q_bf16 = q_as_bf16 ? sized(q_bf16_, tokens * q_width) : nullptr;
  if (model_.q_lora_rank == 0) {
    run_linear(x, model_.dim, wq_, tokens, q, q_width, x_bf16, q_bf16);
    return;
  }
  const int64_t rank = model_.q_lora_rank;
  RmsNormParams norm{nullptr, rank, weights_.q_norm.data(), nullptr, rank, tokens, rank, 1e-6f, round_bf16_};
  if (round_bf16_) {
    uint16_t* q_latent = sized(q_latent_bf16_, tokens * rank);
    run_linear(x, model_.dim, wq_a_, tokens, nullptr, rank, x_bf16, q_latent);
    norm.x_bf16 = q_latent;
    norm.y_bf16 = q_latent;
    rmsnorm(norm);
    run_linear(nullptr, rank, wq_b_, tokens, q, q_width, q_latent, q_bf16);
  } else {
    float* q_latent = sized(q_latent_, tokens * rank);
    run_linear(x, model_.dim, wq_a_, tokens, q_latent, rank);
    norm.x = q_latent;
    norm.y = q_latent;
    rmsnorm(norm);
    run_linear(q_latent, rank, wq_b_, tokens, q, q_width);
  }
}

// docs/design.md steps 2-4: kv = wkv_a(x) -> [c_n = rmsnorm(c) | k_pe = rope(k_pe)], appended to the
// cache at each token's sequence and position.
void MlaLayer::project_latent(const float* x, const uint16_t* x_bf16, const RaggedIndex& index, bool q_as_bf16) {
  const int64_t tokens = static_cast<int64_t>(index.token_position.size());
  const int64_t C = model_.kv_lora_rank;
  const int64_t dq = model_.qk_head_dim();
  float* kv = sized(kv_, tokens * latent_width_);
  run_linear(x, model_.dim, wkv_a_, tokens, kv, latent_width_, x_bf16);
  rmsnorm({kv, latent_width_, weights_.kv_norm.data(), kv, latent_width_, tokens, C, 1e-6f, round_bf16_});

  RopeParams rope;
  rope.table = &rope_table_;
  rope.batch = 1;
  rope.seq = tokens;
  rope.positions = index.token_position.data();
  rope.round_to_bf16 = round_bf16_;
  rope.x = kv + C;
  rope.token_stride = latent_width_;
  rope_apply(rope);
  rope.x = q_as_bf16 ? nullptr : q_.data() + model_.qk_nope_head_dim;
  rope.x_bf16 = q_as_bf16 ? q_bf16_.data() + model_.qk_nope_head_dim : nullptr;
  rope.token_stride = shard_.n_local_heads * dq;
  rope.vecs_per_token = shard_.n_local_heads;
  rope.vec_stride = dq;
  rope_apply(rope);

  if (context_group_ != nullptr) {
    append_own_rows(kv, index);
    return;
  }
  PagedLatentAppendParams append;
  append.rows = kv;
  append.row_stride = latent_width_;
  append.tokens = tokens;
  append.sequence = index.token_sequence.data();
  append.position = index.token_position.data();
  append.cache = step_cache_;
  paged_latent_append(append);
}

// Position t goes to the group's rank t % shards, at its row t / shards.
void MlaLayer::append_own_rows(const float* kv, const RaggedIndex& index) {
  const int64_t shards = context_shards();
  const int64_t shard = context_group_->rank();
  own_rows_ = shard_rows_of_step(index, shards, shard);
  PagedLatentAppendParams append;
  append.rows = kv;
  append.row_stride = latent_width_;
  append.tokens = own_rows_.count();
  append.sequence = own_rows_.sequence.data();
  append.position = own_rows_.row.data();
  append.row_index = own_rows_.token.data();
  append.cache = step_cache_;
  paged_latent_append(append);
}

void MlaLayer::attend(const StepPlan& plan, const AttentionStep& step, bool amx_attention, StepReport& report) {
  const int64_t tokens = step.tokens();
  const int64_t heads = shard_.n_local_heads;
  if (context_group_ != nullptr) {
    attend_split(plan, step, report);
    return;
  }
  if (plan.formulation == Formulation::Absorb) {
    absorb_queries(tokens);
    float* o_latent = sized(o_latent_, tokens * heads * model_.kv_lora_rank);
    AttentionParams params = absorb_attention_params(model_, step, q_absorbed_.data(), nullptr, o_latent);
    params.latent_pages = &step_cache_;
    run_attention(plan.path, params, report);
    absorb_outputs(tokens);
    return;
  }
  // On the AMX fast path every operand is bf16 numbers; the expansion's are handed over as they are.
  expand_keys_values(step, amx_attention, {heads, &wkv_b_, 1, 0});
  if (!amx_attention) {
    float* o = sized(o_, tokens * heads * model_.v_head_dim);
    run_attention(plan.path,
                  naive_head_major_attention_params(model_, step, q_.data(), keys_.data(), values_.data(), o), report);
    return;
  }
  AttentionParams params = naive_head_major_attention_params(model_, step, nullptr, nullptr, nullptr, nullptr);
  params.q_bf16 = q_bf16_.data();
  params.key_bf16 = key_bf16_.data();
  params.value_bf16 = value_bf16_.data();
  params.out_bf16 = sized(o_bits_, tokens * heads * model_.v_head_dim);
  run_attention(plan.path, params, report);
}

// docs/design.md, The latent cache split across ranks: every rank of the group computes, for the
// queries of every head of the group, the attention over its own rows with the log-sum-exp of the
// scores; the heads' owners merge what the group sends them into the exact softmax over all the
// positions. Then Wv (absorb) and wo as ever.
//
// The step goes a run of its tokens at a time (context_run_tokens), so that the gathered queries and
// the exchanged parts stay within run.score_chunk_bytes however long a prefill is. The exchanged
// blocks are sized for the group's most heads (uneven heads): a rank with fewer reads the first
// rows of each block.
void MlaLayer::attend_split(const StepPlan& plan, const AttentionStep& step, StepReport& report) {
  const int64_t tokens = step.tokens();
  const int64_t heads = shard_.n_local_heads;
  const int64_t shards = context_shards();
  const int64_t shard = context_group_->rank();
  const bool absorb = plan.formulation == Formulation::Absorb;
  const int64_t value_dim = absorb ? model_.kv_lora_rank : model_.v_head_dim;
  if (absorb) {
    absorb_queries(tokens);
  } else {
    expand_keys_values(step, false, {group_head_begin(shards), &group_wkv_b_, shards, shard});
  }
  SplitRows rows;
  for (int64_t b = 0; b < step.sequences(); ++b)
    rows.held = std::max(rows.held, shard_rows(step.kv_len(b), shards, shard));
  float* merged = absorb ? sized(o_latent_, tokens * heads * value_dim) : sized(o_, tokens * heads * value_dim);
  const int64_t query_width = absorb ? latent_width_ : model_.qk_head_dim();
  const int64_t run_tokens =
      context_run_tokens(shards, group_heads_max_, query_width, value_dim, run_.score_chunk_bytes);
  for (const TokenRun& run : token_runs(*step.ragged, run_tokens)) {
    AttentionStep run_step = step;
    run_step.ragged = &run.index;
    rows.first_sequence = run.first_sequence;
    const int64_t block_rows = run.tokens * group_heads_max_;
    const int64_t part = split_partials(plan, run_step, run.first_token, rows, report);
    float* received = sized(received_out_, shards * part);
    float* received_lse = sized(received_lse_, shards * block_rows);
    context_group_->alltoall(partial_out_.data(), part, received);
    context_group_->alltoall(partial_lse_.data(), block_rows, received_lse);
    report.context_bytes +=
        (shards - 1) * (block_rows * query_width + part + block_rows) * static_cast<int64_t>(sizeof(float));
    AttentionMergeParams merge;
    merge.out = received;
    merge.lse = received_lse;
    merge.parts = shards;
    merge.rows = run.tokens * heads;
    merge.part_rows = block_rows;
    merge.dim = value_dim;
    merge.merged = merged + run.first_token * heads * value_dim;
    merge.round_to_bf16 = round_bf16_;
    attention_merge(merge);
  }
  if (absorb) absorb_outputs(tokens);
}

// A run of the step's tokens (run_step, from packed token first_token): the group's queries of
// those tokens against this rank's rows. Absorb: its latent rows. Naive: keys and values expanded
// for every head of the group (with the group's wkv_b), head-major: the heads of the group's rank r
// start at group_head_begin(r). Every rank's queries, outputs and log-sum-exps travel in blocks
// sized for the group's most heads (group_heads_max_), a rank's own heads first in each.
int64_t MlaLayer::split_partials(const StepPlan& plan, const AttentionStep& run_step, int64_t first_token,
                                 const SplitRows& rows, StepReport& report) {
  const int64_t tokens = run_step.tokens();
  const int64_t heads = shard_.n_local_heads;
  const int64_t block_heads = group_heads_max_;
  const int64_t shards = context_shards();
  const int64_t shard = context_group_->rank();
  const bool absorb = plan.formulation == Formulation::Absorb;
  const int64_t query_width = absorb ? latent_width_ : model_.qk_head_dim();
  const int64_t value_dim = absorb ? model_.kv_lora_rank : model_.v_head_dim;
  const int64_t query_count = tokens * block_heads * query_width;
  const int64_t part = tokens * block_heads * value_dim;
  const float* own_queries = (absorb ? q_absorbed_.data() : q_.data()) + first_token * heads * query_width;
  if (heads < block_heads) {  // [tokens, heads, width] into [tokens, block_heads, width]
    float* padded = sized(padded_queries_, query_count);
    for (int64_t t = 0; t < tokens; ++t) {
      std::copy(own_queries + t * heads * query_width, own_queries + (t + 1) * heads * query_width,
                padded + t * block_heads * query_width);
    }
    own_queries = padded;
  }
  float* queries = sized(group_queries_, shards * query_count);
  context_group_->allgather(own_queries, query_count, queries);
  float* partial = sized(partial_out_, shards * part);
  float* partial_lse = sized(partial_lse_, shards * tokens * block_heads);
  // The run's sequences are the step's from rows.first_sequence on: their rows in the cache's view
  // and in the expansion start there.
  PagedLatentView run_cache = step_cache_;
  run_cache.block_table += rows.first_sequence * run_cache.block_table_stride;
  const int64_t group_heads = group_head_begin(shards);
  for (int64_t source = 0; source < shards; ++source) {  // the heads of the group's rank `source`
    AttentionStep source_step = run_step;
    source_step.n_heads = group_heads_[source];
    const float* source_queries = queries + source * query_count;
    float* out = partial + source * part;
    AttentionParams params;
    if (absorb) {
      params = absorb_attention_params(model_, source_step, source_queries, nullptr, out);
      params.latent_pages = &run_cache;
    } else {
      params =
          naive_head_major_attention_params(model_, source_step, source_queries, keys_.data(), values_.data(), out);
      // The expansion holds every head of the group for each sequence of the step: this source's
      // heads start group_head_begin in, and a sequence's block spans all of them. (No rows here
      // yet: nothing is read.)
      const int64_t dq = model_.qk_head_dim(), dv = model_.v_head_dim;
      params.key_batch_stride = group_heads * rows.held * dq;
      params.key_head_stride = rows.held * dq;
      params.value_batch_stride = group_heads * rows.held * dv;
      params.value_head_stride = rows.held * dv;
      if (rows.held > 0) {
        params.keys = keys_.data() + rows.first_sequence * params.key_batch_stride +
                      group_head_begin(source) * params.key_head_stride;
        params.values = values_.data() + rows.first_sequence * params.value_batch_stride +
                        group_head_begin(source) * params.value_head_stride;
      }
    }
    params.q_token_stride = block_heads * query_width;  // the gathered blocks' layout
    params.kv_shards = shards;
    params.kv_shard = shard;
    params.kv_len = rows.held;
    params.lse = partial_lse + source * tokens * block_heads;
    run_attention(plan.path, params, report);
  }
  return part;
}

void MlaLayer::run_attention(AttentionPath path, const AttentionParams& params, StepReport& report) {
  const int threads = omp_get_max_threads();
  const auto started = Clock::now();
  if (path == AttentionPath::Fast) {
    attention_fast(params);
    report.attention_workspace_bytes =
        std::max(report.attention_workspace_bytes, attention_fast_workspace_bytes(params, threads));
  } else {
    const int64_t chunk = attention_standard_query_chunk(params, run_.score_chunk_bytes, threads);
    attention_standard(params, chunk);
    report.attention_workspace_bytes =
        std::max(report.attention_workspace_bytes, attention_standard_workspace_bytes(params, chunk, threads));
  }
  report.attention_ms += ms_since(started);  // several calls when the cache is split over a group
}

// docs/design.md step 5, absorb: q_lat[h] = Wk[h]^T q_nope[h] (one GEMM per head), next to q_pe[h].
void MlaLayer::absorb_queries(int64_t tokens) {
  const int64_t heads = shard_.n_local_heads;
  const int64_t C = model_.kv_lora_rank;
  const int64_t dn = model_.qk_nope_head_dim;
  const int64_t dq = model_.qk_head_dim();
  const int64_t head_rows = dn + model_.v_head_dim;
  float* q_absorbed = sized(q_absorbed_, tokens * heads * latent_width_);
#pragma omp parallel for schedule(static) if (heads > 1)
  for (int64_t h = 0; h < heads; ++h) {
    GemmParams g;
    g.m = tokens;
    g.n = C;
    g.k = dn;
    g.a = q_.data() + h * dq;
    g.lda = heads * dq;
    g.b = weights_.wkv_b.data() + h * head_rows * C;  // Wk[h]: [dn, C]
    g.ldb = C;
    g.c = q_absorbed + h * latent_width_;
    g.ldc = heads * latent_width_;
    gemm(g);
    for (int64_t t = 0; t < tokens; ++t) {
      float* row = q_absorbed + (t * heads + h) * latent_width_;
      if (round_bf16_) round_to_bf16_inplace(row, C);
      std::memcpy(row + C, q_.data() + t * heads * dq + h * dq + dn, model_.qk_rope_head_dim * sizeof(float));
    }
  }
}

// docs/design.md step 8, absorb: o[h] = Wv[h] o_lat[h].
void MlaLayer::absorb_outputs(int64_t tokens) {
  const int64_t heads = shard_.n_local_heads;
  const int64_t C = model_.kv_lora_rank;
  const int64_t dv = model_.v_head_dim;
  const int64_t head_rows = model_.qk_nope_head_dim + dv;
  float* o = sized(o_, tokens * heads * dv);
#pragma omp parallel for schedule(static) if (heads > 1)
  for (int64_t h = 0; h < heads; ++h) {
    GemmParams g;
    g.transpose_b = true;
    g.m = tokens;
    g.n = dv;
    g.k = C;
    g.a = o_latent_.data() + h * C;
    g.lda = heads * C;
    g.b = weights_.wkv_b.data() + (h * head_rows + model_.qk_nope_head_dim) * C;  // Wv[h]: [dv, C]
    g.ldb = C;
    g.c = o + h * dv;
    g.ldc = heads * dv;
    gemm(g);
    if (round_bf16_) {
      for (int64_t t = 0; t < tokens; ++t) round_to_bf16_inplace(o + t * heads * dv + h * dv, dv);
    }
  }
}

// docs/design.md step 5, naive, from the one latent cache: [k_nope | v] = wkv_b c_n for every cached
// position, then each head's keys [k_nope | k_pe] and values gathered head-major
// (naive_head_major_attention_params says why), each sequence's positions padded to the longest.
// DeepSeek keeps a second, per-head cache for this; recomputing it keeps one cache for both
// formulations and lets chunked prefill use naive too. as_bf16 (bf16 only): the keys and values as
// bf16 numbers, in key_bf16_ and value_bf16_.
void MlaLayer::expand_keys_values(const AttentionStep& step, bool as_bf16, const Expansion& expansion) {
  ExpansionRows rows;
  rows.heads = expansion.heads;
  for (int64_t b = 0; b < step.sequences(); ++b) {
    const int64_t kv_len = shard_rows(step.kv_len(b), expansion.shards, expansion.shard);
    rows.first_row.push_back(rows.rows);
    rows.kv_len.push_back(kv_len);
    rows.row_sequence.insert(rows.row_sequence.end(), static_cast<size_t>(kv_len), b);
    rows.rows += kv_len;
    rows.padded_len = std::max(rows.padded_len, kv_len);
  }
  expanded_rows_ = rows.rows;
  const int64_t kv_width = rows.heads * (model_.qk_nope_head_dim + model_.v_head_dim);
  // In bf16 the expansion stays bf16 numbers, widened as they are scattered to the keys and values
  // (one pass over them instead of a widening pass and a copy).
  float* expanded = round_bf16_ ? nullptr : sized(kv_expanded_, rows.rows * kv_width);
  uint16_t* expanded_bf16 = round_bf16_ ? sized(kv_expanded_bf16_, rows.rows * kv_width) : nullptr;
  gather_latent_rows(rows);
  if (round_bf16_) {
    run_linear(nullptr, model_.kv_lora_rank, *expansion.wkv_b, rows.rows, expanded, kv_width, latent_bf16_.data(),
               expanded_bf16);
    scatter_expansion_bf16(rows, as_bf16);
  } else {
    run_linear(latent_f32_.data(), latent_width_, *expansion.wkv_b, rows.rows, expanded, kv_width);
    scatter_expansion_f32(rows);
  }
}

// One GEMM for every sequence: their cache rows gathered into one dense fp32 operand [rows, C + dr]
// (dequantized from a bf16 or fp8 cache), and in bf16 mode its c_n as bf16 numbers, which is what
// the GEMM would convert them to anyway. Per-sequence GEMMs of kv_len rows ran at half the rate on
// the prefill shapes.
void MlaLayer::gather_latent_rows(const ExpansionRows& rows) {
  const int64_t C = model_.kv_lora_rank;
  float* dense = sized(latent_f32_, rows.rows * latent_width_);
  uint16_t* dense_bf16 = round_bf16_ ? sized(latent_bf16_, rows.rows * C) : nullptr;
  const PagedLatentView& cache = step_cache_;
#pragma omp parallel for schedule(static) if (rows.rows * latent_width_ > 65536)
  for (int64_t row = 0; row < rows.rows; ++row) {
    const int64_t b = rows.row_sequence[row];
    const int64_t t = row - rows.first_row[b];
    float* out = dense + row * latent_width_;
    const float* cached = paged_latent_rows(cache, b, t / cache.page_size, t % cache.page_size, 1, out);
    if (cached != out) std::memcpy(out, cached, static_cast<size_t>(latent_width_) * sizeof(float));
    if (dense_bf16 != nullptr) bf16_values_to_bits(out, dense_bf16 + row * C, C);
  }
}

// bf16 mode: each head's [k_nope | v] from the bf16 expansion, k_pe from the gathered cache row;
// kept as bf16 numbers (as_bf16) or widened into the fp32 keys and values.
void MlaLayer::scatter_expansion_bf16(const ExpansionRows& rows, bool as_bf16) {
  const int64_t heads = rows.heads;
  const int64_t dn = model_.qk_nope_head_dim, dv = model_.v_head_dim, dr = model_.qk_rope_head_dim;
  const int64_t dq = model_.qk_head_dim();
  const int64_t kv_width = heads * (dn + dv);
  const int64_t padded = rows.padded_len;
  const int64_t sequences = static_cast<int64_t>(rows.kv_len.size());
  const uint16_t* expanded_bf16 = kv_expanded_bf16_.data();
  float* keys = as_bf16 ? nullptr : sized(keys_, sequences * heads * padded * dq);
  float* values = as_bf16 ? nullptr : sized(values_, sequences * heads * padded * dv);
  uint16_t* key_bf16 = as_bf16 ? sized(key_bf16_, sequences * heads * padded * dq) : nullptr;
  uint16_t* value_bf16 = as_bf16 ? sized(value_bf16_, sequences * heads * padded * dv) : nullptr;
#pragma omp parallel for schedule(static) if (rows.rows * kv_width > 65536)
  for (int64_t r = 0; r < rows.rows; ++r) {
    const int64_t b = rows.row_sequence[r];
    const int64_t t = r - rows.first_row[b];
    const uint16_t* row = expanded_bf16 + r * kv_width;
    const float* k_pe = latent_f32_.data() + r * latent_width_ + model_.kv_lora_rank;
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t head_row = (b * heads + h) * padded + t;
      if (as_bf16) {
        uint16_t* key = key_bf16 + head_row * dq;
        std::memcpy(key, row + h * (dn + dv), static_cast<size_t>(dn) * sizeof(uint16_t));
        bf16_values_to_bits(k_pe, key + dn, dr);
        std::memcpy(value_bf16 + head_row * dv, row + h * (dn + dv) + dn, static_cast<size_t>(dv) * sizeof(uint16_t));
        continue;
      }
      float* key = keys + head_row * dq;
      bf16_bits_to_f32_copy(row + h * (dn + dv), key, dn);
      std::memcpy(key + dn, k_pe, static_cast<size_t>(dr) * sizeof(float));
      bf16_bits_to_f32_copy(row + h * (dn + dv) + dn, values + head_row * dv, dv);
    }
  }
}

// fp32 mode: position t of head h is [k_nope | v] at expanded[row of t, h], with the one k_pe of
// the gathered cache row; three strided copies per sequence lay them out head-major.
void MlaLayer::scatter_expansion_f32(const ExpansionRows& rows) {
  const int64_t heads = rows.heads;
  const int64_t dn = model_.qk_nope_head_dim, dv = model_.v_head_dim;
  const int64_t dq = model_.qk_head_dim();
  const int64_t kv_width = heads * (dn + dv);
  const int64_t padded = rows.padded_len;
  const int64_t sequences = static_cast<int64_t>(rows.kv_len.size());
  float* keys = sized(keys_, sequences * heads * padded * dq);
  float* values = sized(values_, sequences * heads * padded * dv);
  for (int64_t b = 0; b < sequences; ++b) {
    const float* latent = latent_f32_.data() + rows.first_row[b] * latent_width_;
    const float* expanded_b = kv_expanded_.data() + rows.first_row[b] * kv_width;
    float* keys_b = keys + b * heads * padded * dq;
    StridedCopyParams part;
    part.outer = rows.kv_len[b];
    part.inner = heads;
    part.dst_outer_stride = dq;
    part.dst_inner_stride = padded * dq;
    part.src = expanded_b;  // k_nope
    part.src_outer_stride = kv_width;
    part.src_inner_stride = dn + dv;
    part.dst = keys_b;
    part.width = dn;
    strided_copy(part);
    part.src = latent + model_.kv_lora_rank;  // k_pe, the same for every head
    part.src_outer_stride = latent_width_;
    part.src_inner_stride = 0;
    part.dst = keys_b + dn;
    part.width = model_.qk_rope_head_dim;
    strided_copy(part);
    part.src = expanded_b + dn;  // v
    part.src_outer_stride = kv_width;
    part.src_inner_stride = dn + dv;
    part.dst = values + b * heads * padded * dv;
    part.dst_outer_stride = dv;
    part.dst_inner_stride = padded * dv;
    part.width = dv;
    strided_copy(part);
  }
}

}  // namespace mla
