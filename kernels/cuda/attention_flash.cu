#include <cuda_bf16.h>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/attention_flash.h"
#include "kernels/cuda/attention_flash_lanes.h"
#include "kernels/cuda/attention_rows.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/mma_ops.cuh"
#include "kernels/cuda/softmax.cuh"

namespace mla {

namespace {

using cuda_detail::commit_copies;
using cuda_detail::copy_16_async;
using cuda_detail::load_matrices_x4;
using cuda_detail::mma_bf16_16x8x16;
using cuda_detail::pack_bf16_pair;
using cuda_detail::wait_copies;

// A block holds 64 query rows that read the same keys (positions of one head in naive; heads x
// positions in absorb, where every head reads the latent rows), 16 rows per row warp.
//   narrow kernel (one dot product per score, up to 128 value columns): 4 warps, each its rows'
//     scores for a stage of 64 keys and every output column, in registers.
//   wide kernel (absorb: the latent and rope parts of a score summed apart, 512 value columns read
//     from the key rows themselves): 4 row warps x kGroups column groups. The warps of a row split
//     a stage's 32 keys for the scores, agree on each row's maximum and share the probabilities
//     through shared memory, then each multiplies them into its own value columns (256 of
//     DeepSeek-V3's 512: 8 warps of up to 255 registers, the output sums taking 128).
constexpr int kRowWarps = 4;
constexpr int kRows = kRowWarps * 16;
constexpr int kNarrowThreads = kRowWarps * 32;
constexpr int kNarrowKeys = 64;  // positions per stage
constexpr int kWideKeys = 32;
constexpr int kChunk = 8;  // bf16 per 16-byte copy

__host__ __device__ inline int round_up(int64_t value, int step) {
  return static_cast<int>((value + step - 1) / step * step);
}

// Shared memory: the queries [kRows][ldq], two stages of keys [keys][ldk], then (narrow) two of
// values [keys][ldv] or (wide) the probabilities [kRows][ldp] and each column group's row maxima
// and sums. Rows are padded by 8 bf16 (16 bytes): ldmatrix reads 8 rows of 16 bytes at a time, and
// these strides put them in 8 different bank groups. A key's first part (the latent part, naive's
// k_nope, or the whole key) sits in columns [0, tail_at), the rest (k_pe) from tail_at on;
// everything past the operands' widths is zeros.
struct FlashLayout {
  int keys = 0;        // positions per stage
  int main_width = 0;  // the score's first part (main_width_of)
  int tail_at = 0, dim_pad = 0;
  int value_cols = 0;  // value columns the kernel computes (narrow: all; wide: every group's)
  int ldq = 0, ldk = 0, ldv = 0, ldp = 0;
  int k_offset = 0, v_offset = 0, p_offset = 0, part_offset = 0, bytes = 0;
};

// The key's two parts: dimensions [0, main_width) from key_bf16 (or the latent row), then
// [main_width, score_dim) from key_tail_bf16 (or the rest of the row).
int64_t main_width_of(const AttentionParams& p) {
  if (p.key_tail_bf16 != nullptr) return p.key_tail_from;
  if (p.latent_pages != nullptr) return p.latent_pages->latent_dim;
  return p.score_split > 0 ? p.score_split : p.score_dim;
}

FlashLayout narrow_layout(const AttentionParams& p, int value_tiles) {
  FlashLayout l;
  l.keys = kNarrowKeys;
  l.main_width = static_cast<int>(main_width_of(p));
  l.tail_at = l.main_width;
  l.dim_pad = round_up(p.score_dim, 16);
  l.value_cols = value_tiles * 16;
  l.ldq = l.ldk = l.dim_pad + kChunk;
  l.ldv = l.value_cols + kChunk;
  l.k_offset = kRows * l.ldq * 2;
  l.v_offset = l.k_offset + 2 * l.keys * l.ldk * 2;
  l.bytes = l.v_offset + 2 * l.keys * l.ldv * 2;
  return l;
}

// The wide kernel takes its score dimensions 32 at a time, each part in whole steps.
FlashLayout wide_layout(const AttentionParams& p, int groups, int value_tiles) {
  FlashLayout l;
  l.keys = kWideKeys;
  l.main_width = static_cast<int>(main_width_of(p));
  l.tail_at = round_up(l.main_width, 32);
  l.dim_pad = l.tail_at + round_up(p.score_dim - l.main_width, 32);
  l.value_cols = groups * value_tiles * 16;
  l.ldq = l.ldk = l.dim_pad + kChunk;
  l.ldp = l.keys + kChunk;
  l.k_offset = kRows * l.ldq * 2;
  l.p_offset = l.k_offset + 2 * l.keys * l.ldk * 2;
  l.part_offset = l.p_offset + kRows * l.ldp * 2;
  l.bytes = l.part_offset + 2 * groups * kRows * 4;
  return l;
}

// Where one block's keys and values are. Unpaged: position t's first part at main + t *
// main_stride, its second at tail + t * tail_stride, its value at values + t * value_stride.
// Paged (bf16 latent rows read in place through the block's row of the block table): all three
// from the row, the value being its latent part.
struct KeySource {
  const __nv_bfloat16* main;
  int64_t main_stride;
  const __nv_bfloat16* tail;
  int64_t tail_stride;
  const __nv_bfloat16* values;
  int64_t value_stride;
  const __nv_bfloat16* pool;  // paged: the pages' rows, row_width each
  const int32_t* pages;       // paged: this sequence's row of the block table
  int64_t page_size, row_width;
  int main_width, tail_width, value_dim;

