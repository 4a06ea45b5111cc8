#include "kernels/cuda/attention_fast.h"
#include "kernels/cuda/attention_fast_mma.h"
#include "kernels/cuda/attention_flash.h"
#include "kernels/cuda/attention_rows.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/softmax.cuh"

namespace mla {

namespace {

// A block takes kRows query rows that read the same keys (one per warp) and walks the keys in
// tiles of kKeyTile (one per lane). In the absorb formulation every head reads the same latent
// cache, so a block's rows are (head, position) pairs across heads: each key tile is loaded
// once for all of them. In the naive formulation keys are per head and a block's rows are the
// positions of one head.
constexpr int kRows = 8;
constexpr int kKeyTile = 32;
constexpr int kThreads = kRows * 32;

// Rows of shared memory are padded to an odd length so that the 32 lanes, each reading its own
// key row at the same offset, hit 32 different banks.
__host__ __device__ inline int64_t padded_dim(int64_t score_dim) { return score_dim | 1; }

// Longer than the project's usual 80 lines for the reason given at attention_fast_mma_kernel: one
// fused pass whose phases share the rows' running softmax state in registers.
__global__ void __launch_bounds__(kThreads) attention_fast_kernel(AttentionParams p) {
  extern __shared__ float shared[];
  const int64_t row_width = padded_dim(p.score_dim);
  float* q_tile = shared;                           // [kRows][row_width]
  float* key_tile = q_tile + kRows * row_width;     // [kKeyTile][row_width]
  float* scores = key_tile + kKeyTile * row_width;  // [kRows][kv_len]

  const cuda_detail::BlockRows rows(p, kRows);
  const int64_t group_rows = rows.group_rows;
  const int64_t b = rows.b;
  const int64_t block_head = rows.head;
  const int64_t first_row = rows.first_row;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const auto head_of = [&](int64_t row) { return rows.head_of(row); };
  const auto position_of = [&](int64_t row) { return rows.position_of(row); };

  for (int64_t index = threadIdx.x; index < kRows * p.score_dim; index += kThreads) {
    const int64_t r = index / p.score_dim;
    const int64_t d = index % p.score_dim;
    const int64_t row = first_row + r;
    q_tile[r * row_width + d] =
        row < group_rows ? p.q[(b * p.seq + position_of(row)) * p.q_token_stride + head_of(row) * p.q_head_stride + d]
                         : 0.0f;
  }
  int64_t block_visible = 0;  // the most positions any row of the block sees
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = first_row + r;
    if (row < group_rows) block_visible = max(block_visible, cuda_detail::visible_len(p, position_of(row)));
  }
  const int64_t my_row = first_row + warp;
  const bool my_row_valid = my_row < group_rows;
  const int64_t my_position = position_of(my_row);
  const int64_t my_visible = my_row_valid ? cuda_detail::visible_len(p, my_position) : 0;
  const bool split = p.round_to_bf16 && p.score_split > 0;
  const int64_t main_dim = split ? p.score_split : p.score_dim;
  float* my_scores = scores + warp * p.kv_len;

  const float* keys = p.keys + b * p.key_batch_stride + block_head * p.key_head_stride;
  for (int64_t tile_start = 0; tile_start < block_visible; tile_start += kKeyTile) {
    __syncthreads();  // the queries are in place, and the previous key tile is consumed
    for (int64_t index = threadIdx.x; index < kKeyTile * p.score_dim; index += kThreads) {
      const int64_t k = index / p.score_dim;
      const int64_t d = index % p.score_dim;
      const int64_t t = tile_start + k;
      key_tile[k * row_width + d] = t < block_visible ? keys[t * p.key_pos_stride + d] : 0.0f;
    }
    __syncthreads();
    const int64_t t = tile_start + lane;
    if (t < my_visible) {
      const float* query = q_tile + warp * row_width;
      const float* key = key_tile + lane * row_width;
      float dot_main = 0.0f;
      for (int64_t d = 0; d < main_dim; ++d) dot_main = fmaf(query[d], key[d], dot_main);
      float dot_tail = 0.0f;
      for (int64_t d = main_dim; d < p.score_dim; ++d) dot_tail = fmaf(query[d], key[d], dot_tail);
      const float score = cuda_detail::finish_score(dot_main, dot_tail, p.scale, split, p.round_to_bf16);
      my_scores[t] = cuda_detail::apply_mask(p, score, my_position, t);
    }
  }
  __syncwarp();

