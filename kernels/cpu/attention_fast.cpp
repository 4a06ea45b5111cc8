#include <omp.h>

#include <algorithm>
#include <array>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/aligned_vector.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/attention_fast_amx.h"
#include "kernels/cpu/softmax.h"
#include "kernels/cpu/vector_ops.h"

namespace mla {

namespace {

// The fused kernel works on blocks of up to kRowBlock query rows that read the same keys and
// values: rows of one head (naive, prefill) or of every head at one position (absorb, where the
// latent cache is every head's keys). Each key and value is then loaded once per block instead
// of once per row; reading them is what bounds the kernel. A block's scores are a thread-local
// tile of kRowBlock x kv_len floats, never a score matrix.
constexpr int64_t kRowBlock = 4;

// Which query rows a block holds: (head, position) pairs of one sequence.
struct RowBlock {
  int64_t b = 0;
  AttentionSequence sequence;
  int64_t rows = 0;  // 1 .. kRowBlock real rows; the rest repeat the last one and are not written
  int64_t head[kRowBlock] = {};
  int64_t pos[kRowBlock] = {};
};

// Per thread: the block's scores (and its rope part's, in split bf16), output accumulators, and
// the rows of a dequantized run of a paged cache.
struct BlockWorkspace {
  // For `rows` query rows at once: kRowBlock, or a group of heads.
  BlockWorkspace(const AttentionParams& p, int64_t rows)
      : scores(static_cast<size_t>(rows * p.kv_len)),
        tail_scores(p.round_to_bf16 && p.score_split > 0 ? static_cast<size_t>(rows * p.kv_len) : 0),
        accumulators(static_cast<size_t>(rows * p.value_dim)),
        run_rows(static_cast<size_t>(kv_run_scratch_floats(p, kFastKvRunRows))) {}

