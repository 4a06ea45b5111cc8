// Interleaved RoPE with YaRN on the GPU: the twin of kernels/cpu/rope. The cos/sin table is the
// CPU's (angles formed in double on the host), uploaded once.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mla {

struct RopeCudaParams {
  float* x = nullptr;  // as RopeParams::x, on the device
  int64_t batch = 0;
  int64_t seq = 0;
  int64_t token_stride = 0;
  int64_t vecs_per_token = 1;
  int64_t vec_stride = 0;
  int64_t start_pos = 0;
  // Ragged steps: each token's position ([batch * seq], device memory), in place of start_pos + s.
  // The caller checks them against the table (check_ragged_step).
  const int64_t* token_positions = nullptr;
  const float* cos = nullptr;  // [positions, half_dim], RopeTable::cos on the device
  const float* sin = nullptr;
  int64_t positions = 0;
  int64_t half_dim = 0;
  bool round_to_bf16 = false;
};

// Throws std::out_of_range when start_pos + seq passes the table, as the CPU twin does.
void rope_apply_cuda(const RopeCudaParams& params, cudaStream_t stream);

}  // namespace mla