  __device__ const __nv_bfloat16* paged_row(int64_t t) const {
    return pool + (static_cast<int64_t>(pages[t / page_size]) * page_size + t % page_size) * row_width;
  }
  __device__ const __nv_bfloat16* main_row(int64_t t) const {
    return pages != nullptr ? paged_row(t) : main + t * main_stride;
  }
  __device__ const __nv_bfloat16* tail_row(int64_t t) const {
    return pages != nullptr ? paged_row(t) + main_width : tail + t * tail_stride;
  }
  __device__ const __nv_bfloat16* value_row(int64_t t) const {
    return pages != nullptr ? paged_row(t) : values + t * value_stride;
  }
  // Key column `col` of a staged row (FlashLayout's columns), or zero.
  __device__ __nv_bfloat16 key(int64_t t, int col, int tail_at) const {
    if (col < tail_at) return col < main_width ? main_row(t)[col] : __float2bfloat16_rn(0.0f);
    return col - tail_at < tail_width ? tail_row(t)[col - tail_at] : __float2bfloat16_rn(0.0f);
  }
};

// `cache`: the kernel's copy of *p.latent_pages (a host pointer), where p has one.
__device__ KeySource key_source(const AttentionParams& p, const PagedLatentView& cache, const FlashLayout& l, int64_t b,
                                int64_t head) {
  KeySource s{};
  s.main_width = l.main_width;
  s.tail_width = static_cast<int>(p.score_dim) - s.main_width;
  s.value_dim = static_cast<int>(p.value_dim);
  if (p.latent_pages != nullptr) {
    s.pool = reinterpret_cast<const __nv_bfloat16*>(cache.pool);
    s.pages = cache.block_table + b * cache.block_table_stride;
    s.page_size = cache.page_size;
    s.row_width = cache.latent_dim + cache.rope_dim;
    return s;
  }
  s.main = reinterpret_cast<const __nv_bfloat16*>(p.key_bf16) + b * p.key_batch_stride + head * p.key_head_stride;
  s.main_stride = p.key_pos_stride;
  s.tail = p.key_tail_bf16 != nullptr ? reinterpret_cast<const __nv_bfloat16*>(p.key_tail_bf16) +
                                            b * p.key_tail_batch_stride + head * p.key_tail_head_stride
                                      : s.main + s.main_width;
  s.tail_stride = p.key_tail_bf16 != nullptr ? p.key_tail_pos_stride : p.key_pos_stride;
  s.values =
      reinterpret_cast<const __nv_bfloat16*>(p.value_bf16) + b * p.value_batch_stride + head * p.value_head_stride;
  s.value_stride = p.value_pos_stride;
  return s;
}

// Calls chunk(r, c) for every 16-byte chunk of a tile `rows` x `width` (row r, columns c .. c + 7),
// spread over the block's kThreads threads.
template <int kThreads, typename Chunk>
__device__ __forceinline__ void for_each_chunk(int rows, int width, Chunk chunk) {
  const int chunks = width / kChunk;
  for (int i = threadIdx.x; i < rows * chunks; i += kThreads) chunk(i / chunks, (i % chunks) * kChunk);
}

// Positions [first, first + l.keys) of the keys into one stage, laid out as FlashLayout says;
// positions from `end` on are zeros (they meet a zero probability, and no garbage NaN may).
// kAsync: 16-byte cp.async copies, which the host allows only where every part's width, stride and
// base is a whole number of 16-byte chunks; otherwise element by element through registers.
// The source is rebuilt from the kernel's parameters at each call rather than kept in registers
// across the walk over the keys, where the wide kernel has none to spare.
template <int kThreads, bool kAsync>
__device__ __forceinline__ void stage_keys(const AttentionParams& p, const PagedLatentView& cache, const FlashLayout& l,
                                           const cuda_detail::BlockRows& block, int64_t first, int64_t end,
                                           __nv_bfloat16* keys) {
  const KeySource s = key_source(p, cache, l, block.b, block.head);
  for_each_chunk<kThreads>(l.keys, l.dim_pad, [&](int r, int c) {
    const int64_t t = first + r;
    __nv_bfloat16* to = keys + r * l.ldk + c;
    if constexpr (kAsync) {
      const bool main = c < l.tail_at;
      const bool valid = t < end && (main ? c < s.main_width : c - l.tail_at < s.tail_width);
      const __nv_bfloat16* from = !valid ? s.main_row(0) : main ? s.main_row(t) + c : s.tail_row(t) + (c - l.tail_at);
      copy_16_async(to, from, valid);
    } else {
#pragma unroll
      for (int e = 0; e < kChunk; ++e) to[e] = t < end ? s.key(t, c + e, l.tail_at) : __float2bfloat16_rn(0.0f);
    }
  });
}

// The values of positions [first, first + l.keys) into one stage (the narrow kernel's own tile).
template <int kThreads, bool kAsync>
__device__ __forceinline__ void stage_values(const AttentionParams& p, const PagedLatentView& cache,
                                             const FlashLayout& l, const cuda_detail::BlockRows& block, int64_t first,
                                             int64_t end, __nv_bfloat16* values) {
  const KeySource s = key_source(p, cache, l, block.b, block.head);
  for_each_chunk<kThreads>(l.keys, l.value_cols, [&](int r, int c) {
    const int64_t t = first + r;
    __nv_bfloat16* to = values + r * l.ldv + c;
    if constexpr (kAsync) {
      const bool valid = t < end && c < s.value_dim;
      copy_16_async(to, valid ? s.value_row(t) + c : s.value_row(0), valid);
    } else {
#pragma unroll
      for (int e = 0; e < kChunk; ++e) {
        to[e] = t < end && c + e < s.value_dim ? s.value_row(t)[c + e] : __float2bfloat16_rn(0.0f);
      }
    }
  });
}

// The block's query rows as bf16 (exact: bf16 mode's queries are bf16 numbers), in the keys'
// columns, zeros past the group's rows and the parts' widths. Read once per block.
template <int kThreads>
__device__ __forceinline__ void stage_queries(const AttentionParams& p, const cuda_detail::BlockRows& rows,
                                              const FlashLayout& l, __nv_bfloat16* q_tile) {
  const int main_width = l.main_width;
  const auto* q_bits = reinterpret_cast<const __nv_bfloat16*>(p.q_bf16);
  for (int i = threadIdx.x; i < kRows * l.dim_pad; i += kThreads) {
    const int r = i / l.dim_pad;
    const int c = i % l.dim_pad;
    const int64_t row = rows.first_row + r;
    const int d = c < l.tail_at ? (c < main_width ? c : -1) : main_width + (c - l.tail_at);
    __nv_bfloat16 value = __float2bfloat16_rn(0.0f);
    if (row < rows.group_rows && d >= 0 && d < p.score_dim) {
      const int64_t at =
          (rows.b * p.seq + rows.position_of(row)) * p.q_token_stride + rows.head_of(row) * p.q_head_stride + d;
      value = q_bits != nullptr ? q_bits[at] : __float2bfloat16_rn(p.q[at]);
    }
    q_tile[r * l.ldq + c] = value;
  }
}

// The most positions any row of the block sees, and any of row warp `row_warp`'s rows.
__device__ __forceinline__ void visible_lengths(const AttentionParams& p, const cuda_detail::BlockRows& rows,
                                                int row_warp, int64_t& block_visible, int64_t& warp_visible) {
  block_visible = warp_visible = 0;
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = rows.first_row + r;
    if (row >= rows.group_rows) break;
    const int64_t visible = cuda_detail::visible_len(p, rows.position_of(row));
    block_visible = max(block_visible, visible);
    if (r / 16 == row_warp) warp_visible = max(warp_visible, visible);
  }
}

// This thread's two query rows (registers 0, 1 and 2, 3 of its accumulators): lane / 4 and the row
// 8 below, of its row warp's 16; a row past the group's sees nothing. Positions in 32 bits (the
// config caps max_seq_len at 2^26): registers are what the wide kernel lacks.
struct ThreadRows {
  int64_t first;  // the row warp's first row in the group
  int position[2], visible[2];