  AlignedVector<float> scores;        // [rows, kv_len]
  AlignedVector<float> tail_scores;   // [rows, kv_len], split bf16 scores only
  AlignedVector<float> accumulators;  // [rows, value_dim]
  AlignedVector<float> run_rows;      // [kFastKvRunRows, C + dr], quantized paged caches only
};

// One finished output row: the accumulator, rounded to bf16 in bf16 mode.
void store_output(const float* accumulator, float* out, int64_t value_dim, bool round_to_bf16) {
  if (round_to_bf16) {
    round_to_bf16_copy(accumulator, out, value_dim);
  } else {
    std::copy(accumulator, accumulator + value_dim, out);
  }
}

bool shares_keys_across_heads(const AttentionParams& p) { return p.key_head_stride == 0 && p.value_head_stride == 0; }

// Rows of one sequence in block order. Shared keys: position-major, so a block's heads see the
// same positions (one visible length). Per-head keys: head-major, consecutive positions of one head.
int64_t blocks_per_sequence(const AttentionParams& p, int64_t new_tokens) {
  const int64_t rows = p.n_heads * new_tokens;
  return shares_keys_across_heads(p) ? (rows + kRowBlock - 1) / kRowBlock
                                     : p.n_heads * ((new_tokens + kRowBlock - 1) / kRowBlock);
}

RowBlock make_block(const AttentionParams& p, int64_t b, int64_t block) {
  RowBlock out;
  out.b = b;
  out.sequence = attention_sequence(p, b);
  const int64_t new_tokens = out.sequence.new_tokens;
  if (shares_keys_across_heads(p)) {
    const int64_t first = block * kRowBlock;
    out.rows = std::min(kRowBlock, p.n_heads * new_tokens - first);
    for (int64_t r = 0; r < kRowBlock; ++r) {
      const int64_t row = first + std::min(r, out.rows - 1);
      out.pos[r] = row / p.n_heads;
      out.head[r] = row % p.n_heads;
    }
  } else {
    const int64_t blocks_per_head = (new_tokens + kRowBlock - 1) / kRowBlock;
    const int64_t first = (block % blocks_per_head) * kRowBlock;
    out.rows = std::min(kRowBlock, new_tokens - first);
    for (int64_t r = 0; r < kRowBlock; ++r) {
      out.head[r] = block / blocks_per_head;
      out.pos[r] = first + std::min(r, out.rows - 1);
    }
  }
  return out;
}

// The step's blocks as (sequence, block) pairs: sequences of a ragged step have different numbers.
std::vector<std::pair<int64_t, int64_t>> step_blocks(const AttentionParams& p) {
  std::vector<std::pair<int64_t, int64_t>> blocks;
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t count = blocks_per_sequence(p, attention_sequence(p, b).new_tokens);
    for (int64_t block = 0; block < count; ++block) blocks.emplace_back(b, block);
  }
  return blocks;
}

// scores[r * kv_len + first + t] = dot(query r, key t) over [offset, offset + dim), t < count,
// key t at keys + t * key_pos_stride.
void block_dots(const AttentionParams& p, const float* const query[kRowBlock], const float* keys, int64_t first,
                int64_t count, int64_t offset, int64_t dim, float* scores) {
  const float* rows[kRowBlock];
  for (int64_t r = 0; r < kRowBlock; ++r) rows[r] = query[r] + offset;
  float* out = scores + first;
  int64_t t = 0;
  for (; t + 4 <= count; t += 4) {
    const float* key[4] = {keys + t * p.key_pos_stride + offset, keys + (t + 1) * p.key_pos_stride + offset,
                           keys + (t + 2) * p.key_pos_stride + offset, keys + (t + 3) * p.key_pos_stride + offset};
    float dots[16];
    dot_4x4_f32(rows, key, dim, dots);
    for (int64_t r = 0; r < kRowBlock; ++r) {
      for (int64_t j = 0; j < 4; ++j) out[r * p.kv_len + t + j] = dots[r * 4 + j];
    }
  }
  for (; t < count; ++t) {
    float dots[4];
    dot4_f32(keys + t * p.key_pos_stride + offset, rows, dim, dots);
    for (int64_t r = 0; r < kRowBlock; ++r) out[r * p.kv_len + t] = dots[r];
  }
}

// accumulator[r] += sum over t < count of probs[r * kv_len + first + t] * value t.
void block_values(const AttentionParams& p, const float* scores, const float* values, int64_t first, int64_t count,
                  float* const accumulator[kRowBlock]) {
  const float* probs_at = scores + first;
  int64_t t = 0;
  for (; t + 4 <= count; t += 4) {
    const float* value[4] = {values + t * p.value_pos_stride, values + (t + 1) * p.value_pos_stride,
                             values + (t + 2) * p.value_pos_stride, values + (t + 3) * p.value_pos_stride};
    float probs[16];
    for (int64_t r = 0; r < kRowBlock; ++r) {
      for (int64_t j = 0; j < 4; ++j) probs[r * 4 + j] = probs_at[r * p.kv_len + t + j];
    }
    axpy_4x4_f32(probs, value, accumulator, p.value_dim);
  }
  for (; t < count; ++t) {
    for (int64_t r = 0; r < kRowBlock; ++r) {
      const float prob = probs_at[r * p.kv_len + t];
      if (prob != 0.0f) axpy_f32(prob, values + t * p.value_pos_stride, accumulator[r], p.value_dim);
    }
  }
}

float* output_row(const AttentionParams& p, const RowBlock& block, int64_t r) {
  return p.out + (block.sequence.token_offset + block.pos[r]) * p.out_token_stride + block.head[r] * p.out_head_stride;
}

void attend_block(const AttentionParams& p, const RowBlock& block, BlockWorkspace& work) {
  const bool split = p.round_to_bf16 && p.score_split > 0;
  const int64_t main_dim = split ? p.score_split : p.score_dim;
  const float* query[kRowBlock];
  int64_t visible[kRowBlock];
  int64_t cols = 0;
  for (int64_t r = 0; r < kRowBlock; ++r) {
    query[r] = p.q + (block.sequence.token_offset + block.pos[r]) * p.q_token_stride + block.head[r] * p.q_head_stride;
    visible[r] = attention_visible_len(p, block.sequence, block.pos[r]);
    cols = std::max(cols, visible[r]);
  }
  float* scores = work.scores.data();
  for_each_kv_run(p, block.b, block.head[0], cols, kFastKvRunRows, work.run_rows.data(),
                  [&](int64_t first, int64_t count, const float* keys, const float*) {
                    block_dots(p, query, keys, first, count, 0, main_dim, scores);
                    if (split) {
                      block_dots(p, query, keys, first, count, main_dim, p.score_dim - main_dim,
                                 work.tail_scores.data());
                    }
                  });

  for (int64_t r = 0; r < kRowBlock; ++r) {
    float* row = scores + r * p.kv_len;
    const float* tail = split ? work.tail_scores.data() + r * p.kv_len : nullptr;
    scores_to_probs(attention_score_row(p, block.pos[r], row, tail, visible[r],
                                        attention_lse(p, block.sequence, block.pos[r], block.head[r])));
    std::fill(row + visible[r], row + cols, 0.0f);  // rows that see less add nothing past their end
  }

  float* accumulator[kRowBlock];
  for (int64_t r = 0; r < kRowBlock; ++r) accumulator[r] = work.accumulators.data() + r * p.value_dim;
  std::fill(work.accumulators.begin(), work.accumulators.end(), 0.0f);
  for_each_kv_run(p, block.b, block.head[0], cols, kFastKvRunRows, work.run_rows.data(),
                  [&](int64_t first, int64_t count, const float*, const float* values) {
                    block_values(p, scores, values, first, count, accumulator);
                  });
  for (int64_t r = 0; r < block.rows; ++r)
    store_output(accumulator[r], output_row(p, block, r), p.value_dim, p.round_to_bf16);
}

// A lone query row (decode with per-head keys): the same arithmetic as a block, without
// computing three repeats of it.
void attend_one_row(const AttentionParams& p, const RowBlock& block, BlockWorkspace& work) {
  const int64_t s = block.pos[0];
  const int64_t h = block.head[0];
  const float* query = p.q + (block.sequence.token_offset + s) * p.q_token_stride + h * p.q_head_stride;
  const bool split = p.round_to_bf16 && p.score_split > 0;
  const int64_t main_dim = split ? p.score_split : p.score_dim;
  const int64_t visible = attention_visible_len(p, block.sequence, s);
  float* scores = work.scores.data();
  float* tail = split ? work.tail_scores.data() : nullptr;
  for_each_kv_run(p, block.b, h, visible, kFastKvRunRows, work.run_rows.data(),
                  [&](int64_t first, int64_t count, const float* keys, const float*) {
                    int64_t t = 0;
                    for (; t + 4 <= count; t += 4) {
                      const float* four[4] = {keys + t * p.key_pos_stride, keys + (t + 1) * p.key_pos_stride,
                                              keys + (t + 2) * p.key_pos_stride, keys + (t + 3) * p.key_pos_stride};
                      dot4_f32(query, four, main_dim, scores + first + t);
                    }
                    for (; t < count; ++t) scores[first + t] = dot_f32(query, keys + t * p.key_pos_stride, main_dim);
                    for (t = 0; split && t < count; ++t) {
                      tail[first + t] =
                          dot_f32(query + main_dim, keys + t * p.key_pos_stride + main_dim, p.score_dim - main_dim);
                    }
                  });
  scores_to_probs(attention_score_row(p, s, scores, tail, visible, attention_lse(p, block.sequence, s, h)));

  float* accumulator = work.accumulators.data();
  std::fill(accumulator, accumulator + p.value_dim, 0.0f);
  for_each_kv_run(p, block.b, h, visible, kFastKvRunRows, work.run_rows.data(),
                  [&](int64_t first, int64_t count, const float*, const float* values) {
                    const float* probs = scores + first;
                    int64_t t = 0;
                    for (; t + 4 <= count; t += 4) {
                      const float* four[4] = {values + t * p.value_pos_stride, values + (t + 1) * p.value_pos_stride,
                                              values + (t + 2) * p.value_pos_stride,
                                              values + (t + 3) * p.value_pos_stride};
                      axpy4_f32(probs + t, four, accumulator, p.value_dim);
                    }
                    for (; t < count; ++t) {
                      if (probs[t] != 0.0f)
                        axpy_f32(probs[t], values + t * p.value_pos_stride, accumulator, p.value_dim);
                    }
                  });
  store_output(accumulator, output_row(p, block, 0), p.value_dim, p.round_to_bf16);
}

// A quantized paged cache (bf16 or fp8 rows) is dequantized run by run as it is read; one block
// of four rows at a time would dequantize a position's rows once per block of heads, for the
// scores and again for the values. Instead a group of heads of one query position shares each
// dequantized run: every block of four heads in the group reads it before the next run.
bool groups_heads(const AttentionParams& p) {
  return shares_keys_across_heads(p) && p.latent_pages != nullptr && p.latent_pages->dtype != LatentDType::F32;
}

struct HeadGroup {
  int64_t b = 0, s = 0, head = 0, heads = 0;
};

// Heads per group: all of them, split only as far as the threads need work (a decode of one
// sequence has one query position), in whole blocks of four.
int64_t heads_per_group(const AttentionParams& p, int64_t positions, int threads) {
  const int64_t blocks = (p.n_heads + kRowBlock - 1) / kRowBlock;
  const int64_t groups = head_groups_for_threads(positions, threads, blocks);
  return ((blocks + groups - 1) / groups) * kRowBlock;
}

int64_t step_positions(const AttentionParams& p) {
  int64_t positions = 0;
  for (int64_t b = 0; b < p.batch; ++b) positions += attention_sequence(p, b).new_tokens;
  return positions;
}

std::vector<HeadGroup> step_head_groups(const AttentionParams& p, int64_t per_group) {
  std::vector<HeadGroup> groups;
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t s = 0; s < attention_sequence(p, b).new_tokens; ++s) {
      for (int64_t head = 0; head < p.n_heads; head += per_group) {
        groups.push_back({b, s, head, std::min(per_group, p.n_heads - head)});
      }
    }
  }
  return groups;
}

