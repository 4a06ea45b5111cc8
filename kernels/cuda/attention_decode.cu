#include <algorithm>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

#include "kernels/cuda/attention_decode.h"
#include "kernels/cuda/attention_merge.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/latent_rows.cuh"
#include "kernels/cuda/softmax.cuh"

namespace mla {

namespace {

// A block: kRows query rows (row = token * n_heads + head within its sequence), 8 warps of two rows
// each for the scores and the softmax; a tile of kKeyTile latent rows in shared memory, one key a
// lane; for the value product each thread owns value columns (kCols of them, 256 apart) for all
// kRows rows, so a loaded row serves every head.
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRows = 16;
constexpr int kRowsPerWarp = kRows / kWarps;
constexpr int kKeyTile = 32;
constexpr int kMaxCols = 4;  // value_dim <= kMaxCols * kThreads
constexpr int64_t kMaxSplits = 128;

// Shared rows padded to 2 more than a multiple of 16 floats: in tile_scores the lanes of a warp read
// keys 2 apart (8 tiles) at 4 consecutive elements (the slices), banks 4 * tile + slice, all distinct.
__host__ __device__ inline int64_t padded_dim(int64_t score_dim) { return (score_dim + 13) / 16 * 16 + 2; }

int64_t shared_bytes(int64_t score_dim) {
  const int64_t floats = (kRows + kKeyTile) * padded_dim(score_dim) + kRows * kKeyTile + 2 * kRows;
  return floats * static_cast<int64_t>(sizeof(float)) + kRows * static_cast<int64_t>(sizeof(double));
}

// Row values as 16-byte loads, where the rows are whole 16-byte groups (fp32 rows of a multiple of
// 4 values, bf16 rows of a multiple of 8): a quarter (an eighth) of the load instructions of one
// value a lane. fp8 rows, and other widths, are read a value at a time.
enum class RowLoads : int { Scalar, F32x4, Bf16x8 };

RowLoads row_loads(const PagedLatentView& cache) {
  const int64_t width = cache.row_width();
  if (cache.dtype == LatentDType::F32 && width % 4 == 0) return RowLoads::F32x4;
  if (cache.dtype == LatentDType::BF16 && width % 8 == 0) return RowLoads::Bf16x8;
  return RowLoads::Scalar;
}

struct DecodeLaunch {
  PagedLatentView cache;
  cuda_detail::LatentRowGeometry shape;
  int64_t keys_per_split = 0;
  int64_t tokens = 0;
  float* partial_out = nullptr;  // [splits, tokens * n_heads, value_dim]; nullptr: write p.out
  float* partial_lse = nullptr;  // [splits, tokens * n_heads]
  RowLoads loads = RowLoads::Scalar;
};

// The device side of attention_sequence / shard_rows (kernels/cpu/attention.h).
__device__ inline int64_t shard_rows_device(int64_t positions, int64_t shards, int64_t shard) {
  return positions > shard ? (positions - shard + shards - 1) / shards : 0;
}

struct SequenceRows {
  int64_t token_offset, new_tokens, start_pos, kv_rows;
};

__device__ inline SequenceRows sequence_rows(const AttentionParams& p, int64_t b) {
  if (p.seq_start_pos == nullptr) {  // a uniform batch: kv_len as given (this shard's rows of it)
    const int64_t kv_rows =
        p.kv_shards > 1 ? shard_rows_device(p.start_pos + p.seq, p.kv_shards, p.kv_shard) : p.kv_len;
    return {b * p.seq, p.seq, p.start_pos, kv_rows};
  }
  const int64_t start_pos = p.seq_start_pos[b], new_tokens = p.seq_new_tokens[b];
  return {p.seq_token_offset[b], new_tokens, start_pos,
          shard_rows_device(start_pos + new_tokens, p.kv_shards, p.kv_shard)};
}

// Rows of this rank's keys that query token s of the sequence sees (causal, in global positions).
__device__ inline int64_t visible_rows(const AttentionParams& p, const SequenceRows& sequence, int64_t s) {
  return min(shard_rows_device(sequence.start_pos + s + 1, p.kv_shards, p.kv_shard), sequence.kv_rows);
}

constexpr int kLoadRowsPerWarp = kKeyTile / kWarps;

// Tile rows [tile_start, tile_start + kKeyTile) of sequence b's keys as fp32 in shared memory: warp
// w takes rows w, w + 8, w + 16, w + 24, its lanes along them (the reads coalesce), the loads of all
// four issued before their stores; rows past `end` are zero.
__device__ void load_key_tile(const AttentionParams& p, const DecodeLaunch& launch, int64_t b, int64_t tile_start,
                              int64_t end, float* key_tile) {
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t row_width = padded_dim(p.score_dim);
  const uint8_t* rows[kLoadRowsPerWarp];
  float* dst[kLoadRowsPerWarp];
#pragma unroll
  for (int j = 0; j < kLoadRowsPerWarp; ++j) {
    const int k = warp + kWarps * j;
    const int64_t t = tile_start + k;
    rows[j] = t < end ? cuda_detail::latent_row_address(launch.cache, launch.shape, b, t) : nullptr;
    dst[j] = key_tile + k * row_width;
  }
  if (launch.loads == RowLoads::F32x4) {
    for (int64_t c = lane; c < p.score_dim / 4; c += 32) {
      float4 v[kLoadRowsPerWarp];
#pragma unroll
      for (int j = 0; j < kLoadRowsPerWarp; ++j) {
        v[j] = rows[j] != nullptr ? reinterpret_cast<const float4*>(rows[j])[c] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int j = 0; j < kLoadRowsPerWarp; ++j) {
        float* out = dst[j] + 4 * c;
        out[0] = v[j].x, out[1] = v[j].y, out[2] = v[j].z, out[3] = v[j].w;
      }
    }
  } else if (launch.loads == RowLoads::Bf16x8) {
    for (int64_t c = lane; c < p.score_dim / 8; c += 32) {
      uint4 v[kLoadRowsPerWarp];
#pragma unroll
      for (int j = 0; j < kLoadRowsPerWarp; ++j) {
        v[j] = rows[j] != nullptr ? reinterpret_cast<const uint4*>(rows[j])[c] : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int j = 0; j < kLoadRowsPerWarp; ++j) {
        const uint32_t words[4] = {v[j].x, v[j].y, v[j].z, v[j].w};
        float* out = dst[j] + 8 * c;
#pragma unroll
        for (int w = 0; w < 4; ++w) {  // a word holds values 2w (low half) and 2w + 1
          out[2 * w] = __uint_as_float(words[w] << 16);
          out[2 * w + 1] = __uint_as_float(words[w] & 0xffff0000u);
        }
      }
    }
  } else {
#pragma unroll
    for (int j = 0; j < kLoadRowsPerWarp; ++j) {
      for (int64_t i = lane; i < p.score_dim; i += 32) {
        dst[j][i] = rows[j] != nullptr ? cuda_detail::load_latent_value(launch.cache, launch.shape, rows[j], i) : 0.0f;
      }
    }
  }
}

// The tile's scores [kRows][kKeyTile] into `scores`: a thread takes 4 rows x 2 keys over every
// fourth element of the score vector (4 query and 2 key loads for 8 multiply-adds, where a key a lane
// would load 3 values per 2), and the 4 lanes that share a tile sum their parts by shuffles. With
// padded_dim's row length the lanes' key loads fall in distinct banks.
__device__ void tile_scores(const AttentionParams& p, const float* q_tile, const float* key_tile, float* scores) {
  const int64_t row_width = padded_dim(p.score_dim);
  const bool split = p.round_to_bf16 && p.score_split > 0;
  const int64_t main_dim = split ? p.score_split : p.score_dim;
  const int slice = threadIdx.x % 4;
  const int tile = threadIdx.x / 4;
  const int row0 = (tile / (kKeyTile / 2)) * 4;
  const int key0 = (tile % (kKeyTile / 2)) * 2;
  float dot_main[4][2] = {}, dot_tail[4][2] = {};
  const auto accumulate = [&](int64_t begin, int64_t end, float(&dot)[4][2]) {
    for (int64_t d = begin + (slice - begin % 4 + 4) % 4; d < end; d += 4) {
      const float k0 = key_tile[key0 * row_width + d];
      const float k1 = key_tile[(key0 + 1) * row_width + d];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float q = q_tile[(row0 + i) * row_width + d];
        dot[i][0] = fmaf(q, k0, dot[i][0]);
        dot[i][1] = fmaf(q, k1, dot[i][1]);
      }
    }
  };
  accumulate(0, main_dim, dot_main);
  accumulate(main_dim, p.score_dim, dot_tail);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      float main = dot_main[i][j], tail = dot_tail[i][j];
      main += __shfl_xor_sync(0xffffffffu, main, 1);
      main += __shfl_xor_sync(0xffffffffu, main, 2);
      tail += __shfl_xor_sync(0xffffffffu, tail, 1);
      tail += __shfl_xor_sync(0xffffffffu, tail, 2);
      if (slice == 0) {
        scores[(row0 + i) * kKeyTile + key0 + j] =
            cuda_detail::finish_score(main, tail, p.scale, split, p.round_to_bf16);
      }
    }
  }
}