  __device__ ThreadRows(const AttentionParams& p, const cuda_detail::BlockRows& rows, int row_warp, int lane)
      : first(rows.first_row + row_warp * 16) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t row = first + flash_lanes::accumulator_row(lane, 2 * half);
      const bool valid = row < rows.group_rows;
      position[half] = valid ? static_cast<int>(rows.position_of(row)) : 0;
      visible[half] = valid ? static_cast<int>(cuda_detail::visible_len(p, position[half])) : 0;
    }
  }
};

// A score finished as the CPU twin finishes it (bf16 roundings, scale, mask), or -inf where the
// row does not see position t.
__device__ __forceinline__ float finished_score(const AttentionParams& p, const ThreadRows& rows, int half, int64_t t,
                                                float main_sum, float tail_sum, bool split) {
  if (t >= rows.visible[half]) return -INFINITY;
  return cuda_detail::apply_mask(p, cuda_detail::finish_score(main_sum, tail_sum, p.scale, split, true),
                                 rows.position[half], t);
}

// The online softmax's step for row `half` of this thread, given the stage's maximum of its
// scores: the new running maximum, the row's earlier sum and outputs scaled by exp(old max - new
// max). Returns the base the stage's exps are taken from: a row that has seen only -inf gets 0, so
// that its exps are 0, not NaN.
template <int kTiles>
__device__ __forceinline__ float advance_row(float& running_max, float& running_sum, float (&out_sum)[kTiles][4],
                                             int half, float stage_max) {
  const float new_max = fmaxf(running_max, stage_max);
  const float base = new_max == -INFINITY ? 0.0f : new_max;
  const float rescale = expf(running_max - base);
  running_max = new_max;
  running_sum *= rescale;
#pragma unroll
  for (int nt = 0; nt < kTiles; ++nt) {
    out_sum[nt][2 * half] *= rescale;
    out_sum[nt][2 * half + 1] *= rescale;
  }
  return base;
}

