// A step whose sequences sit at different positions (docs/design.md, Serving-shaped steps): per
// sequence its cache slot, its start position and its new tokens (0: idle this step), the tokens
// packed [sum of new tokens, dim] in sequence order (the varlen convention). The uniform batch
// (every sequence at start_pos with seq new tokens, slots 0 .. batch-1) is one case of it.
#pragma once

#include <cstdint>
#include <vector>

namespace mla {

struct SequenceStep {
  int64_t slot = 0;
  int64_t start_pos = 0;
  int64_t new_tokens = 0;
};

struct RaggedStep {
  std::vector<SequenceStep> sequences;

  int64_t total_tokens() const;
  int64_t max_new_tokens() const;
  // The most positions any sequence attends to (start_pos + new_tokens of a sequence with tokens).
  int64_t max_kv_len() const;
};

RaggedStep uniform_step(int64_t batch, int64_t seq, int64_t start_pos);

// The kernels' view of a step: its sequences with new tokens, in order, and each packed token's
// sequence (an index into these) and position.
struct RaggedIndex {
  std::vector<int64_t> slot, start_pos, new_tokens, token_offset;  // per sequence with tokens
  std::vector<int64_t> token_sequence, token_position;             // per packed token
  int64_t sequences() const { return static_cast<int64_t>(slot.size()); }
};

RaggedIndex ragged_index(const RaggedStep& step);

// The step's tokens that one rank of a context group keeps (docs/design.md, The latent cache split
// across ranks: position t on the group's rank t % shards, at its row t / shards): each one's
// packed token, its sequence (an index into the RaggedIndex's) and its row in this rank's share.
struct ShardRows {
  std::vector<int64_t> token, sequence, row;
  int64_t count() const { return static_cast<int64_t>(token.size()); }
};
ShardRows shard_rows_of_step(const RaggedIndex& index, int64_t shards, int64_t shard);

// A run of a step's packed tokens, [first_token, first_token + tokens), as a step of its own over
// the same cached rows: the sequences it touches (from first_sequence of the step's, in order),
// each with the part of its new tokens in the run at their own positions, so that the causal rule
// and the rows each query sees are the step's. (The context group's gather and exchange go a run
// at a time to bound what they hold.)
struct TokenRun {
  int64_t first_token = 0, tokens = 0, first_sequence = 0;
  RaggedIndex index;
};
// The step's tokens in runs of at most max_tokens (>= 1), in order.
std::vector<TokenRun> token_runs(const RaggedIndex& index, int64_t max_tokens);

// Tokens a run of a context group's gather and exchange may hold within budget_bytes (at least
// one): per token, for each of the group's group_size ranks and block_heads heads, the gathered
// query (query_width floats) and the part sent and received (value_dim + 1 floats each). Every
// rank of a group comes to the same count, so their collectives pair up.
int64_t context_run_tokens(int64_t group_size, int64_t block_heads, int64_t query_width, int64_t value_dim,
                           int64_t budget_bytes);
// Every sequence with tokens at the same start_pos with the same count: the uniform batch.
bool is_uniform(const RaggedIndex& index);

// Throws std::invalid_argument, naming `layer` and the sequence, when a slot is outside
// [0, max_batch_size) or appears twice, a count is negative, the positions pass max_seq_len, or
// no sequence has a token.
void check_ragged_step(const char* layer, const RaggedStep& step, int64_t max_batch_size, int64_t max_seq_len);

}  // namespace mla
