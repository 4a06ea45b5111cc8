#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/softmax.cuh"
#include "kernels/cuda/softmax.h"

namespace mla {

namespace {

constexpr int kThreads = 128;

// One block per (row, head).
__global__ void __launch_bounds__(kThreads) attention_softmax_kernel(AttentionParams p, AttentionSoftmaxParams s) {
  __shared__ float max_scratch[32];
  __shared__ double sum_scratch[32];
  const int64_t r = blockIdx.x;
  const int64_t h = blockIdx.y;
  const int64_t offset = (h * s.rows + r) * s.cols;
  float* row = s.scores + offset;
  const float* tail = s.tail_scores != nullptr ? s.tail_scores + offset : nullptr;
  const int64_t position = s.s_begin + r;
  const int64_t visible = cuda_detail::visible_len(p, position);
  const bool split = tail != nullptr;

  float max_score = -INFINITY;
  for (int64_t t = threadIdx.x; t < visible; t += kThreads) {
    const float score = cuda_detail::finish_score(row[t], split ? tail[t] : 0.0f, p.scale, split, p.round_to_bf16);
    row[t] = cuda_detail::apply_mask(p, score, position, t);
    max_score = fmaxf(max_score, row[t]);
  }
  max_score = cuda_detail::block_max(max_score, max_scratch);
  double sum = 0.0;
  for (int64_t t = threadIdx.x; t < visible; t += kThreads) {
    const float e = expf(row[t] - max_score);
    row[t] = e;
    sum += e;
  }
  sum = cuda_detail::block_sum(sum, sum_scratch);
  const float inv_sum = static_cast<float>(1.0 / sum);
  for (int64_t t = threadIdx.x; t < s.cols; t += kThreads) {
    const float prob = t < visible ? __fmul_rn(row[t], inv_sum) : 0.0f;
    row[t] = p.round_to_bf16 ? cuda_detail::round_bf16(prob) : prob;
  }
}

}  // namespace

void attention_softmax_cuda(const AttentionParams& attention, const AttentionSoftmaxParams& params,
                            cudaStream_t stream) {
  if (params.rows == 0 || attention.n_heads == 0) return;
  const dim3 grid(static_cast<unsigned>(params.rows), static_cast<unsigned>(attention.n_heads));
  attention_softmax_kernel<<<grid, kThreads, 0, stream>>>(attention, params);
  CUDA_CHECK_LAUNCH("attention_softmax_kernel");
}

}  // namespace mla