template <int kTiles>
__device__ __forceinline__ void set_zero(float (&tiles)[kTiles][4]) {
#pragma unroll
  for (int t = 0; t < kTiles; ++t) {
#pragma unroll
    for (int e = 0; e < 4; ++e) tiles[t][e] = 0.0f;
  }
}

// A row's value across the 4 lanes that hold it (lane / 4 the same): the maximum, or the sum.
__device__ __forceinline__ float quad_max(float value) {
  value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, 1));
  return fmaxf(value, __shfl_xor_sync(0xffffffffu, value, 2));
}
__device__ __forceinline__ float quad_sum(float value) {
  value += __shfl_xor_sync(0xffffffffu, value, 1);
  return value + __shfl_xor_sync(0xffffffffu, value, 2);
}

// out += probabilities (the 16 x 16 row operand: 16 rows, 16 positions) x the values of those
// positions: `values` points at the first position's row (row stride ld), at the first of the
// kValueTiles 16-column tiles this warp sums.
template <int kValueTiles>
__device__ __forceinline__ void add_value_products(float (&out_sum)[2 * kValueTiles][4], const uint32_t (&probs)[4],
                                                   const __nv_bfloat16* values, int ld,
                                                   const flash_lanes::TileCell& value_at) {
#pragma unroll
  for (int vt = 0; vt < kValueTiles; ++vt) {
    uint32_t value_operand[4];
    load_matrices_x4<true>(value_operand, values + value_at.row * ld + vt * 16 + value_at.col);
    mma_bf16_16x8x16(out_sum[2 * vt], probs, value_operand[0], value_operand[1]);
    mma_bf16_16x8x16(out_sum[2 * vt + 1], probs, value_operand[2], value_operand[3]);
  }
}

// Writes a row's outputs (8-column tiles `tiles`, from column `first_col`): the sums divided by the
// row's exp sum and rounded to bf16; zeros where it sees nothing.
template <int kTiles>
__device__ __forceinline__ void write_outputs(const AttentionParams& p, const cuda_detail::BlockRows& block,
                                              const ThreadRows& rows, int half, int lane, float sum,
                                              const float (&out_sum)[kTiles][4], int first_col) {
  const int64_t row = rows.first + flash_lanes::accumulator_row(lane, 2 * half);
  if (row >= block.group_rows) return;
  float* out =
      p.out + (block.b * p.seq + rows.position[half]) * p.out_token_stride + block.head_of(row) * p.out_head_stride;
#pragma unroll
  for (int nt = 0; nt < kTiles; ++nt) {
#pragma unroll
    for (int e = 2 * half; e < 2 * half + 2; ++e) {
      const int col = first_col + nt * 8 + flash_lanes::accumulator_col(lane, e);
      if (col < p.value_dim) out[col] = cuda_detail::round_bf16(sum > 0.0f ? __fdiv_rn(out_sum[nt][e], sum) : 0.0f);
    }
  }
}