// The group's blocks of four heads: block i holds heads head + 4i .. (the last repeats its last head).
std::vector<RowBlock> group_blocks(const AttentionParams& p, const HeadGroup& group) {
  std::vector<RowBlock> blocks;
  for (int64_t first = 0; first < group.heads; first += kRowBlock) {
    RowBlock block;
    block.b = group.b;
    block.sequence = attention_sequence(p, group.b);
    block.rows = std::min(kRowBlock, group.heads - first);
    for (int64_t r = 0; r < kRowBlock; ++r) {
      block.head[r] = group.head + first + std::min(r, block.rows - 1);
      block.pos[r] = group.s;
    }
    blocks.push_back(block);
  }
  return blocks;
}

// scores and tail_scores hold a [group heads rounded up to 4, kv_len] tile; accumulators
// [the same, value_dim].
void attend_head_group(const AttentionParams& p, const HeadGroup& group, BlockWorkspace& work) {
  const bool split = p.round_to_bf16 && p.score_split > 0;
  const int64_t main_dim = split ? p.score_split : p.score_dim;
  const std::vector<RowBlock> blocks = group_blocks(p, group);
  const AttentionSequence& sequence = blocks.front().sequence;
  const int64_t visible = attention_visible_len(p, sequence, group.s);
  std::vector<std::array<const float*, kRowBlock>> query(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    for (int64_t r = 0; r < kRowBlock; ++r) {
      query[i][r] = p.q + (sequence.token_offset + group.s) * p.q_token_stride + blocks[i].head[r] * p.q_head_stride;
    }
  }
  const auto tile = [&](AlignedVector<float>& buffer, size_t i) { return buffer.data() + i * kRowBlock * p.kv_len; };
  for_each_kv_run(p, group.b, 0, visible, kFastKvRunRows, work.run_rows.data(),
                  [&](int64_t first, int64_t count, const float* keys, const float*) {
                    for (size_t i = 0; i < blocks.size(); ++i) {
                      block_dots(p, query[i].data(), keys, first, count, 0, main_dim, tile(work.scores, i));
                      if (split) {
                        block_dots(p, query[i].data(), keys, first, count, main_dim, p.score_dim - main_dim,
                                   tile(work.tail_scores, i));
                      }
                    }
                  });
  for (size_t i = 0; i < blocks.size(); ++i) {
    for (int64_t r = 0; r < blocks[i].rows; ++r) {
      float* row = tile(work.scores, i) + r * p.kv_len;
      const float* tail = split ? tile(work.tail_scores, i) + r * p.kv_len : nullptr;
      scores_to_probs(
          attention_score_row(p, group.s, row, tail, visible, attention_lse(p, sequence, group.s, blocks[i].head[r])));
    }
    for (int64_t r = blocks[i].rows; r < kRowBlock; ++r) {  // repeats of the last head add nothing
      std::fill(tile(work.scores, i) + r * p.kv_len, tile(work.scores, i) + r * p.kv_len + visible, 0.0f);
    }
  }
  std::fill(work.accumulators.begin(), work.accumulators.end(), 0.0f);
  std::vector<std::array<float*, kRowBlock>> accumulator(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    for (int64_t r = 0; r < kRowBlock; ++r) {
      accumulator[i][r] = work.accumulators.data() + (static_cast<int64_t>(i) * kRowBlock + r) * p.value_dim;
    }
  }
  for_each_kv_run(p, group.b, 0, visible, kFastKvRunRows, work.run_rows.data(),
                  [&](int64_t first, int64_t count, const float*, const float* values) {
                    for (size_t i = 0; i < blocks.size(); ++i) {
                      block_values(p, tile(work.scores, i), values, first, count, accumulator[i].data());
                    }
                  });
  for (size_t i = 0; i < blocks.size(); ++i) {
    for (int64_t r = 0; r < blocks[i].rows; ++r) {
      store_output(accumulator[i][r], output_row(p, blocks[i], r), p.value_dim, p.round_to_bf16);
    }
  }
}

