#include <mma.h>

#include <algorithm>
#include <cuda_bf16.h>
#include <string>

#include "kernels/cuda/attention_fast_mma.h"
#include "kernels/cuda/attention_rows.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/softmax.cuh"

namespace mla {

namespace {

namespace wmma = nvcuda::wmma;

// A block holds 16, 32 or 64 query rows that read the same keys (positions of one head in naive;
// heads x positions in absorb, where every head reads the one latent cache). Eight warps share
// the work: in the score product each warp takes 16 keys of a stage of 128, for all the block's
// rows; in the value product each warp takes 16-column slices of the output.
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kTile = 16;                  // the matrix instructions' 16 x 16 x 16 shape
constexpr int kKeyStage = kWarps * kTile;  // keys staged in shared memory at a time
constexpr int kOutputTiles = 4;            // value-product accumulator tiles per warp
constexpr int kLoadBatch = 8;              // loads each thread keeps in flight while staging

__host__ __device__ inline int round_up(int64_t value, int step) {
  return static_cast<int>((value + step - 1) / step * step);
}

// Where a block's tiles live in shared memory. Row strides are padded (8 bf16 or 4 fp32) so that
// the rows of a tile start in different banks; the matrix loads need 32-byte aligned tiles and
// strides that are multiples of 16 bytes, which these keep. Keys and values are staged in as few
// pieces as fit: each stage is a round trip to memory that the block waits for.
struct MmaLayout {
  int row_tiles = 0;               // query rows per block / 16
  int main_dim = 0, tail_dim = 0;  // the score's two sums (absorb's latent and rope parts); tail 0: one
  int main_pad = 0, dim_pad = 0;   // each part padded to whole tiles, zeros in the padding
  int value_pad = 0;
  int dim_stage = 0;    // score dimensions of the keys staged at a time
  int value_stage = 0;  // positions of values staged at a time
  int kv_pad = 0;       // positions, padded to whole value stages
  int ldq = 0, ldk = 0, lds = 0, ldp = 0, ldv = 0, ldo = 0;
  int q_offset = 0, k_offset = 0, s_offset = 0, tail_offset = 0, p_offset = 0, v_offset = 0;  // bytes
  int bytes = 0;
};

MmaLayout mma_layout(const AttentionParams& p, int row_tiles, int dim_stage, int value_stage) {
  MmaLayout l;
  l.row_tiles = row_tiles;
  const bool split = p.score_split > 0;
  l.main_dim = static_cast<int>(split ? p.score_split : p.score_dim);
  l.tail_dim = static_cast<int>(split ? p.score_dim - p.score_split : 0);
  l.main_pad = round_up(l.main_dim, kTile);
  l.dim_pad = l.main_pad + round_up(l.tail_dim, kTile);
  l.value_pad = round_up(p.value_dim, kTile);
  l.dim_stage = std::min(dim_stage, l.dim_pad);
  l.value_stage = value_stage;
  l.kv_pad = round_up(p.kv_len, value_stage);
  l.ldq = l.dim_pad + 8;
  l.ldk = l.dim_stage + 8;
  l.lds = l.kv_pad + 4;
  l.ldp = l.kv_pad + 8;
  l.ldv = l.value_pad + 8;
  l.ldo = l.value_pad + 4;  // the output tile reuses the scores' space once the softmax is done
  const int rows = row_tiles * kTile;
  int offset = 0;
  const auto take = [&offset](int64_t bytes) {
    const int at = offset;
    offset += round_up(bytes, 128);
    return at;
  };
  l.q_offset = take(int64_t{rows} * l.ldq * 2);
  l.k_offset = take(int64_t{kKeyStage} * l.ldk * 2);
  l.s_offset = take(int64_t{rows} * std::max(l.lds, l.ldo) * 4);
  l.tail_offset = take(int64_t{kWarps} * kTile * kTile * 4);
  l.p_offset = take(int64_t{rows} * l.ldp * 2);
  l.v_offset = take(int64_t{value_stage} * l.ldv * 2);
  l.bytes = offset;
  return l;
}

// Stages `rows` rows of `cols` padded columns from col0 on, fp32 in device memory, into bf16
// shared memory dst [rows][ld] (exact: bf16 mode's operands are bf16 numbers). row_at(r): the
// source row, nullptr for zeros; column_at(c): the source column of padded column c, -1 for
// padding. kVector: groups of 4 columns read with 16-byte loads, which the host allows only where
// every group is whole, in one part and aligned.
template <bool kVector, typename RowAt, typename ColumnAt>
__device__ __forceinline__ void stage_bf16(int rows, int col0, int cols, RowAt row_at, ColumnAt column_at,
                                           __nv_bfloat16* dst, int ld) {
  constexpr int kWidth = kVector ? 4 : 1;
  const int groups_per_row = cols / kWidth;
  const int groups = rows * groups_per_row;
  for (int base = threadIdx.x; base < groups; base += kLoadBatch * kThreads) {
    float staged[kLoadBatch][kWidth];  // every load of the batch issued before the first store
#pragma unroll
    for (int i = 0; i < kLoadBatch; ++i) {
      const int g = base + i * kThreads;
      const float* row = g < groups ? row_at(g / groups_per_row) : nullptr;
      const int column = row != nullptr ? column_at(col0 + (g % groups_per_row) * kWidth) : -1;
      if constexpr (kVector) {
        const float4 v = column >= 0 ? *reinterpret_cast<const float4*>(row + column) : make_float4(0, 0, 0, 0);
        staged[i][0] = v.x;
        staged[i][1] = v.y;
        staged[i][2] = v.z;
        staged[i][3] = v.w;
      } else {
        staged[i][0] = column >= 0 ? row[column] : 0.0f;
      }
    }
#pragma unroll
    for (int i = 0; i < kLoadBatch; ++i) {
      const int g = base + i * kThreads;
      if (g >= groups) break;
      __nv_bfloat16* out = dst + (g / groups_per_row) * ld + (g % groups_per_row) * kWidth;
      if constexpr (kVector) {
        const __nv_bfloat162 low = __floats2bfloat162_rn(staged[i][0], staged[i][1]);
        const __nv_bfloat162 high = __floats2bfloat162_rn(staged[i][2], staged[i][3]);
        uint2 packed;
        packed.x = *reinterpret_cast<const uint32_t*>(&low);
        packed.y = *reinterpret_cast<const uint32_t*>(&high);
        *reinterpret_cast<uint2*>(out) = packed;
      } else {
        out[0] = __float2bfloat16_rn(staged[i][0]);
      }
    }
  }
}

int64_t group_rows_of(const AttentionParams& p) {
  const bool heads_share_keys = p.key_head_stride == 0 && p.value_head_stride == 0;
  return heads_share_keys ? p.n_heads * p.seq : p.seq;
}

// One function, longer than the project's usual 80 lines, on purpose: the fused fast path keeps a
// block's query fragments, running maxima, sums and output accumulators in registers across the
// whole walk over the keys. Its phases (stage keys, score tiles, online softmax, value products,
// finish) share those registers and the stage's shared memory; split into device functions they
// would pass them all by reference, and the register allocation is what decides this kernel's speed.
template <int kRowTiles, bool kVector>
__global__ void __launch_bounds__(kThreads) attention_fast_mma_kernel(AttentionParams p, MmaLayout l) {
  constexpr int kRows = kRowTiles * kTile;
  constexpr int kColTiles = kOutputTiles / kRowTiles;  // output column tiles per warp
  using Accumulator = wmma::fragment<wmma::accumulator, kTile, kTile, kTile, float>;
  using RowOperand = wmma::fragment<wmma::matrix_a, kTile, kTile, kTile, __nv_bfloat16, wmma::row_major>;

  extern __shared__ __align__(128) unsigned char shared[];
  __nv_bfloat16* q_tile = reinterpret_cast<__nv_bfloat16*>(shared + l.q_offset);       // [kRows][ldq]
  __nv_bfloat16* key_stage = reinterpret_cast<__nv_bfloat16*>(shared + l.k_offset);    // [kKeyStage][ldk]
  float* scores = reinterpret_cast<float*>(shared + l.s_offset);                       // [kRows][lds]
  __nv_bfloat16* probs = reinterpret_cast<__nv_bfloat16*>(shared + l.p_offset);        // [kRows][ldp]
  __nv_bfloat16* value_stage = reinterpret_cast<__nv_bfloat16*>(shared + l.v_offset);  // [value_stage][ldv]

  const cuda_detail::BlockRows rows(p, kRows);
  const int64_t b = rows.b;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  float* tail_tile = reinterpret_cast<float*>(shared + l.tail_offset) + warp * kTile * kTile;  // [16][16]
  const bool split = l.tail_dim > 0;
  const int main_steps = l.main_pad / kTile;
  // Padded score column c -> the dimension it holds, or -1 for padding.
  const auto source_dim = [&](int c) {
    if (c < l.main_pad) return c < l.main_dim ? c : -1;
    return c - l.main_pad < l.tail_dim ? l.main_dim + c - l.main_pad : -1;
  };

  stage_bf16<kVector>(
      kRows, 0, l.dim_pad,
      [&](int r) -> const float* {
        const int64_t row = rows.first_row + r;
        if (row >= rows.group_rows) return nullptr;
        return p.q + (b * p.seq + rows.position_of(row)) * p.q_token_stride + rows.head_of(row) * p.q_head_stride;
      },
      source_dim, q_tile, l.ldq);
  int64_t block_visible = 0;  // the most positions any row of the block sees
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = rows.first_row + r;
    if (row < rows.group_rows) block_visible = max(block_visible, cuda_detail::visible_len(p, rows.position_of(row)));
  }

