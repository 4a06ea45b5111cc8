// Interleaved rotary embedding with YaRN frequency scaling (docs/design.md, RoPE and YaRN).
#pragma once

#include <cstdint>
#include <vector>

namespace mla {

struct RopeFrequencyParams {
  int64_t rope_dim = 0;  // dr, even
  double rope_theta = 10000.0;
  bool yarn = false;  // max_seq_len > original_seq_len
  double rope_factor = 40.0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  int64_t original_seq_len = 4096;
};

// f_i for i < dr / 2, in double.
std::vector<double> rope_frequencies(const RopeFrequencyParams& params);

// cos and sin of position * f_i for positions [0, positions), [positions, dr / 2] each.
// The angle is formed in double: in fp32 a position of a few thousand already loses 1e-4 rad.
struct RopeTable {
  int64_t positions = 0;
  int64_t half_dim = 0;
  std::vector<float> cos;
  std::vector<float> sin;
};

RopeTable make_rope_table(const RopeFrequencyParams& params, int64_t positions);

// Rotates, in place, the dr-long vectors of tokens [batch, seq]: token (b, s) sits at position
// start_pos + s and holds vecs_per_token vectors vec_stride apart, starting at
// x + (b * seq + s) * token_stride. k_pe is one vector per token; q_pe is one per head.
struct RopeParams {
  float* x = nullptr;
  int64_t batch = 0;
  int64_t seq = 0;
  int64_t token_stride = 0;
  int64_t vecs_per_token = 1;
  int64_t vec_stride = 0;
  int64_t start_pos = 0;
  const RopeTable* table = nullptr;
  // DeepSeek rotates in fp32 and casts back to the activation dtype.
  bool round_to_bf16 = false;
  // round_to_bf16 only, in place of x (which may then be null): the vectors as bf16 numbers, with
  // the same strides.
  uint16_t* x_bf16 = nullptr;
  // Ragged steps: token i's own position, [batch * seq], in place of start_pos + s.
  const int64_t* positions = nullptr;
};

void rope_apply(const RopeParams& params);

}  // namespace mla