// Longer than the project's usual 80 lines: one pass whose phases share the rows' running softmax
// state (warp registers) and the value accumulators (thread registers).
template <int kCols>
__global__ void __launch_bounds__(kThreads) attention_decode_kernel(AttentionParams p, DecodeLaunch launch) {
  extern __shared__ float shared[];
  const int64_t row_width = padded_dim(p.score_dim);
  float* q_tile = shared;                                        // [kRows][row_width]
  float* key_tile = q_tile + kRows * row_width;                  // [kKeyTile][row_width]
  float* probs = key_tile + kKeyTile * row_width;                // [kRows][kKeyTile]: scores, then exps
  float* rescale = probs + kRows * kKeyTile;                     // [kRows]: this tile's correction of the sums
  float* row_max = rescale + kRows;                              // [kRows]
  double* row_sum = reinterpret_cast<double*>(row_max + kRows);  // [kRows]

  const int64_t b = blockIdx.y;
  const int64_t split = blockIdx.x;
  const SequenceRows sequence = sequence_rows(p, b);
  const int64_t first_row = static_cast<int64_t>(blockIdx.z) * kRows;
  const int64_t sequence_rows_count = sequence.new_tokens * p.n_heads;
  if (first_row >= sequence_rows_count) return;  // a shorter sequence than the step's longest
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;

  for (int64_t index = threadIdx.x; index < kRows * p.score_dim; index += kThreads) {
    const int64_t r = index / p.score_dim, d = index % p.score_dim;
    const int64_t row = first_row + r;
    q_tile[r * row_width + d] = row < sequence_rows_count
                                    ? p.q[(sequence.token_offset + row / p.n_heads) * p.q_token_stride +
                                          (row % p.n_heads) * p.q_head_stride + d]
                                    : 0.0f;
  }
  int64_t my_visible[kRowsPerWarp];
  int64_t block_visible = 0;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t row = first_row + warp * kRowsPerWarp + r;
    my_visible[r] = row < sequence_rows_count ? visible_rows(p, sequence, row / p.n_heads) : 0;
  }
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = first_row + r;
    if (row < sequence_rows_count) block_visible = max(block_visible, visible_rows(p, sequence, row / p.n_heads));
  }
  const int64_t key_begin = split * launch.keys_per_split;
  const int64_t key_end = min(key_begin + launch.keys_per_split, block_visible);

  float running_max[kRowsPerWarp];
  double running_sum[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) running_max[r] = -INFINITY, running_sum[r] = 0.0;
  float accumulator[kCols][kRows] = {};

  for (int64_t tile_start = key_begin; tile_start < key_end; tile_start += kKeyTile) {
    __syncthreads();  // the queries are in place; the previous tile's keys and probabilities consumed
    load_key_tile(p, launch, b, tile_start, key_end, key_tile);
    __syncthreads();
    tile_scores(p, q_tile, key_tile, probs);
    __syncthreads();
    const int64_t t = tile_start + lane;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      float score = probs[(warp * kRowsPerWarp + r) * kKeyTile + lane];
      if (t >= my_visible[r] || t >= key_end) score = -INFINITY;
      // Online softmax: the new max, the old sums' correction, this tile's exps against the new max.
      const float new_max = fmaxf(running_max[r], cuda_detail::warp_max(score));
      const float correction = new_max == -INFINITY ? 1.0f : expf(running_max[r] - new_max);
      const float e = score == -INFINITY ? 0.0f : expf(score - new_max);
      running_sum[r] = running_sum[r] * correction + cuda_detail::warp_sum(static_cast<double>(e));
      running_max[r] = new_max;
      const int row = warp * kRowsPerWarp + r;
      probs[row * kKeyTile + lane] = p.round_to_bf16 ? cuda_detail::round_bf16(e) : e;
      if (lane == 0) rescale[row] = correction;
    }
    __syncthreads();
    const int64_t tile_keys = min(static_cast<int64_t>(kKeyTile), key_end - tile_start);
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) accumulator[c][r] *= rescale[r];
    }
    for (int64_t k = 0; k < tile_keys; ++k) {
      float value[kCols];
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const int64_t i = threadIdx.x + c * kThreads;
        value[c] = i < p.value_dim ? key_tile[k * row_width + i] : 0.0f;
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float prob = probs[r * kKeyTile + k];
#pragma unroll
        for (int c = 0; c < kCols; ++c) accumulator[c][r] = fmaf(prob, value[c], accumulator[c][r]);
      }
    }
  }

  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      row_max[warp * kRowsPerWarp + r] = running_max[r];
      row_sum[warp * kRowsPerWarp + r] = running_sum[r];
    }
  }
  __syncthreads();
  const int64_t rows_total = launch.tokens * p.n_heads;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = first_row + r;
    if (row >= sequence_rows_count) break;
    const int64_t token = sequence.token_offset + row / p.n_heads;
    const int64_t head = row % p.n_heads;
    const double sum = row_sum[r];
    const float lse = sum > 0.0 ? static_cast<float>(row_max[r] + log(sum)) : -INFINITY;
    const float inv_sum = sum > 0.0 ? static_cast<float>(1.0 / sum) : 0.0f;
    float* out = launch.partial_out != nullptr
                     ? launch.partial_out + (split * rows_total + token * p.n_heads + head) * p.value_dim
                     : p.out + token * p.out_token_stride + head * p.out_head_stride;
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int64_t i = threadIdx.x + c * kThreads;
      if (i >= p.value_dim) continue;
      const float value = __fmul_rn(accumulator[c][r], inv_sum);
      out[i] = launch.partial_out == nullptr && p.round_to_bf16 ? cuda_detail::round_bf16(value) : value;
    }
    if (threadIdx.x == 0) {
      if (launch.partial_lse != nullptr) {
        launch.partial_lse[split * rows_total + token * p.n_heads + head] = lse;
      } else if (p.lse != nullptr) {
        p.lse[token * p.n_heads + head] = lse;
      }
    }
  }
}

