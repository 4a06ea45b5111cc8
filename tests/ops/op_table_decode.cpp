// The op table's rows for decode attention over a paged cache and for the merge of partial
// attention (tests/ops/op_table.h): inputs, the CPU twins, the cases.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>

#include "kernels/cpu/attention_merge.h"
#include "kernels/cpu/bf16.h"
#include "tests/ops/op_table.h"

namespace mla::test {

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

const char* dtype_name(LatentDType dtype) {
  return dtype == LatentDType::F32 ? "f32" : dtype == LatentDType::BF16 ? "bf16" : "fp8";
}

OpRun run_cpu(const DecodeAttentionCase& c, uint32_t seed, int reps) {
  DecodeAttentionData d = make_decode_attention(c, seed);
  d.params.latent_pages = &d.cache;  // d's own view, wherever the return left it
  const double median_ms = time_on_cpu(
      reps, [] {}, [&] { attention_fast(d.params); });
  OpRun run = decode_attention_output(d.out, d.lse);
  run.median_ms = median_ms;
  return run;
}

OpRun run_cpu(const AttentionMergeCase& c, int reps) {
  const AttentionMergeInputs in = attention_merge_inputs(c);
  std::vector<float> merged(static_cast<size_t>(c.rows * c.dim), kNaN), merged_lse(static_cast<size_t>(c.rows), kNaN);
  const AttentionMergeParams p{in.out.data(), in.lse.data(),     c.parts, c.rows,     c.dim,
                               merged.data(), merged_lse.data(), c.bf16,  c.part_rows};
  const double median_ms = time_on_cpu(
      reps, [] {}, [&] { attention_merge(p); });
  OpRun run = decode_attention_output(merged, merged_lse);
  run.median_ms = median_ms;
  return run;
}

template <typename Case, typename... Extra>
std::function<OpRun(OpBackend, int)> runner_of(const Case& c, Extra... extra) {
  return [c, extra...](OpBackend backend, int reps) {
#if MLA_HAVE_CUDA
    if (backend == OpBackend::Cuda) return run_cuda(c, extra..., reps);
#endif
    (void)backend;
    return run_cpu(c, extra..., reps);
  };
}

std::string list_text(const std::vector<int64_t>& values) {
  std::string text;
  for (const int64_t value : values) text += (text.empty() ? "" : ",") + std::to_string(value);
  return text;
}

}  // namespace