void attention_fast_head_groups(const AttentionParams& p) {
  const int64_t tile_rows = heads_per_group(p, step_positions(p), omp_get_max_threads());
  const std::vector<HeadGroup> groups = step_head_groups(p, tile_rows);
  const int64_t n_groups = static_cast<int64_t>(groups.size());
#pragma omp parallel
  {
    BlockWorkspace work(p, tile_rows);
#pragma omp for schedule(dynamic, 1)
    for (int64_t index = 0; index < n_groups; ++index) attend_head_group(p, groups[index], work);
  }
}

}  // namespace

void check_ragged_and_paged(const AttentionParams& p, const char* kernel) {
  if (p.seq_start_pos != nullptr && p.mask != nullptr) {
    throw std::invalid_argument(std::string(kernel) +
                                ": an explicit mask with a ragged step (the mask is [S, e] "
                                "of a uniform batch)");
  }
  if (p.kv_shards > 1 && p.mask != nullptr) {
    throw std::invalid_argument(std::string(kernel) + ": an explicit mask with keys split over ranks");
  }
  if (p.latent_pages != nullptr && !shares_keys_across_heads(p)) {
    throw std::invalid_argument(std::string(kernel) +
                                ": a paged cache holds the shared latent rows (absorb); "
                                "per-head keys are read from dense buffers");
  }
}