template <int kCols>
void launch_decode(const AttentionParams& p, const DecodeLaunch& launch, const dim3& grid, cudaStream_t stream) {
  const int64_t bytes = shared_bytes(p.score_dim);
  const int64_t limit =
      reserve_dynamic_shared_bytes(reinterpret_cast<const void*>(attention_decode_kernel<kCols>), bytes);
  if (bytes > limit) {
    throw CudaError("attention_decode_cuda: a score row of " + std::to_string(p.score_dim) + " values needs " +
                    std::to_string(bytes) + " bytes of shared memory, more than this device has per block");
  }
  attention_decode_kernel<kCols><<<grid, kThreads, static_cast<size_t>(bytes), stream>>>(p, launch);
  CUDA_CHECK_LAUNCH("attention_decode_kernel");
}

int current_device_sm_count() {
  static std::mutex mutex;
  static std::map<int, int> counts;
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  int& count = counts[device];
  if (count == 0) CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

int64_t row_groups(const AttentionParams& p) { return (p.n_heads * p.seq + kRows - 1) / kRows; }

bool out_is_dense(const AttentionParams& p) {
  return p.out_head_stride == p.value_dim && p.out_token_stride == p.n_heads * p.value_dim;
}

}  // namespace

bool attention_decode_applies(const AttentionParams& p) {
  return p.latent_pages != nullptr && p.key_head_stride == 0 && p.value_head_stride == 0 && p.mask == nullptr &&
         p.value_dim >= 1 && p.value_dim <= kMaxCols * kThreads && p.value_dim <= p.score_dim &&
         p.score_dim == p.latent_pages->row_width() && p.q_bf16 == nullptr && p.out_bf16 == nullptr &&
         shared_bytes(p.score_dim) <= reserve_dynamic_shared_bytes(nullptr, 0);
}