// One function, longer than the project's usual 80 lines, for the reason given at
// attention_fast_mma_kernel: the scores, running maxima, sums and output sums live in registers
// across the whole walk over the keys, and split into device functions they would be passed by
// reference everywhere. kValueTiles: 16-column tiles of the output, each warp all of them.
template <int kValueTiles, bool kAsync>
__global__ void __launch_bounds__(kNarrowThreads, 2)
    attention_flash_kernel(AttentionParams p, FlashLayout l, PagedLatentView cache) {
  constexpr int kScoreTiles = kNarrowKeys / 8;  // a warp's 16 x 8 score tiles per stage
  extern __shared__ __align__(128) unsigned char shared[];
  auto* q_tile = reinterpret_cast<__nv_bfloat16*>(shared);
  auto* key_stages = reinterpret_cast<__nv_bfloat16*>(shared + l.k_offset);    // [2][keys][ldk]
  auto* value_stages = reinterpret_cast<__nv_bfloat16*>(shared + l.v_offset);  // [2][keys][ldv]

  const cuda_detail::BlockRows block(p, kRows);
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  stage_queries<kNarrowThreads>(p, block, l, q_tile);
  int64_t block_visible = 0, warp_visible = 0;  // a causal block's first warps stop earlier
  visible_lengths(p, block, warp, block_visible, warp_visible);
  const ThreadRows rows(p, block, warp, lane);

  float running_max[2] = {-INFINITY, -INFINITY};
  float running_sum[2] = {0.0f, 0.0f};  // this thread's share; the row's 4 threads add theirs at the end
  float out_sum[2 * kValueTiles][4];
  set_zero(out_sum);
  const flash_lanes::TileCell query_at = flash_lanes::query_cell(lane);
  const flash_lanes::TileCell key_at = flash_lanes::key_cell(lane);
  const flash_lanes::TileCell value_at = flash_lanes::value_cell(lane);

  const int stages = static_cast<int>((block_visible + l.keys - 1) / l.keys);
  if (stages > 0) {
    stage_keys<kNarrowThreads, kAsync>(p, cache, l, block, 0, block_visible, key_stages);
    stage_values<kNarrowThreads, kAsync>(p, cache, l, block, 0, block_visible, value_stages);
    commit_copies();
  }
  for (int stage = 0; stage < stages; ++stage) {
    const int buffer = stage % 2;
    wait_copies<0>();
    __syncthreads();           // this stage in place for every warp, and every warp done with the other buffer
    if (stage + 1 < stages) {  // the next stage loads while this one is multiplied
      const int64_t next = int64_t{stage + 1} * l.keys;
      stage_keys<kNarrowThreads, kAsync>(p, cache, l, block, next, block_visible,
                                         key_stages + (1 - buffer) * l.keys * l.ldk);
      stage_values<kNarrowThreads, kAsync>(p, cache, l, block, next, block_visible,
                                           value_stages + (1 - buffer) * l.keys * l.ldv);
      commit_copies();
    }
    const int64_t first_key = int64_t{stage} * l.keys;
    if (first_key >= warp_visible) continue;
    const __nv_bfloat16* keys = key_stages + buffer * l.keys * l.ldk;
    const __nv_bfloat16* values = value_stages + buffer * l.keys * l.ldv;

    // Scores: the warp's 16 rows x 64 keys, summed over the score dimensions 16 at a time.
    float score[kScoreTiles][4];
    set_zero(score);
    for (int k0 = 0; k0 < l.dim_pad; k0 += 16) {
      uint32_t q_operand[4];
      load_matrices_x4<false>(q_operand, q_tile + (warp * 16 + query_at.row) * l.ldq + k0 + query_at.col);
#pragma unroll
      for (int pair = 0; pair < kScoreTiles / 2; ++pair) {
        uint32_t key_operand[4];
        load_matrices_x4<false>(key_operand, keys + (pair * 16 + key_at.row) * l.ldk + k0 + key_at.col);
        mma_bf16_16x8x16(score[2 * pair], q_operand, key_operand[0], key_operand[1]);
        mma_bf16_16x8x16(score[2 * pair + 1], q_operand, key_operand[2], key_operand[3]);
      }
    }

    // The online softmax, a row at a time: its maximum over the stage across the 4 threads that
    // hold it, earlier sums and outputs rescaled, the scores replaced by exp(score - max).
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float stage_max = -INFINITY;
#pragma unroll
      for (int st = 0; st < kScoreTiles; ++st) {
#pragma unroll
        for (int e = 2 * half; e < 2 * half + 2; ++e) {
          const int64_t t = first_key + st * 8 + flash_lanes::accumulator_col(lane, e);
          score[st][e] = finished_score(p, rows, half, t, score[st][e], 0.0f, false);
          stage_max = fmaxf(stage_max, score[st][e]);
        }
      }
      stage_max = quad_max(stage_max);
      const float base = advance_row(running_max[half], running_sum[half], out_sum, half, stage_max);
#pragma unroll
      for (int st = 0; st < kScoreTiles; ++st) {
#pragma unroll
        for (int e = 2 * half; e < 2 * half + 2; ++e) {
          score[st][e] = expf(score[st][e] - base);
          running_sum[half] += score[st][e];
        }
      }
    }

    // out += exp(scores) x values. The score accumulators of two 8-key tiles are, in place, the
    // 16 x 16 row operand of a step over 16 positions (the fragments line up).
#pragma unroll
    for (int k0 = 0; k0 < kNarrowKeys / 16; ++k0) {
      const uint32_t prob_operand[4] = {pack_bf16_pair(score[2 * k0][0], score[2 * k0][1]),
                                        pack_bf16_pair(score[2 * k0][2], score[2 * k0][3]),
                                        pack_bf16_pair(score[2 * k0 + 1][0], score[2 * k0 + 1][1]),
                                        pack_bf16_pair(score[2 * k0 + 1][2], score[2 * k0 + 1][3])};
      add_value_products<kValueTiles>(out_sum, prob_operand, values + k0 * 16 * l.ldv, l.ldv, value_at);
    }
  }

#pragma unroll
  for (int half = 0; half < 2; ++half) {
    write_outputs(p, block, rows, half, lane, quad_sum(running_sum[half]), out_sum, 0);
  }
}