  // Exact softmax over the row, one warp per row: max, exp, sum (in double, as the CPU twin).
  if (my_visible > 0) {
    const float inv_sum = cuda_detail::warp_softmax_exps(my_scores, my_visible, lane);
    for (int64_t t = lane; t < my_visible; t += 32) {
      const float prob = __fmul_rn(my_scores[t], inv_sum);
      my_scores[t] = p.round_to_bf16 ? cuda_detail::round_bf16(prob) : prob;
    }
  }
  for (int64_t t = my_visible + lane; t < block_visible; t += 32) my_scores[t] = 0.0f;
  __syncthreads();

  // out[row] = sum_t p[row][t] * value_t: each thread owns output columns, for all rows at once,
  // so every value element is read once per block.
  const float* values = p.values + b * p.value_batch_stride + block_head * p.value_head_stride;
  for (int64_t i = threadIdx.x; i < p.value_dim; i += kThreads) {
    float accumulator[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) accumulator[r] = 0.0f;
    for (int64_t t = 0; t < block_visible; ++t) {
      const float value = values[t * p.value_pos_stride + i];
#pragma unroll
      for (int r = 0; r < kRows; ++r) accumulator[r] = fmaf(scores[r * p.kv_len + t], value, accumulator[r]);
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int64_t row = first_row + r;
      if (row >= group_rows) continue;
      float* out = p.out + (b * p.seq + position_of(row)) * p.out_token_stride + head_of(row) * p.out_head_stride;
      out[i] = p.round_to_bf16 ? cuda_detail::round_bf16(accumulator[r]) : accumulator[r];
    }
  }
}

int reserve_shared_bytes(int64_t needed_bytes) {
  const void* kernel = reinterpret_cast<const void*>(attention_fast_kernel);
  return static_cast<int>(reserve_dynamic_shared_bytes(kernel, needed_bytes));
}

int max_shared_bytes_per_block() { return reserve_shared_bytes(0); }

}  // namespace

int64_t attention_fast_shared_bytes(int64_t score_dim, int64_t kv_len) {
  return ((kRows + kKeyTile) * padded_dim(score_dim) + kRows * kv_len) * static_cast<int64_t>(sizeof(float));
}

int64_t attention_fast_max_kv_len(int64_t score_dim) {
  const int64_t left = max_shared_bytes_per_block() - attention_fast_shared_bytes(score_dim, 0);
  return left > 0 ? left / (kRows * static_cast<int64_t>(sizeof(float))) : 0;
}

void attention_fast_cuda(const AttentionParams& p, cudaStream_t stream) {
  if (p.q_bf16 != nullptr || p.key_bf16 != nullptr || p.value_bf16 != nullptr || p.key_tail_bf16 != nullptr ||
      p.latent_pages != nullptr) {
    // The one kernel that reads bf16 operands or cache pages in place; it refuses what it cannot take.
    attention_flash_cuda(p, stream);
    return;
  }
  if (p.batch == 0 || p.seq == 0 || p.n_heads == 0) return;
  if (attention_fast_mma_applies(p)) {
    attention_fast_mma_cuda(p, stream);
    return;
  }
  const bool heads_share_keys = p.key_head_stride == 0 && p.value_head_stride == 0;
  const int64_t group_rows = heads_share_keys ? p.n_heads * p.seq : p.seq;
  const int64_t shared_bytes = attention_fast_shared_bytes(p.score_dim, p.kv_len);
  if (shared_bytes > reserve_shared_bytes(shared_bytes)) {
    throw CudaError("attention_fast_cuda: kv_len " + std::to_string(p.kv_len) + " needs " +
                    std::to_string(shared_bytes) +
                    " bytes of shared memory, more than this device has per block; "
                    "the standard path serves this length");
  }
  const dim3 grid(static_cast<unsigned>((group_rows + kRows - 1) / kRows), static_cast<unsigned>(p.batch),
                  heads_share_keys ? 1u : static_cast<unsigned>(p.n_heads));
  attention_fast_kernel<<<grid, kThreads, static_cast<size_t>(shared_bytes), stream>>>(p);
  CUDA_CHECK_LAUNCH("attention_fast_kernel");
}

}  // namespace mla
