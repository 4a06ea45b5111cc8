#include <cuda_bf16.h>
#include <stdexcept>
#include <string>

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
// positions where every head reads the same keys), 16 per warp. Each warp keeps its rows' scores
// for a stage (16 x 64), their running maxima and sums and their output sums (16 x value columns)
// in registers; the block shares the queries and the stages in shared memory.
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = kWarps * 16;
constexpr int kKeys = 64;               // positions per stage
constexpr int kScoreTiles = kKeys / 8;  // a warp's 16 x 8 score tiles per stage
constexpr int kChunk = 8;               // bf16 per 16-byte copy

__host__ __device__ inline int round_up(int64_t value, int step) {
  return static_cast<int>((value + step - 1) / step * step);
}

// Shared memory: the queries [kRows][ldq], then two stages of keys [kKeys][ldk] and of values
// [kKeys][ldv]. Rows are padded by 8 bf16 (16 bytes): ldmatrix reads 8 rows of 16 bytes at a time,
// and these strides put them in 8 different bank groups. Score dimensions past score_dim and
// value columns past value_dim are zeros.
struct FlashLayout {
  int dim_pad = 0;    // score dimensions, whole k16 steps
  int value_pad = 0;  // value columns the kernel computes: kValueTiles x 16
  int ldq = 0, ldk = 0, ldv = 0;
  int k_offset = 0, v_offset = 0, bytes = 0;
};

FlashLayout flash_layout(const AttentionParams& p, int value_tiles) {
  FlashLayout l;
  l.dim_pad = round_up(p.score_dim, 16);
  l.value_pad = value_tiles * 16;
  l.ldq = l.ldk = l.dim_pad + kChunk;
  l.ldv = l.value_pad + kChunk;
  l.k_offset = kRows * l.ldq * 2;
  l.v_offset = l.k_offset + 2 * kKeys * l.ldk * 2;
  l.bytes = l.v_offset + 2 * kKeys * l.ldv * 2;
  return l;
}

// Where one block's keys and values are: dimension d < main_width of position t at
// main + t * main_stride + d, the others at tail + t * tail_stride + (d - main_width).
struct KeySource {
  const __nv_bfloat16* main;
  int64_t main_stride;
  int main_width;
  const __nv_bfloat16* tail;
  int64_t tail_stride;
  int score_dim;
  const __nv_bfloat16* values;
  int64_t value_stride;
  int value_dim;

  __device__ __nv_bfloat16 key(int64_t t, int d) const {
    if (d < main_width) return main[t * main_stride + d];
    return d < score_dim ? tail[t * tail_stride + (d - main_width)] : __float2bfloat16_rn(0.0f);
  }
  __device__ __nv_bfloat16 value(int64_t t, int d) const {
    return d < value_dim ? values[t * value_stride + d] : __float2bfloat16_rn(0.0f);
  }
};

__device__ KeySource key_source(const AttentionParams& p, int64_t b, int64_t head) {
  KeySource s;
  s.main = reinterpret_cast<const __nv_bfloat16*>(p.key_bf16) + b * p.key_batch_stride + head * p.key_head_stride;
  s.main_stride = p.key_pos_stride;
  s.score_dim = static_cast<int>(p.score_dim);
  s.main_width = p.key_tail_bf16 != nullptr ? static_cast<int>(p.key_tail_from) : s.score_dim;
  s.tail = p.key_tail_bf16 != nullptr ? reinterpret_cast<const __nv_bfloat16*>(p.key_tail_bf16) +
                                            b * p.key_tail_batch_stride + head * p.key_tail_head_stride
                                      : s.main + s.main_width;
  s.tail_stride = p.key_tail_bf16 != nullptr ? p.key_tail_pos_stride : p.key_pos_stride;
  s.values =
      reinterpret_cast<const __nv_bfloat16*>(p.value_bf16) + b * p.value_batch_stride + head * p.value_head_stride;
  s.value_stride = p.value_pos_stride;
  s.value_dim = static_cast<int>(p.value_dim);
  return s;
}