// The wide kernel (see the top of the file): warp w is row warp w % 4 and column group w / 4. Per
// stage of 32 keys, three barriers: the stage in place; every group's row maxima written; the
// probabilities written. Longer than 80 lines for the narrow kernel's reason.
template <int kGroups, int kValueTiles, bool kAsync>
__global__ void __launch_bounds__(kRowWarps* kGroups * 32, 2 / kGroups)
    attention_flash_wide_kernel(AttentionParams p, FlashLayout l, PagedLatentView cache) {
  constexpr int kThreads = kRowWarps * kGroups * 32;
  constexpr int kTiles = kWideKeys / 8 / kGroups;  // each warp's 8-key score tiles per stage
  extern __shared__ __align__(128) unsigned char shared[];
  auto* q_tile = reinterpret_cast<__nv_bfloat16*>(shared);
  auto* key_stages = reinterpret_cast<__nv_bfloat16*>(shared + l.k_offset);  // [2][keys][ldk]
  auto* probs = reinterpret_cast<__nv_bfloat16*>(shared + l.p_offset);       // [kRows][ldp]
  auto* row_max_part = reinterpret_cast<float*>(shared + l.part_offset);     // [kGroups][kRows]
  float* row_sum_part = row_max_part + kGroups * kRows;                      // [kGroups][kRows]

  const cuda_detail::BlockRows block(p, kRows);
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int row_warp = warp % kRowWarps;
  const int group = warp / kRowWarps;
  stage_queries<kThreads>(p, block, l, q_tile);
  int64_t block_visible = 0, warp_visible = 0;
  visible_lengths(p, block, row_warp, block_visible, warp_visible);
  const ThreadRows rows(p, block, row_warp, lane);

  float running_max[2] = {-INFINITY, -INFINITY};
  float running_sum[2] = {0.0f, 0.0f};  // over this warp's keys; the groups add theirs at the end
  float out_sum[2 * kValueTiles][4];
  set_zero(out_sum);
  const flash_lanes::TileCell query_at = flash_lanes::query_cell(lane);
  const flash_lanes::TileCell key_at = flash_lanes::wide_key_cell(lane);
  const flash_lanes::TileCell value_at = flash_lanes::value_cell(lane);
  const int my_row[2] = {row_warp * 16 + flash_lanes::accumulator_row(lane, 0),
                         row_warp * 16 + flash_lanes::accumulator_row(lane, 2)};
  const int first_value_col = group * kValueTiles * 16;

  const int stages = static_cast<int>((block_visible + l.keys - 1) / l.keys);
  if (stages > 0) {
    stage_keys<kThreads, kAsync>(p, cache, l, block, 0, block_visible, key_stages);
    commit_copies();
  }
  for (int stage = 0; stage < stages; ++stage) {
    const int buffer = stage % 2;
    wait_copies<0>();
    __syncthreads();  // this stage in place; every warp done with the other buffer and the probabilities
    if (stage + 1 < stages) {
      stage_keys<kThreads, kAsync>(p, cache, l, block, int64_t{stage + 1} * l.keys, block_visible,
                                   key_stages + (1 - buffer) * l.keys * l.ldk);
      commit_copies();
    }
    const int64_t first_key = int64_t{stage} * l.keys;
    const __nv_bfloat16* keys = key_stages + buffer * l.keys * l.ldk;

    // Scores of this warp's 8-key tiles: the first part and the rope part summed apart, 32
    // dimensions (two k16 steps) a load.
    float main_sum[kTiles][4], tail_sum[kTiles][4];
    set_zero(main_sum);
    set_zero(tail_sum);
    const auto add_products = [&](int k0, float(&sums)[kTiles][4]) {
      uint32_t q_low[4], q_high[4];
      load_matrices_x4<false>(q_low, q_tile + (row_warp * 16 + query_at.row) * l.ldq + k0 + query_at.col);
      load_matrices_x4<false>(q_high, q_tile + (row_warp * 16 + query_at.row) * l.ldq + k0 + 16 + query_at.col);
#pragma unroll
      for (int tt = 0; tt < kTiles; ++tt) {
        uint32_t key_operand[4];
        load_matrices_x4<false>(key_operand, keys + ((group * kTiles + tt) * 8 + key_at.row) * l.ldk + k0 + key_at.col);
        mma_bf16_16x8x16(sums[tt], q_low, key_operand[0], key_operand[1]);
        mma_bf16_16x8x16(sums[tt], q_high, key_operand[2], key_operand[3]);
      }
    };
    if (first_key < warp_visible) {
      for (int k0 = 0; k0 < l.tail_at; k0 += 32) add_products(k0, main_sum);
      for (int k0 = l.tail_at; k0 < l.dim_pad; k0 += 32) add_products(k0, tail_sum);
    }

    // Each row's maximum over this warp's keys, for every group of the row to read.
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float warp_max = -INFINITY;
#pragma unroll
      for (int tt = 0; tt < kTiles; ++tt) {
#pragma unroll
        for (int e = 2 * half; e < 2 * half + 2; ++e) {
          const int64_t t = first_key + (group * kTiles + tt) * 8 + flash_lanes::accumulator_col(lane, e);
          main_sum[tt][e] = finished_score(p, rows, half, t, main_sum[tt][e], tail_sum[tt][e], true);
          warp_max = fmaxf(warp_max, main_sum[tt][e]);
        }
      }
      warp_max = quad_max(warp_max);
      if (lane % 4 == 0) row_max_part[group * kRows + my_row[half]] = warp_max;
    }
    __syncthreads();

    // The stage's maximum of each row (every group computes the same), the rescale, and this
    // warp's probabilities into the shared tile, two neighbouring keys a store.
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float stage_max = -INFINITY;
#pragma unroll
      for (int g = 0; g < kGroups; ++g) stage_max = fmaxf(stage_max, row_max_part[g * kRows + my_row[half]]);
      const float base = advance_row(running_max[half], running_sum[half], out_sum, half, stage_max);
#pragma unroll
      for (int tt = 0; tt < kTiles; ++tt) {
        const float low = expf(main_sum[tt][2 * half] - base);
        const float high = expf(main_sum[tt][2 * half + 1] - base);
        running_sum[half] += low + high;
        const int col = (group * kTiles + tt) * 8 + flash_lanes::accumulator_col(lane, 2 * half);
        *reinterpret_cast<uint32_t*>(probs + my_row[half] * l.ldp + col) = pack_bf16_pair(low, high);
      }
    }
    __syncthreads();

    // out += probabilities x values: the values are the key rows' first columns, already staged.
    if (first_key >= warp_visible) continue;  // every probability of the row warp is 0
