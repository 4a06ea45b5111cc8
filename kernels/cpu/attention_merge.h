// Merging attention computed over disjoint parts of the keys (docs/design.md, The latent cache split
// across ranks): part p gives each query row its output normalized over the part's keys, o_p, and
// the log-sum-exp of its scores there, lse_p. Over all the keys the softmax is exact again:
//   m = max_p lse_p,  w_p = exp(lse_p - m),  o = sum_p w_p o_p / sum_p w_p,  lse = m + log(sum_p w_p)
// (the SPEC's rule with m_p, l_p folded into lse_p = m_p + log l_p). A part where a row sees no
// key has lse_p = -inf and weight 0.
#pragma once

#include <cstdint>

namespace mla {

struct AttentionMergeParams {
  const float* out = nullptr;  // [parts, rows, dim]
  const float* lse = nullptr;  // [parts, rows]
  int64_t parts = 0;
  int64_t rows = 0;
  int64_t dim = 0;
  float* merged = nullptr;      // [rows, dim]
  float* merged_lse = nullptr;  // [rows], or nullptr
  bool round_to_bf16 = false;   // bf16 activations: the merged output rounded, as an attention output is
  // Rows from one part to the next in out and lse (0: rows). More than rows where the parts came in
  // blocks sized for more rows than this rank's (a context group whose ranks hold uneven heads).
  int64_t part_rows = 0;
};

// Weights and sums in double. A row no part sees (every lse_p = -inf) comes out 0.
void attention_merge(const AttentionMergeParams& params);

}  // namespace mla