DecodeAttentionData make_decode_attention(const DecodeAttentionCase& c, uint32_t seed) {
  DecodeAttentionData d;
  const int64_t sequences = static_cast<int64_t>(c.start_pos.size());
  const int64_t width = c.latent_dim + c.rope_dim;
  // This shard's rows of each sequence, written through a shuffled block table.
  PagedLatentCase rows_case{c.dtype, c.latent_dim, c.rope_dim, c.page_size, {}};
  for (int64_t b = 0; b < sequences; ++b) {
    rows_case.lengths.push_back(shard_rows(c.start_pos[b] + c.new_tokens[b], c.shards, c.shard));
  }
  PagedLatentInputs in = paged_latent_inputs(rows_case);
  in.rows = random_floats(static_cast<int64_t>(in.sequence.size()) * width, seed);
  if (c.bf16) round_to_bf16_inplace(in.rows.data(), static_cast<int64_t>(in.rows.size()));
  d.pool.assign(static_cast<size_t>(in.pool_bytes), 0);
  d.block_table = in.block_table;
  d.cache = PagedLatentView{d.pool.data(),        c.dtype, c.latent_dim, c.rope_dim, c.page_size, d.block_table.data(),
                            in.pages_per_sequence};
  paged_latent_append({in.rows.data(), width, static_cast<int64_t>(in.sequence.size()), in.sequence.data(),
                       in.position.data(), d.cache});

  d.lists.resize(static_cast<size_t>(3 * sequences));
  AttentionParams& p = d.params;
  for (int64_t b = 0; b < sequences; ++b) {
    d.lists[b] = c.start_pos[b];
    d.lists[sequences + b] = c.new_tokens[b];
    d.lists[2 * sequences + b] = d.tokens;
    d.tokens += c.new_tokens[b];
    p.seq = std::max(p.seq, c.new_tokens[b]);
    p.kv_len = std::max(p.kv_len, rows_case.lengths[b]);
  }
  d.q = random_floats(d.tokens * c.heads * width, seed + 1);
  if (c.bf16) round_to_bf16_inplace(d.q.data(), static_cast<int64_t>(d.q.size()));
  d.out.assign(static_cast<size_t>(d.tokens * c.heads * c.latent_dim), kNaN);
  d.lse.assign(static_cast<size_t>(d.tokens * c.heads), kNaN);
  p.q = d.q.data();
  p.q_head_stride = width;
  p.q_token_stride = c.heads * width;
  p.key_pos_stride = p.value_pos_stride = width;
  p.out = d.out.data();
  p.out_head_stride = c.latent_dim;
  p.out_token_stride = c.heads * c.latent_dim;
  p.lse = d.lse.data();
  p.batch = sequences;
  p.n_heads = c.heads;
  p.seq_start_pos = d.lists.data();
  p.seq_new_tokens = d.lists.data() + sequences;
  p.seq_token_offset = d.lists.data() + 2 * sequences;
  p.score_dim = width;
  p.score_split = c.latent_dim;
  p.value_dim = c.latent_dim;
  p.scale = 2.0f / std::sqrt(static_cast<float>(width));
  p.round_to_bf16 = c.bf16;
  p.kv_shards = c.shards;
  p.kv_shard = c.shard;
  return d;
}

OpRun decode_attention_output(const std::vector<float>& out, const std::vector<float>& lse) {
  OpRun run;
  run.output = out;
  std::vector<float> no_key;
  for (const float value : lse) {
    const bool none = value == -std::numeric_limits<float>::infinity();
    run.output.push_back(none ? 0.0f : value);
    no_key.push_back(none ? 1.0f : 0.0f);
  }
  run.output.insert(run.output.end(), no_key.begin(), no_key.end());
  run.parts = {out.size(), lse.size(), lse.size()};
  return run;
}

AttentionMergeInputs attention_merge_inputs(const AttentionMergeCase& c) {
  AttentionMergeInputs in;
  const int64_t part_rows = c.part_rows > 0 ? c.part_rows : c.rows;
  in.out = random_floats(c.parts * part_rows * c.dim, 31);
  in.lse = random_floats(c.parts * part_rows, 32, -4.0f, 12.0f);
  for (int64_t part = 0; part < c.parts; ++part) {  // the padding between parts is never read
    std::fill(in.lse.begin() + part * part_rows + c.rows, in.lse.begin() + (part + 1) * part_rows, kNaN);
    std::fill(in.out.begin() + (part * part_rows + c.rows) * c.dim, in.out.begin() + (part + 1) * part_rows * c.dim,
              kNaN);
  }
  for (int64_t row = 0; row < c.rows; ++row) {
    // Row 0 sees no key in any part; every third row none in part 0 (its output there is garbage).
    if (row == 0) {
      for (int64_t part = 0; part < c.parts; ++part) in.lse[part * part_rows] = -std::numeric_limits<float>::infinity();
    } else if (row % 3 == 0) {
      in.lse[row] = -std::numeric_limits<float>::infinity();
      std::fill(in.out.begin() + row * c.dim, in.out.begin() + (row + 1) * c.dim, kNaN);
    }
  }
  return in;
}

