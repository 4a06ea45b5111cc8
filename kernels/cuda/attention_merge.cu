#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/cuda/attention_merge.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"

namespace mla {

namespace {

constexpr int kThreads = 128;
// Parts whose weights a block keeps in shared memory; the decode kernel splits into fewer.
constexpr int64_t kMaxParts = 256;

// One block per row: the parts' weights exp(lse_p - max) once, then each thread its columns.
// Sums in double, as the CPU twin: a weight is at most 1 and there are at most kMaxParts.
__global__ void __launch_bounds__(kThreads) attention_merge_kernel(AttentionMergeParams p) {
  __shared__ double weight[kMaxParts];
  __shared__ float row_max;
  __shared__ double row_total;
  const int64_t row = blockIdx.x;
  const int64_t part_rows = p.part_rows > 0 ? p.part_rows : p.rows;
  if (threadIdx.x == 0) {
    float max_lse = -INFINITY;
    for (int64_t part = 0; part < p.parts; ++part) max_lse = fmaxf(max_lse, p.lse[part * part_rows + row]);
    double total = 0.0;
    for (int64_t part = 0; part < p.parts; ++part) {
      const float lse = p.lse[part * part_rows + row];
      weight[part] = max_lse == -INFINITY || lse == -INFINITY ? 0.0 : exp(static_cast<double>(lse) - max_lse);
      total += weight[part];
    }
    row_max = max_lse;
    row_total = total;
  }
  __syncthreads();
  float* merged = p.merged + row * p.dim;
  for (int64_t i = threadIdx.x; i < p.dim; i += kThreads) {
    double sum = 0.0;
    for (int64_t part = 0; part < p.parts; ++part) {
      // A part whose row saw no key has weight 0 and its output may hold anything: skip it.
      if (weight[part] != 0.0) sum += weight[part] * p.out[(part * part_rows + row) * p.dim + i];
    }
    const float value = row_total > 0.0 ? static_cast<float>(sum / row_total) : 0.0f;
    merged[i] = p.round_to_bf16 ? cuda_detail::round_bf16(value) : value;
  }
  if (p.merged_lse != nullptr && threadIdx.x == 0) {
    p.merged_lse[row] = row_total > 0.0 ? static_cast<float>(row_max + log(row_total)) : -INFINITY;
  }
}

}  // namespace

void attention_merge_cuda(const AttentionMergeParams& params, cudaStream_t stream) {
  if (params.rows == 0) return;
  if (params.parts < 1 || params.parts > kMaxParts) {
    throw std::invalid_argument("attention_merge_cuda: " + std::to_string(params.parts) + " parts, expected 1 to " +
                                std::to_string(kMaxParts));
  }
  if (params.rows > 0x7fffffff) throw std::invalid_argument("attention_merge_cuda: more rows than one grid holds");
  attention_merge_kernel<<<static_cast<unsigned>(params.rows), kThreads, 0, stream>>>(params);
  CUDA_CHECK_LAUNCH("attention_merge_kernel");
}

}  // namespace mla
