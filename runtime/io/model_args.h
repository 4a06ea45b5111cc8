// The model's shape, with DeepSeek-V3's ModelArgs names and defaults (inference/model.py).
#pragma once

#include <cmath>
#include <cstdint>

namespace mla {

struct ModelArgs {
  int64_t dim = 2048;
  int64_t n_heads = 16;
  int64_t q_lora_rank = 0;  // 0: plain wq, no query compression
  int64_t kv_lora_rank = 512;
  int64_t qk_nope_head_dim = 128;
  int64_t qk_rope_head_dim = 64;
  int64_t v_head_dim = 128;
  int64_t max_batch_size = 8;
  int64_t max_seq_len = 4096 * 4;
  int64_t original_seq_len = 4096;
  double rope_theta = 10000.0;
  double rope_factor = 40.0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // docs/design.md: YaRN frequency scaling and the mscale correction apply when the cache is longer
  // than the context the model was trained on.
  bool yarn_active() const { return max_seq_len > original_seq_len; }
  double softmax_scale() const {
    double scale = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
    if (yarn_active()) {
      const double m = 0.1 * mscale * std::log(rope_factor) + 1.0;
      scale *= m * m;
    }
    return scale;
  }
};

}  // namespace mla