void add_decode_attention_cases(std::vector<OpCase>& table) {
  const std::vector<OpBackend> cuda_only = {OpBackend::Cuda};
  const LatentDType f32 = LatentDType::F32, bf16 = LatentDType::BF16, fp8 = LatentDType::FP8;
  const std::vector<DecodeAttentionCase> cases = {
      // DeepSeek-V3's latent rows and 16 heads: long decodes split over many blocks, the same in one
      // block per sequence, bf16 rows with a few tokens each (speculative decoding) in splits of one
      // key tile, fp8 rows at 4096.
      {f32, 512, 64, 64, 16, {1000, 37, 2999}, {1, 1, 1}},
      {f32, 512, 64, 64, 16, {1000, 37, 2999}, {1, 1, 1}, 1, 0, false, -1},
      {bf16, 512, 64, 64, 16, {300, 5, 64}, {2, 4, 1}, 1, 0, true, 32},
      {fp8, 512, 64, 64, 16, {4095, 700}, {1, 1}, 1, 0, true},
      {fp8, 512, 64, 64, 16, {4095, 700}, {1, 1}},
      // Odd widths: a short fp8 block (C = 144), 5 heads (a partial block of rows), pages of 5.
      {fp8, 144, 16, 5, 5, {0, 3, 130}, {1, 3, 2}},
      {f32, 61, 16, 7, 40, {90, 12}, {2, 1}, 1, 0, false, 64},
      // One shard of a context-parallel group, a sequence with no key on it (lse -inf).
      {f32, 61, 16, 4, 11, {0, 1, 50}, {1, 2, 1}, 2, 1},
      {bf16, 61, 16, 8, 11, {0, 9, 333}, {1, 3, 1}, 4, 3, true},
      // Prefill chunks on a shard (the GPU's split cache attends every step with this kernel):
      // many query rows a sequence, a first chunk beside a chunk with history, forced splits.
      {f32, 512, 64, 16, 4, {0, 100}, {70, 33}, 2, 0, false, 32},
      {bf16, 144, 16, 5, 5, {0, 57}, {40, 9}, 4, 1, true},
      // Value widths of 3 and 4 columns a thread.
      {f32, 700, 32, 16, 3, {200, 77}, {1, 2}},
      {bf16, 800, 16, 16, 2, {129}, {1}, 1, 0, true},
  };
  uint32_t seed = 500;
  for (const DecodeAttentionCase& c : cases) {
    seed += 10;
    const std::string shape =
        std::string(dtype_name(c.dtype)) + " rows C " + std::to_string(c.latent_dim) + " dr " +
        std::to_string(c.rope_dim) + " page " + std::to_string(c.page_size) + " heads " + std::to_string(c.heads) +
        " start " + list_text(c.start_pos) + " new " + list_text(c.new_tokens) +
        (c.shards > 1 ? " shard " + std::to_string(c.shard) + "/" + std::to_string(c.shards) : "") +
        (c.keys_per_split == -1 ? " one split"
         : c.keys_per_split > 0 ? " splits of " + std::to_string(c.keys_per_split)
                                : "") +
        (c.bf16 ? " bf16" : "");
    table.push_back({"attention_decode", shape, cuda_only, c.bf16 ? 1e-2 : 1e-5, runner_of(c, seed)});
  }
  for (const AttentionMergeCase& c : {AttentionMergeCase{5, 40, 512, false}, AttentionMergeCase{2, 7, 33, false},
                                      AttentionMergeCase{64, 16, 512, true}, AttentionMergeCase{1, 3, 10, false},
                                      AttentionMergeCase{3, 10, 24, false, 14}}) {
    const std::string shape = std::to_string(c.parts) + " parts rows " + std::to_string(c.rows) + " dim " +
                              std::to_string(c.dim) + (c.bf16 ? " bf16" : "") +
                              (c.part_rows > 0 ? " parts " + std::to_string(c.part_rows) + " rows apart" : "");
    table.push_back({"attention_merge", shape, cuda_only, c.bf16 ? 1e-2 : 1e-6, runner_of(c)});
  }
}

}  // namespace mla::test