// Calls chunk(r, d) for every 16-byte chunk of a stage's tile `width` columns wide (row r of
// kKeys, columns d .. d + 7), spread over the block's threads.
template <typename Chunk>
__device__ __forceinline__ void for_each_chunk(int width, Chunk chunk) {
  const int chunks = width / kChunk;
  for (int i = threadIdx.x; i < kKeys * chunks; i += kThreads) chunk(i / chunks, (i % chunks) * kChunk);
}

// Positions [first, first + kKeys) of the keys and values into one stage; positions from `end` on
// are zeros (a zero value row adds nothing, and no garbage NaN can meet a zero probability).
// kAsync: 16-byte cp.async copies, which the host allows only where every part's width, stride and
// base is a whole number of 16-byte chunks; otherwise element by element through registers.
template <bool kAsync>
__device__ __forceinline__ void stage_keys_values(const KeySource& s, const FlashLayout& l, int64_t first, int64_t end,
                                                  __nv_bfloat16* keys, __nv_bfloat16* values) {
  for_each_chunk(l.dim_pad, [&](int r, int d) {
    const int64_t t = first + r;
    __nv_bfloat16* to = keys + r * l.ldk + d;
    if constexpr (kAsync) {
      const bool valid = t < end && d < s.score_dim;
      const __nv_bfloat16* from = !valid             ? s.main
                                  : d < s.main_width ? s.main + t * s.main_stride + d
                                                     : s.tail + t * s.tail_stride + (d - s.main_width);
      copy_16_async(to, from, valid);
    } else {
#pragma unroll
      for (int e = 0; e < kChunk; ++e) to[e] = t < end ? s.key(t, d + e) : __float2bfloat16_rn(0.0f);
    }
  });
  for_each_chunk(l.value_pad, [&](int r, int d) {
    const int64_t t = first + r;
    __nv_bfloat16* to = values + r * l.ldv + d;
    if constexpr (kAsync) {
      const bool valid = t < end && d < s.value_dim;
      copy_16_async(to, valid ? s.values + t * s.value_stride + d : s.values, valid);
    } else {
#pragma unroll
      for (int e = 0; e < kChunk; ++e) to[e] = t < end ? s.value(t, d + e) : __float2bfloat16_rn(0.0f);
    }
  });
}

// The block's query rows as bf16 (exact: bf16 mode's queries are bf16 numbers), zeros past the
// group's rows and past score_dim. Read once per block, through registers.
__device__ __forceinline__ void stage_queries(const AttentionParams& p, const cuda_detail::BlockRows& rows,
                                              const FlashLayout& l, __nv_bfloat16* q_tile) {
  const auto* q_bits = reinterpret_cast<const __nv_bfloat16*>(p.q_bf16);
  for (int i = threadIdx.x; i < kRows * l.dim_pad; i += kThreads) {
    const int r = i / l.dim_pad;
    const int d = i % l.dim_pad;
    const int64_t row = rows.first_row + r;
    __nv_bfloat16 value = __float2bfloat16_rn(0.0f);
    if (row < rows.group_rows && d < p.score_dim) {
      const int64_t at =
          (rows.b * p.seq + rows.position_of(row)) * p.q_token_stride + rows.head_of(row) * p.q_head_stride + d;
      value = q_bits != nullptr ? q_bits[at] : __float2bfloat16_rn(p.q[at]);
    }
    q_tile[r * l.ldq + d] = value;
  }
}