  // Scores: per stage of 128 keys, the 16 x 16 products accumulate over the score dimensions
  // (the latent and rope parts in separate accumulators when split), then each warp finishes
  // its tiles (scale, bf16 rounding, mask) in place in the score rows.
  const float* keys = p.keys + b * p.key_batch_stride + rows.head * p.key_head_stride;
  for (int64_t stage = 0; stage < block_visible; stage += kKeyStage) {
    Accumulator main_sum[kRowTiles], tail_sum[kRowTiles];
#pragma unroll
    for (int rt = 0; rt < kRowTiles; ++rt) {
      wmma::fill_fragment(main_sum[rt], 0.0f);
      wmma::fill_fragment(tail_sum[rt], 0.0f);
    }
    const int64_t warp_key = stage + warp * kTile;
    const bool warp_active = warp_key < block_visible;
    for (int c0 = 0; c0 < l.dim_pad; c0 += l.dim_stage) {
      __syncthreads();  // the queries are in place, and the previous stage is consumed
      stage_bf16<kVector>(
          kKeyStage, c0, min(l.dim_stage, l.dim_pad - c0),
          [&](int k) { return stage + k < block_visible ? keys + (stage + k) * p.key_pos_stride : nullptr; },
          source_dim, key_stage, l.ldk);
      __syncthreads();
      if (warp_active) {
        const int steps = min(l.dim_stage, l.dim_pad - c0) / kTile;
        for (int i = 0; i < steps; ++i) {
          const int step = c0 / kTile + i;
          wmma::fragment<wmma::matrix_b, kTile, kTile, kTile, __nv_bfloat16, wmma::col_major> key_operand;
          wmma::load_matrix_sync(key_operand, key_stage + warp * kTile * l.ldk + i * kTile, l.ldk);
#pragma unroll
          for (int rt = 0; rt < kRowTiles; ++rt) {
            RowOperand q_operand;
            wmma::load_matrix_sync(q_operand, q_tile + rt * kTile * l.ldq + step * kTile, l.ldq);
            if (step < main_steps) {
              wmma::mma_sync(main_sum[rt], q_operand, key_operand, main_sum[rt]);
            } else {
              wmma::mma_sync(tail_sum[rt], q_operand, key_operand, tail_sum[rt]);
            }
          }
        }
      }
    }
    if (warp_active) {
#pragma unroll
      for (int rt = 0; rt < kRowTiles; ++rt) {
        float* tile = scores + rt * kTile * l.lds + warp_key;
        wmma::store_matrix_sync(tile, main_sum[rt], l.lds, wmma::mem_row_major);
        if (split) wmma::store_matrix_sync(tail_tile, tail_sum[rt], kTile, wmma::mem_row_major);
        __syncwarp();
        for (int e = lane; e < kTile * kTile; e += 32) {
          const int i = e / kTile;
          const int j = e % kTile;
          const int64_t row = rows.first_row + rt * kTile + i;
          const int64_t t = warp_key + j;
          if (row >= rows.group_rows || t >= block_visible) continue;
          float& score = tile[i * l.lds + j];
          const float finished = cuda_detail::finish_score(score, split ? tail_tile[e] : 0.0f, p.scale, split, true);
          score = cuda_detail::apply_mask(p, finished, rows.position_of(row), t);
        }
        __syncwarp();  // the tail tile is written again for the next row tile
      }
    }
  }
  __syncthreads();