AttentionDecodeSplit attention_decode_split(const AttentionParams& p, int64_t tokens, int64_t partial_rows) {
  const int64_t kv_rows = std::max<int64_t>(p.kv_len, 1);
  const int64_t blocks = std::max<int64_t>(p.batch * row_groups(p), 1);
  const int64_t rows_per_split = std::max<int64_t>(tokens * p.n_heads, 1);
  int64_t splits = (2 * current_device_sm_count() + blocks - 1) / blocks;
  splits = std::min({splits, (kv_rows + 2 * kKeyTile - 1) / (2 * kKeyTile), kMaxSplits, partial_rows / rows_per_split});
  if (!out_is_dense(p)) splits = 1;
  splits = std::max<int64_t>(splits, 1);
  AttentionDecodeSplit split;
  split.keys_per_split = ((kv_rows + splits - 1) / splits + kKeyTile - 1) / kKeyTile * kKeyTile;
  split.splits = (kv_rows + split.keys_per_split - 1) / split.keys_per_split;
  return split;
}

int64_t attention_decode_partial_rows() { return 3 * current_device_sm_count() * kRows; }

void attention_decode_cuda(const AttentionParams& p, int64_t tokens, const AttentionDecodeSplit& split,
                           float* workspace, int64_t partial_rows, cudaStream_t stream) {
  if (p.batch == 0 || p.n_heads == 0 || tokens == 0) return;
  if (!attention_decode_applies(p)) {
    throw std::invalid_argument(
        "attention_decode_cuda: the step is not the shared latent rows of a paged cache "
        "without a mask, or its widths pass the kernel's limits (attention_decode_applies)");
  }
  if (split.splits < 1 || split.keys_per_split < 1 || split.keys_per_split % kKeyTile != 0 ||
      split.splits * split.keys_per_split < p.kv_len) {
    throw std::invalid_argument("attention_decode_cuda: " + std::to_string(split.splits) + " splits of " +
                                std::to_string(split.keys_per_split) + " keys do not cover kv_len " +
                                std::to_string(p.kv_len));
  }
  DecodeLaunch launch;
  launch.cache = *p.latent_pages;
  launch.shape = cuda_detail::latent_row_geometry(launch.cache);
  launch.loads = row_loads(launch.cache);
  launch.keys_per_split = split.keys_per_split;
  launch.tokens = tokens;
  const int64_t rows_total = tokens * p.n_heads;
  if (split.splits > 1) {
    if (workspace == nullptr || split.splits * rows_total > partial_rows || !out_is_dense(p)) {
      throw std::invalid_argument("attention_decode_cuda: " + std::to_string(split.splits) +
                                  " splits need a workspace of " + std::to_string(split.splits * rows_total) +
                                  " partial rows and a dense output");
    }
    launch.partial_out = workspace;
    launch.partial_lse = workspace + partial_rows * p.value_dim;
  }
  const dim3 grid(static_cast<unsigned>(split.splits), static_cast<unsigned>(p.batch),
                  static_cast<unsigned>(row_groups(p)));
  const int cols = static_cast<int>((p.value_dim + kThreads - 1) / kThreads);
  switch (cols) {
    case 1: launch_decode<1>(p, launch, grid, stream); break;
    case 2: launch_decode<2>(p, launch, grid, stream); break;
    case 3: launch_decode<3>(p, launch, grid, stream); break;
    default: launch_decode<4>(p, launch, grid, stream); break;
  }
  if (split.splits == 1) return;
  AttentionMergeParams merge;
  merge.out = launch.partial_out;
  merge.lse = launch.partial_lse;
  merge.parts = split.splits;
  merge.rows = rows_total;
  merge.dim = p.value_dim;
  merge.merged = p.out;
  merge.merged_lse = p.lse;
  merge.round_to_bf16 = p.round_to_bf16;
  attention_merge_cuda(merge, stream);
}

}  // namespace mla