#pragma unroll
    for (int k0 = 0; k0 < kWideKeys / 16; ++k0) {
      uint32_t prob_operand[4];
      load_matrices_x4<false>(prob_operand, probs + (row_warp * 16 + query_at.row) * l.ldp + k0 * 16 + query_at.col);
      add_value_products<kValueTiles>(out_sum, prob_operand, keys + k0 * 16 * l.ldk + first_value_col, l.ldk, value_at);
    }
  }

  // Each row's exp sum: its 4 threads, then its groups.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const float sum = quad_sum(running_sum[half]);
    if (lane % 4 == 0) row_sum_part[group * kRows + my_row[half]] = sum;
  }
  __syncthreads();
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float sum = 0.0f;
#pragma unroll
    for (int g = 0; g < kGroups; ++g) sum += row_sum_part[g * kRows + my_row[half]];
    write_outputs(p, block, rows, half, lane, sum, out_sum, first_value_col);
  }
}

// The kernel shape a step needs: column groups (0: the narrow kernel) and 16-column value tiles
// per warp among those instantiated; value_tiles 0 when no kernel takes the step.
struct FlashShape {
  int groups = 0;
  int value_tiles = 0;
};

FlashShape flash_shape(const AttentionParams& p) {
  const int tiles = round_up(p.value_dim, 16) / 16;
  const int small = tiles <= 2 ? 2 : tiles <= 4 ? 4 : tiles <= 8 ? 8 : 0;
  if (p.score_split == 0 && p.latent_pages == nullptr) return {0, small};
  if (small != 0) return {1, small};
  // Two groups of 8 warps in all: 4 groups of 128 columns (16 warps) would leave 128 registers a
  // thread, fewer than the output sums and the score operands need without spilling.
  if (tiles <= 16) return {2, 8};
  if (tiles <= 32) return {2, 16};
  return {};
}

FlashLayout layout_for(const AttentionParams& p, const FlashShape& shape) {
  return shape.groups == 0 ? narrow_layout(p, shape.value_tiles) : wide_layout(p, shape.groups, shape.value_tiles);
}

template <int kGroups, int kValueTiles>
const void* wide_kernel(bool async) {
  return async ? reinterpret_cast<const void*>(attention_flash_wide_kernel<kGroups, kValueTiles, true>)
               : reinterpret_cast<const void*>(attention_flash_wide_kernel<kGroups, kValueTiles, false>);
}

template <int kValueTiles>
const void* narrow_kernel(bool async) {
  return async ? reinterpret_cast<const void*>(attention_flash_kernel<kValueTiles, true>)
               : reinterpret_cast<const void*>(attention_flash_kernel<kValueTiles, false>);
}

const void* kernel_for(const FlashShape& shape, bool async) {
  if (shape.groups == 2) return shape.value_tiles == 16 ? wide_kernel<2, 16>(async) : wide_kernel<2, 8>(async);
  if (shape.groups == 1) {
    return shape.value_tiles == 8   ? wide_kernel<1, 8>(async)
           : shape.value_tiles == 4 ? wide_kernel<1, 4>(async)
                                    : wide_kernel<1, 2>(async);
  }
  return shape.value_tiles == 8   ? narrow_kernel<8>(async)
         : shape.value_tiles == 4 ? narrow_kernel<4>(async)
                                  : narrow_kernel<2>(async);
}