  // Exact softmax per row (a warp per row): max, exp, sum in double, as the CPU twin; the
  // probabilities rounded to bf16 are exactly the value product's operands. Positions a row
  // does not see, up to the end of the last value stage, get probability 0.
  const int64_t stage_end = round_up(block_visible, l.value_stage);
  for (int r = warp; r < kRows; r += kWarps) {
    const int64_t row = rows.first_row + r;
    const int64_t visible = row < rows.group_rows ? cuda_detail::visible_len(p, rows.position_of(row)) : 0;
    float* row_scores = scores + r * l.lds;
    __nv_bfloat16* row_probs = probs + r * l.ldp;
    if (visible > 0) {
      const float inv_sum = cuda_detail::warp_softmax_exps(row_scores, visible, lane);
      for (int64_t t = lane; t < visible; t += 32) {
        row_probs[t] = __float2bfloat16_rn(__fmul_rn(row_scores[t], inv_sum));
      }
    }
    for (int64_t t = visible + lane; t < stage_end; t += 32) row_probs[t] = __float2bfloat16_rn(0.0f);
  }

  // out = probs x values, per stage of positions; warp w owns output column tiles w, w + 8, ...
  Accumulator out_sum[kRowTiles][kColTiles];
#pragma unroll
  for (int rt = 0; rt < kRowTiles; ++rt) {
#pragma unroll
    for (int j = 0; j < kColTiles; ++j) wmma::fill_fragment(out_sum[rt][j], 0.0f);
  }
  const int col_tiles = l.value_pad / kTile;
  const float* values = p.values + b * p.value_batch_stride + rows.head * p.value_head_stride;
  for (int64_t t0 = 0; t0 < block_visible; t0 += l.value_stage) {
    __syncthreads();  // the probabilities are written, and the previous value stage is consumed
    stage_bf16<kVector>(
        l.value_stage, 0, l.value_pad,
        [&](int k) { return t0 + k < block_visible ? values + (t0 + k) * p.value_pos_stride : nullptr; },
        [&](int c) { return c < p.value_dim ? c : -1; }, value_stage, l.ldv);
    __syncthreads();
    for (int kk = 0; kk < l.value_stage / kTile; ++kk) {
      RowOperand prob_operand[kRowTiles];
#pragma unroll
      for (int rt = 0; rt < kRowTiles; ++rt) {
        wmma::load_matrix_sync(prob_operand[rt], probs + rt * kTile * l.ldp + t0 + kk * kTile, l.ldp);
      }
#pragma unroll
      for (int j = 0; j < kColTiles; ++j) {
        const int col = warp + j * kWarps;
        if (col >= col_tiles) continue;
        wmma::fragment<wmma::matrix_b, kTile, kTile, kTile, __nv_bfloat16, wmma::row_major> value_operand;
        wmma::load_matrix_sync(value_operand, value_stage + kk * kTile * l.ldv + col * kTile, l.ldv);
#pragma unroll
        for (int rt = 0; rt < kRowTiles; ++rt) {
          wmma::mma_sync(out_sum[rt][j], prob_operand[rt], value_operand, out_sum[rt][j]);
        }
      }
    }
  }

