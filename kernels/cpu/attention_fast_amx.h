// The fast path's fused attention on AMX tiles, for bf16 prefill with per-head keys (naive):
// 16 query rows of one head at a time, their scores Q K^T and the value product P V as bf16 tile
// products accumulated in fp32, the scores finished and soft-maxed in fp32 between the two
// (scores_to_probs, as the other kernels). The head's keys and values are converted once into the
// tiles' layout (bf16 exactly: in bf16 mode they hold bf16 values) in a per-thread workspace;
// scores exist only as one 16-row block, never as a matrix. attention_fast takes this path itself
// where attention_fast_amx_applies.
#pragma once

#include <cstdint>

#include "kernels/cpu/attention.h"

namespace mla {

// A step with fewer rows per head would leave most of each 16-row tile empty.
constexpr int64_t kAmxMinQueryRows = 16;

// bf16 mode, one dot product per score (no split), per-head keys and values, at least
// kAmxMinQueryRows rows per head, a CPU whose level (cpu_isa) is AMX, and the OS lets this process
// use the tiles.
bool attention_fast_amx_applies(const AttentionParams& params);
void attention_fast_amx(const AttentionParams& params);
int64_t attention_fast_amx_workspace_bytes(const AttentionParams& params, int threads);

}  // namespace mla