void require_fp32_operands(const AttentionParams& p, const char* kernel) {
  if (p.q_bf16 != nullptr || p.key_bf16 != nullptr || p.value_bf16 != nullptr || p.out_bf16 != nullptr ||
      p.key_tail_bf16 != nullptr) {
    throw std::invalid_argument(std::string(kernel) +
                                ": q/keys/values/out given as bf16 bits, which only the AMX fast path "
                                "(attention_fast_amx_applies is false for this step) and the GPU's flash "
                                "kernel take");
  }
}

void attention_fast(const AttentionParams& p) {
  if (attention_fast_amx_applies(p)) {
    attention_fast_amx(p);
    return;
  }
  require_fp32_operands(p, "attention_fast");
  check_ragged_and_paged(p, "attention_fast");
  if (groups_heads(p)) {
    attention_fast_head_groups(p);
    return;
  }
  const std::vector<std::pair<int64_t, int64_t>> blocks = step_blocks(p);
  const int64_t n_blocks = static_cast<int64_t>(blocks.size());
#pragma omp parallel
  {
    BlockWorkspace work(p, kRowBlock);
#pragma omp for schedule(dynamic, 2)
    for (int64_t index = 0; index < n_blocks; ++index) {
      const RowBlock rows = make_block(p, blocks[index].first, blocks[index].second);
      if (rows.rows == 1) {
        attend_one_row(p, rows, work);
      } else {
        attend_block(p, rows, work);
      }
    }
  }
}

int64_t attention_fast_workspace_bytes(const AttentionParams& p, int threads) {
  if (attention_fast_amx_applies(p)) return attention_fast_amx_workspace_bytes(p, threads);
  const int64_t score_tiles = (p.round_to_bf16 && p.score_split > 0) ? 2 : 1;
  if (groups_heads(p)) {
    const int64_t tile_rows = heads_per_group(p, step_positions(p), threads);
    return static_cast<int64_t>(threads) *
           (tile_rows * (score_tiles * p.kv_len + p.value_dim) + kv_run_scratch_floats(p, kFastKvRunRows)) *
           static_cast<int64_t>(sizeof(float));
  }
  return static_cast<int64_t>(threads) *
         (kRowBlock * (score_tiles * p.kv_len + p.value_dim) + kv_run_scratch_floats(p, kFastKvRunRows)) *
         static_cast<int64_t>(sizeof(float));
}

}  // namespace mla