// One function, longer than the project's usual 80 lines, for the reason given at
// attention_fast_mma_kernel: the scores, running maxima, sums and output sums live in registers
// across the whole walk over the keys, and split into device functions they would be passed by
// reference everywhere. kValueTiles: 16-column tiles of the output, each warp all of them.
template <int kValueTiles, bool kAsync>
__global__ void __launch_bounds__(kThreads, 2) attention_flash_kernel(AttentionParams p, FlashLayout l) {
  extern __shared__ __align__(128) unsigned char shared[];
  auto* q_tile = reinterpret_cast<__nv_bfloat16*>(shared);
  auto* key_stages = reinterpret_cast<__nv_bfloat16*>(shared + l.k_offset);    // [2][kKeys][ldk]
  auto* value_stages = reinterpret_cast<__nv_bfloat16*>(shared + l.v_offset);  // [2][kKeys][ldv]

  const cuda_detail::BlockRows rows(p, kRows);
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const KeySource source = key_source(p, rows.b, rows.head);

  stage_queries(p, rows, l, q_tile);
  // The most positions any row of the block sees, and of the warp's rows (a causal block's first
  // warps stop earlier). This thread's two rows: lane / 4 and the one 8 below, of the warp's 16.
  int64_t block_visible = 0, warp_visible = 0;
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = rows.first_row + r;
    if (row >= rows.group_rows) break;
    const int64_t visible = cuda_detail::visible_len(p, rows.position_of(row));
    block_visible = max(block_visible, visible);
    if (r / 16 == warp) warp_visible = max(warp_visible, visible);
  }
  bool row_valid[2];
  int64_t row_position[2], row_visible[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t row = rows.first_row + warp * 16 + flash_lanes::accumulator_row(lane, 2 * half);
    row_valid[half] = row < rows.group_rows;
    row_position[half] = row_valid[half] ? rows.position_of(row) : 0;
    row_visible[half] = row_valid[half] ? cuda_detail::visible_len(p, row_position[half]) : 0;
  }

  float running_max[2] = {-INFINITY, -INFINITY};
  float running_sum[2] = {0.0f, 0.0f};  // this thread's share; the row's 4 threads add theirs at the end
  float out_sum[2 * kValueTiles][4];