bool aligned16(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

// cp.async moves whole 16-byte chunks: every part's width and every stride a multiple of 8 bf16,
// every base 16-byte aligned.
bool async_copies(const AttentionParams& p) {
  const int64_t main_width = main_width_of(p);
  std::vector<int64_t> counts = {main_width, p.score_dim - main_width, p.value_dim};
  if (p.latent_pages != nullptr) {
    counts.push_back(p.latent_pages->row_width());
  } else {
    counts.insert(counts.end(), {p.key_batch_stride, p.key_pos_stride, p.key_head_stride, p.key_tail_batch_stride,
                                 p.key_tail_pos_stride, p.key_tail_head_stride, p.value_batch_stride,
                                 p.value_pos_stride, p.value_head_stride});
  }
  for (const int64_t count : counts) {
    if (count % kChunk != 0) return false;
  }
  if (p.latent_pages != nullptr) return aligned16(p.latent_pages->pool);
  return aligned16(p.key_bf16) && aligned16(p.value_bf16) && aligned16(p.key_tail_bf16);
}

bool shape_served(const AttentionParams& p) {
  const int64_t main_width = main_width_of(p);
  const bool pages_bf16 =
      p.latent_pages == nullptr || (p.latent_pages->dtype == LatentDType::BF16 && p.key_head_stride == 0 &&
                                    p.value_head_stride == 0 && p.latent_pages->row_width() == p.score_dim);
  const FlashShape shape = flash_shape(p);
  // The wide kernel reads the values from the staged key rows: their first value_dim columns,
  // which its computed columns must not run past.
  const FlashLayout layout = layout_for(p, shape);
  const bool wide_fits = shape.groups == 0 || (p.value_dim <= main_width && layout.value_cols <= layout.dim_pad);
  return p.round_to_bf16 && p.seq_start_pos == nullptr && pages_bf16 && p.kv_shards == 1 && p.lse == nullptr &&
         p.out_bf16 == nullptr && p.score_dim > 0 && main_width > 0 && main_width <= p.score_dim &&
         (p.score_split == 0 || p.score_split == main_width) && shape.value_tiles != 0 && wide_fits &&
         p.batch <= 65535 && p.n_heads <= 65535;
}

// The kernel's arguments and launch configuration.
struct FlashLaunch {
  AttentionParams params;
  FlashLayout layout;
  PagedLatentView cache;  // *params.latent_pages by value, or empty
  dim3 grid;
  cudaStream_t stream;
};

template <int kValueTiles>
void launch_narrow(const FlashLaunch& f, bool async) {
  const size_t bytes = static_cast<size_t>(f.layout.bytes);
  if (async) {
    attention_flash_kernel<kValueTiles, true><<<f.grid, kNarrowThreads, bytes, f.stream>>>(f.params, f.layout, f.cache);
  } else {
    attention_flash_kernel<kValueTiles, false>
        <<<f.grid, kNarrowThreads, bytes, f.stream>>>(f.params, f.layout, f.cache);
  }
}

template <int kGroups, int kValueTiles>
void launch_wide(const FlashLaunch& f, bool async) {
  const size_t bytes = static_cast<size_t>(f.layout.bytes);
  constexpr int kThreads = kRowWarps * kGroups * 32;
  if (async) {
    attention_flash_wide_kernel<kGroups, kValueTiles, true>
        <<<f.grid, kThreads, bytes, f.stream>>>(f.params, f.layout, f.cache);
  } else {
    attention_flash_wide_kernel<kGroups, kValueTiles, false>
        <<<f.grid, kThreads, bytes, f.stream>>>(f.params, f.layout, f.cache);
  }
}

void launch(const FlashLaunch& f, const FlashShape& shape, bool async) {
  if (shape.groups == 2) return shape.value_tiles == 16 ? launch_wide<2, 16>(f, async) : launch_wide<2, 8>(f, async);
  if (shape.groups == 1) {
    if (shape.value_tiles == 8) return launch_wide<1, 8>(f, async);
    if (shape.value_tiles == 4) return launch_wide<1, 4>(f, async);
    return launch_wide<1, 2>(f, async);
  }
  if (shape.value_tiles == 8) return launch_narrow<8>(f, async);
  if (shape.value_tiles == 4) return launch_narrow<4>(f, async);
  launch_narrow<2>(f, async);
}

// The wide kernel reads values from the staged keys: unpaged, they must be the keys' own rows.
bool values_are_key_rows(const AttentionParams& p) {
  return p.latent_pages != nullptr ||
         (p.value_bf16 == p.key_bf16 && p.value_batch_stride == p.key_batch_stride &&
          p.value_pos_stride == p.key_pos_stride && p.value_head_stride == p.key_head_stride);
}

}  // namespace

int64_t attention_flash_shared_bytes(const AttentionParams& p) { return layout_for(p, flash_shape(p)).bytes; }

bool attention_flash_applies(const AttentionParams& p) {
  if (!shape_served(p)) return false;
  const FlashShape shape = flash_shape(p);
  const int64_t limit = reserve_dynamic_shared_bytes(kernel_for(shape, async_copies(p)), 0);
  return layout_for(p, shape).bytes <= limit;
}

void attention_flash_cuda(const AttentionParams& p, cudaStream_t stream) {
  if (!attention_flash_applies(p)) {
    throw std::invalid_argument("attention_flash_cuda: a step it does not take (bf16 " +
                                std::to_string(p.round_to_bf16) + ", score_split " + std::to_string(p.score_split) +
                                ", score_dim " + std::to_string(p.score_dim) + ", value_dim " +
                                std::to_string(p.value_dim) + ", ragged, fp32/fp8 pages, split or log-sum-exps)");
  }
  const FlashShape shape = flash_shape(p);
  const bool keys_given = p.latent_pages != nullptr || (p.key_bf16 != nullptr && p.value_bf16 != nullptr);
  if (!keys_given || p.out == nullptr || (p.q == nullptr && p.q_bf16 == nullptr) ||
      (shape.groups > 0 && !values_are_key_rows(p))) {
    throw std::invalid_argument(
        "attention_flash_cuda: needs bf16 keys and values (split scores: values in the key rows, or bf16 pages), "
        "queries and an fp32 output");
  }
  if (p.batch == 0 || p.seq == 0 || p.n_heads == 0) return;
  const bool async = async_copies(p);
  FlashLaunch f{p, layout_for(p, shape), p.latent_pages != nullptr ? *p.latent_pages : PagedLatentView{}, dim3(),
                stream};
  reserve_dynamic_shared_bytes(kernel_for(shape, async), f.layout.bytes);
  const bool heads_share_keys = p.key_head_stride == 0 && p.value_head_stride == 0;
  const int64_t group_rows = heads_share_keys ? p.n_heads * p.seq : p.seq;
  f.grid = dim3(static_cast<unsigned>((group_rows + kRows - 1) / kRows), static_cast<unsigned>(p.batch),
                heads_share_keys ? 1u : static_cast<unsigned>(p.n_heads));
  launch(f, shape, async);
  CUDA_CHECK_LAUNCH("attention_flash_kernel");
}

}  // namespace mla