  __syncthreads();           // every warp is past the softmax: the score rows become the output tile
  float* out_tile = scores;  // [kRows][ldo]
#pragma unroll
  for (int rt = 0; rt < kRowTiles; ++rt) {
#pragma unroll
    for (int j = 0; j < kColTiles; ++j) {
      const int col = warp + j * kWarps;
      if (col < col_tiles) {
        wmma::store_matrix_sync(out_tile + rt * kTile * l.ldo + col * kTile, out_sum[rt][j], l.ldo,
                                wmma::mem_row_major);
      }
    }
  }
  __syncthreads();
  for (int index = threadIdx.x; index < kRows * p.value_dim; index += kThreads) {
    const int r = static_cast<int>(index / p.value_dim);
    const int c = static_cast<int>(index % p.value_dim);
    const int64_t row = rows.first_row + r;
    if (row >= rows.group_rows) continue;
    float* out =
        p.out + (b * p.seq + rows.position_of(row)) * p.out_token_stride + rows.head_of(row) * p.out_head_stride;
    out[c] = cuda_detail::round_bf16(out_tile[r * l.ldo + c]);
  }
}

template <int kRowTiles>
const void* kernel_for(bool vector) {
  return vector ? reinterpret_cast<const void*>(attention_fast_mma_kernel<kRowTiles, true>)
                : reinterpret_cast<const void*>(attention_fast_mma_kernel<kRowTiles, false>);
}

const void* kernel_for(int row_tiles, bool vector) {
  return row_tiles == 4 ? kernel_for<4>(vector) : row_tiles == 2 ? kernel_for<2>(vector) : kernel_for<1>(vector);
}

template <int kRowTiles>
void launch(const AttentionParams& p, const MmaLayout& layout, bool vector, dim3 grid, cudaStream_t stream) {
  const size_t bytes = static_cast<size_t>(layout.bytes);
  if (vector) {
    attention_fast_mma_kernel<kRowTiles, true><<<grid, kThreads, bytes, stream>>>(p, layout);
  } else {
    attention_fast_mma_kernel<kRowTiles, false><<<grid, kThreads, bytes, stream>>>(p, layout);
  }
}

bool aligned16(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

// 16-byte loads: every stride, part and base a whole number of 4-float groups.
bool vector_loads(const AttentionParams& p) {
  const int64_t counts[] = {p.score_dim,          p.score_split,      p.value_dim,        p.q_token_stride,
                            p.q_head_stride,      p.key_batch_stride, p.key_pos_stride,   p.key_head_stride,
                            p.value_batch_stride, p.value_pos_stride, p.value_head_stride};
  for (const int64_t count : counts) {
    if (count % 4 != 0) return false;
  }
  return aligned16(p.q) && aligned16(p.keys) && aligned16(p.values);
}

#ifndef MLA_MMA_MAX_ROW_TILES
#define MLA_MMA_MAX_ROW_TILES 4  // build-time knobs for measuring the choice below
#endif
#ifndef MLA_MMA_PREFER_OCCUPANCY
#define MLA_MMA_PREFER_OCCUPANCY 1
#endif

// Blocks of one SM at a time, by registers: every variant stays at or under 128 per thread.
constexpr int kMaxBlocksPerSm = 2;

// Among the block sizes (64, 32, 16 rows) the head group fills, whose share of the output
// columns fits each warp's accumulators, and the key and value stage sizes that fit the
// device's shared memory: the layout that keeps the most query rows resident per SM (a block
// waits on each stage's loads, and a second block hides them), then the one with more blocks,
// then larger blocks and stages (fewer stages). row_tiles 0: none fits (too many value columns,
// or a kv_len whose score rows pass the shared memory).
MmaLayout choose_layout(const AttentionParams& p, bool vector) {
  int device = 0, sm_bytes = 0, reserved_bytes = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&sm_bytes, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
  CUDA_CHECK(cudaDeviceGetAttribute(&reserved_bytes, cudaDevAttrReservedSharedMemoryPerBlock, device));
  const int col_tiles = round_up(p.value_dim, kTile) / kTile;
  MmaLayout best;
  int64_t best_rows = 0;
  int best_blocks = 0;
  for (const int row_tiles : {4, 2, 1}) {
    if (row_tiles > MLA_MMA_MAX_ROW_TILES) continue;
    if (row_tiles > 1 && group_rows_of(p) < row_tiles * kTile) continue;
    if (col_tiles > kWarps * (kOutputTiles / row_tiles)) continue;
    const int64_t limit = reserve_dynamic_shared_bytes(kernel_for(row_tiles, vector), 0);
    const int dim_pad = mma_layout(p, row_tiles, 1 << 30, 32).dim_pad;
    for (const int value_stage : {64, 32}) {
      for (const int dim_stage : {dim_pad, round_up((dim_pad + 1) / 2, kTile), 128, 64}) {
        const MmaLayout layout = mma_layout(p, row_tiles, dim_stage, value_stage);
        if (layout.bytes > limit) continue;
        if (!MLA_MMA_PREFER_OCCUPANCY) return layout;
        const int blocks = std::min(kMaxBlocksPerSm, sm_bytes / (layout.bytes + reserved_bytes));
        const int64_t rows = int64_t{blocks} * row_tiles * kTile;
        if (rows > best_rows || (rows == best_rows && blocks > best_blocks)) {
          best = layout;
          best_rows = rows;
          best_blocks = blocks;
        }
      }
    }
  }
  return best;
}

}  // namespace

bool attention_fast_mma_applies(const AttentionParams& p) {
  if (!p.round_to_bf16 || p.key_bf16 != nullptr || p.value_bf16 != nullptr) return false;
  return choose_layout(p, vector_loads(p)).row_tiles != 0;
}

int64_t attention_fast_mma_shared_bytes(const AttentionParams& p) { return choose_layout(p, vector_loads(p)).bytes; }

void attention_fast_mma_cuda(const AttentionParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.seq == 0 || p.n_heads == 0) return;
  const bool vector = vector_loads(p);
  const MmaLayout layout = p.round_to_bf16 ? choose_layout(p, vector) : MmaLayout{};
  if (layout.row_tiles == 0) {
    throw CudaError("attention_fast_mma_cuda: no tile layout for this step (bf16 " + std::to_string(p.round_to_bf16) +
                    ", value_dim " + std::to_string(p.value_dim) + ", kv_len " + std::to_string(p.kv_len) +
                    "); attention_fast_cuda serves it");
  }
  reserve_dynamic_shared_bytes(kernel_for(layout.row_tiles, vector), layout.bytes);
  const int64_t rows = int64_t{layout.row_tiles} * kTile;
  const bool heads_share_keys = p.key_head_stride == 0 && p.value_head_stride == 0;
  const dim3 grid(static_cast<unsigned>((group_rows_of(p) + rows - 1) / rows), static_cast<unsigned>(p.batch),
                  heads_share_keys ? 1u : static_cast<unsigned>(p.n_heads));
  if (layout.row_tiles == 4) {
    launch<4>(p, layout, vector, grid, stream);
  } else if (layout.row_tiles == 2) {
    launch<2>(p, layout, vector, grid, stream);
  } else {
    launch<1>(p, layout, vector, grid, stream);
  }
  CUDA_CHECK_LAUNCH("attention_fast_mma_kernel");
}

}  // namespace mla