#pragma unroll
  for (int nt = 0; nt < 2 * kValueTiles; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) out_sum[nt][e] = 0.0f;
  }

  // This lane's ldmatrix addresses within the query, key and value tiles (attention_flash_lanes.h).
  const flash_lanes::TileCell query_at = flash_lanes::query_cell(lane);
  const flash_lanes::TileCell key_at = flash_lanes::key_cell(lane);
  const flash_lanes::TileCell value_at = flash_lanes::value_cell(lane);

  const int stages = static_cast<int>((block_visible + kKeys - 1) / kKeys);
  if (stages > 0) {
    stage_keys_values<kAsync>(source, l, 0, block_visible, key_stages, value_stages);
    commit_copies();
  }
  for (int stage = 0; stage < stages; ++stage) {
    const int buffer = stage % 2;
    if (stage + 1 < stages) {  // the other buffer was last read before the previous iteration's barrier
      stage_keys_values<kAsync>(source, l, int64_t{stage + 1} * kKeys, block_visible,
                                key_stages + (1 - buffer) * kKeys * l.ldk, value_stages + (1 - buffer) * kKeys * l.ldv);
      commit_copies();
      wait_copies<1>();
    } else {
      wait_copies<0>();
    }
    __syncthreads();  // this stage (and, the first time, the queries) in place for every warp
    const int64_t first_key = int64_t{stage} * kKeys;
    if (first_key < warp_visible) {
      const __nv_bfloat16* keys = key_stages + buffer * kKeys * l.ldk;
      const __nv_bfloat16* values = value_stages + buffer * kKeys * l.ldv;

      // Scores: the warp's 16 rows x 64 keys, summed over the score dimensions 16 at a time.
      float score[kScoreTiles][4];
#pragma unroll
      for (int st = 0; st < kScoreTiles; ++st) {
#pragma unroll
        for (int e = 0; e < 4; ++e) score[st][e] = 0.0f;
      }
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

      // Finish each score as the CPU twin does (bf16 roundings, scale, mask); positions a row
      // does not see are -inf. Then the online softmax, a row (lane / 4 + 8 half) at a time: its
      // maximum over the stage across the 4 threads that hold it, earlier sums and outputs
      // rescaled by exp(old max - new max), the scores replaced by exp(score - new max).
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float stage_max = -INFINITY;
#pragma unroll
        for (int st = 0; st < kScoreTiles; ++st) {
#pragma unroll
          for (int e = 2 * half; e < 2 * half + 2; ++e) {
            const int64_t t = first_key + st * 8 + flash_lanes::accumulator_col(lane, e);
            float& s = score[st][e];
            s = t < row_visible[half]
                    ? cuda_detail::apply_mask(p, cuda_detail::finish_score(s, 0.0f, p.scale, false, true),
                                              row_position[half], t)
                    : -INFINITY;
            stage_max = fmaxf(stage_max, s);
          }
        }
        stage_max = fmaxf(stage_max, __shfl_xor_sync(0xffffffffu, stage_max, 1));
        stage_max = fmaxf(stage_max, __shfl_xor_sync(0xffffffffu, stage_max, 2));
        const float new_max = fmaxf(running_max[half], stage_max);
        // A row that has seen only -inf so far keeps every exp at 0 rather than NaN.
        const float base = new_max == -INFINITY ? 0.0f : new_max;
        const float rescale = expf(running_max[half] - base);
        running_max[half] = new_max;
        running_sum[half] *= rescale;
#pragma unroll
        for (int nt = 0; nt < 2 * kValueTiles; ++nt) {
          out_sum[nt][2 * half] *= rescale;
          out_sum[nt][2 * half + 1] *= rescale;
        }
#pragma unroll
        for (int st = 0; st < kScoreTiles; ++st) {
#pragma unroll
          for (int e = 2 * half; e < 2 * half + 2; ++e) {
            score[st][e] = expf(score[st][e] - base);
            running_sum[half] += score[st][e];
          }
        }
      }

      // out += exp(scores) x values. The score accumulators of two 8-key tiles are, in place,
      // the 16 x 16 row operand of a step over 16 positions (the fragments line up).
#pragma unroll
      for (int k0 = 0; k0 < kKeys / 16; ++k0) {
        const uint32_t prob_operand[4] = {pack_bf16_pair(score[2 * k0][0], score[2 * k0][1]),
                                          pack_bf16_pair(score[2 * k0][2], score[2 * k0][3]),
                                          pack_bf16_pair(score[2 * k0 + 1][0], score[2 * k0 + 1][1]),
                                          pack_bf16_pair(score[2 * k0 + 1][2], score[2 * k0 + 1][3])};
#pragma unroll
        for (int vt = 0; vt < kValueTiles; ++vt) {
          uint32_t value_operand[4];
          load_matrices_x4<true>(value_operand, values + (k0 * 16 + value_at.row) * l.ldv + vt * 16 + value_at.col);
          mma_bf16_16x8x16(out_sum[2 * vt], prob_operand, value_operand[0], value_operand[1]);
          mma_bf16_16x8x16(out_sum[2 * vt + 1], prob_operand, value_operand[2], value_operand[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with this buffer before the next iteration refills it
  }

  // Each row's sum over its 4 threads; the outputs divided by it and rounded to bf16. A row that
  // sees nothing (every score -inf) writes zeros.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float sum = running_sum[half];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    if (!row_valid[half]) continue;
    const int64_t row = rows.first_row + warp * 16 + flash_lanes::accumulator_row(lane, 2 * half);
    float* out =
        p.out + (rows.b * p.seq + row_position[half]) * p.out_token_stride + rows.head_of(row) * p.out_head_stride;
#pragma unroll
    for (int nt = 0; nt < 2 * kValueTiles; ++nt) {
#pragma unroll
      for (int e = 2 * half; e < 2 * half + 2; ++e) {
        const int col = nt * 8 + flash_lanes::accumulator_col(lane, e);
        if (col < p.value_dim) out[col] = cuda_detail::round_bf16(sum > 0.0f ? __fdiv_rn(out_sum[nt][e], sum) : 0.0f);
      }
    }
  }
}

// The value tiles a step needs, among the instantiated 2, 4 and 8 (0: value_dim > 128).
int value_tiles_for(const AttentionParams& p) {
  const int tiles = round_up(p.value_dim, 16) / 16;
  return tiles <= 2 ? 2 : tiles <= 4 ? 4 : tiles <= 8 ? 8 : 0;
}

template <int kValueTiles>
const void* kernel_for(bool async) {
  return async ? reinterpret_cast<const void*>(attention_flash_kernel<kValueTiles, true>)
               : reinterpret_cast<const void*>(attention_flash_kernel<kValueTiles, false>);
}

const void* kernel_for(int value_tiles, bool async) {
  return value_tiles == 8 ? kernel_for<8>(async) : value_tiles == 4 ? kernel_for<4>(async) : kernel_for<2>(async);
}

template <int kValueTiles>
void launch(const AttentionParams& p, const FlashLayout& layout, bool async, dim3 grid, cudaStream_t stream) {
  const size_t bytes = static_cast<size_t>(layout.bytes);
  if (async) {
    attention_flash_kernel<kValueTiles, true><<<grid, kThreads, bytes, stream>>>(p, layout);
  } else {
    attention_flash_kernel<kValueTiles, false><<<grid, kThreads, bytes, stream>>>(p, layout);
  }
}

bool aligned16(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

// cp.async moves whole 16-byte chunks: every part's width and every stride a multiple of 8 bf16,
// every base 16-byte aligned.
bool async_copies(const AttentionParams& p) {
  const int64_t main_width = p.key_tail_bf16 != nullptr ? p.key_tail_from : p.score_dim;
  const int64_t counts[] = {
      main_width,         p.score_dim - main_width, p.value_dim,           p.key_batch_stride,     p.key_pos_stride,
      p.key_head_stride,  p.key_tail_batch_stride,  p.key_tail_pos_stride, p.key_tail_head_stride, p.value_batch_stride,
      p.value_pos_stride, p.value_head_stride};
  for (const int64_t count : counts) {
    if (count % kChunk != 0) return false;
  }
  return aligned16(p.key_bf16) && aligned16(p.value_bf16) && aligned16(p.key_tail_bf16);
}

bool shape_served(const AttentionParams& p) {
  const bool tail_inside = p.key_tail_bf16 == nullptr || (p.key_tail_from > 0 && p.key_tail_from < p.score_dim);
  return p.round_to_bf16 && p.score_split == 0 && p.seq_start_pos == nullptr && p.latent_pages == nullptr &&
         p.kv_shards == 1 && p.lse == nullptr && p.out_bf16 == nullptr && p.score_dim > 0 && tail_inside &&
         value_tiles_for(p) != 0 && p.batch <= 65535 && p.n_heads <= 65535;
}

}  // namespace

int64_t attention_flash_shared_bytes(const AttentionParams& p) { return flash_layout(p, value_tiles_for(p)).bytes; }

bool attention_flash_applies(const AttentionParams& p) {
  if (!shape_served(p)) return false;
  const int value_tiles = value_tiles_for(p);
  const int64_t limit = reserve_dynamic_shared_bytes(kernel_for(value_tiles, async_copies(p)), 0);
  return flash_layout(p, value_tiles).bytes <= limit;
}

void attention_flash_cuda(const AttentionParams& p, cudaStream_t stream) {
  if (!attention_flash_applies(p)) {
    throw std::invalid_argument("attention_flash_cuda: a step it does not take (bf16 " +
                                std::to_string(p.round_to_bf16) + ", score_split " + std::to_string(p.score_split) +
                                ", score_dim " + std::to_string(p.score_dim) + ", value_dim " +
                                std::to_string(p.value_dim) + ", ragged, paged, split or log-sum-exps)");
  }
  if (p.key_bf16 == nullptr || p.value_bf16 == nullptr || p.out == nullptr || (p.q == nullptr && p.q_bf16 == nullptr)) {
    throw std::invalid_argument("attention_flash_cuda: needs bf16 keys and values, queries and an fp32 output");
  }
  if (p.batch == 0 || p.seq == 0 || p.n_heads == 0) return;
  const int value_tiles = value_tiles_for(p);
  const bool async = async_copies(p);
  const FlashLayout layout = flash_layout(p, value_tiles);
  reserve_dynamic_shared_bytes(kernel_for(value_tiles, async), layout.bytes);
  const bool heads_share_keys = p.key_head_stride == 0 && p.value_head_stride == 0;
  const int64_t group_rows = heads_share_keys ? p.n_heads * p.seq : p.seq;
  const dim3 grid(static_cast<unsigned>((group_rows + kRows - 1) / kRows), static_cast<unsigned>(p.batch),
                  heads_share_keys ? 1u : static_cast<unsigned>(p.n_heads));
  if (value_tiles == 8) {
    launch<8>(p, layout, async, grid, stream);
  } else if (value_tiles == 4) {
    launch<4>(p, layout, async, grid, stream);
  } else {
    launch<2>(p, layout, async, grid, stream);
  }
  CUDA_CHECK_LAUNCH("attention_flash_kernel");
}

}  // namespace mla
