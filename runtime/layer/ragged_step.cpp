#include "runtime/layer/ragged_step.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace mla {

int64_t RaggedStep::total_tokens() const {
  int64_t tokens = 0;
  for (const SequenceStep& sequence : sequences) tokens += sequence.new_tokens;
  return tokens;
}

int64_t RaggedStep::max_new_tokens() const {
  int64_t most = 0;
  for (const SequenceStep& sequence : sequences) most = std::max(most, sequence.new_tokens);
  return most;
}

int64_t RaggedStep::max_kv_len() const {
  int64_t most = 0;
  for (const SequenceStep& sequence : sequences) {
    if (sequence.new_tokens > 0) most = std::max(most, sequence.start_pos + sequence.new_tokens);
  }
  return most;
}

RaggedStep uniform_step(int64_t batch, int64_t seq, int64_t start_pos) {
  RaggedStep step;
  for (int64_t b = 0; b < batch; ++b) step.sequences.push_back({b, start_pos, seq});
  return step;
}

bool is_uniform(const RaggedIndex& index) {
  for (int64_t b = 1; b < index.sequences(); ++b) {
    if (index.start_pos[b] != index.start_pos[0] || index.new_tokens[b] != index.new_tokens[0]) return false;
  }
  return true;
}

RaggedIndex ragged_index(const RaggedStep& step) {
  RaggedIndex index;
  int64_t offset = 0;
  for (const SequenceStep& sequence : step.sequences) {
    if (sequence.new_tokens == 0) continue;
    const int64_t b = index.sequences();
    index.slot.push_back(sequence.slot);
    index.start_pos.push_back(sequence.start_pos);
    index.new_tokens.push_back(sequence.new_tokens);
    index.token_offset.push_back(offset);
    for (int64_t s = 0; s < sequence.new_tokens; ++s) {
      index.token_sequence.push_back(b);
      index.token_position.push_back(sequence.start_pos + s);
    }
    offset += sequence.new_tokens;
  }
  return index;
}

void check_ragged_step(const char* layer, const RaggedStep& step, int64_t max_batch_size, int64_t max_seq_len) {
  std::vector<bool> seen(static_cast<size_t>(max_batch_size), false);
  for (size_t i = 0; i < step.sequences.size(); ++i) {
    const SequenceStep& sequence = step.sequences[i];
    const std::string which = std::string(layer) + ": sequence " + std::to_string(i) + " of the step (slot " +
                              std::to_string(sequence.slot) + ", positions [" + std::to_string(sequence.start_pos) +
                              ", " + std::to_string(sequence.start_pos + sequence.new_tokens) + "))";
    if (sequence.slot < 0 || sequence.slot >= max_batch_size) {
      throw std::invalid_argument(which + ": the slot is outside [0, max_batch_size " + std::to_string(max_batch_size) +
                                  ")");
    }
    if (seen[static_cast<size_t>(sequence.slot)]) throw std::invalid_argument(which + ": the slot appears twice");
    seen[static_cast<size_t>(sequence.slot)] = true;
    if (sequence.start_pos < 0 || sequence.new_tokens < 0 || sequence.start_pos + sequence.new_tokens > max_seq_len) {
      throw std::invalid_argument(which + ": does not fit the cache (max_seq_len " + std::to_string(max_seq_len) + ")");
    }
  }
  if (step.total_tokens() == 0) throw std::invalid_argument(std::string(layer) + ": a step with no tokens");
}

ShardRows shard_rows_of_step(const RaggedIndex& index, int64_t shards, int64_t shard) {
  ShardRows own;
  for (size_t token = 0; token < index.token_position.size(); ++token) {
    const int64_t position = index.token_position[token];
    if (position % shards != shard) continue;
    own.token.push_back(static_cast<int64_t>(token));
    own.sequence.push_back(index.token_sequence[token]);
    own.row.push_back(position / shards);
  }
  return own;
}

std::vector<TokenRun> token_runs(const RaggedIndex& index, int64_t max_tokens) {
  if (max_tokens < 1) throw std::invalid_argument("token_runs: max_tokens " + std::to_string(max_tokens));
  const int64_t tokens = static_cast<int64_t>(index.token_position.size());
  std::vector<TokenRun> runs;
  for (int64_t first = 0; first < tokens; first += max_tokens) {
    TokenRun run;
    run.first_token = first;
    run.tokens = std::min(max_tokens, tokens - first);
    run.first_sequence = index.token_sequence[first];
    const int64_t end = first + run.tokens;
    for (int64_t b = run.first_sequence; b < index.sequences() && index.token_offset[b] < end; ++b) {
      const int64_t begin = std::max(first, index.token_offset[b]);
      const int64_t stop = std::min(end, index.token_offset[b] + index.new_tokens[b]);
      const int64_t skipped = begin - index.token_offset[b];  // this sequence's tokens in earlier runs
      const int64_t part = b - run.first_sequence;
      run.index.slot.push_back(index.slot[b]);
      run.index.start_pos.push_back(index.start_pos[b] + skipped);
      run.index.new_tokens.push_back(stop - begin);
      run.index.token_offset.push_back(begin - first);
      for (int64_t token = begin; token < stop; ++token) {
        run.index.token_sequence.push_back(part);
        run.index.token_position.push_back(index.token_position[token]);
      }
    }
    runs.push_back(std::move(run));
  }
  return runs;
}

int64_t context_run_tokens(int64_t group_size, int64_t block_heads, int64_t query_width, int64_t value_dim,
                           int64_t budget_bytes) {
  const int64_t per_token =
      group_size * block_heads * (query_width + 2 * (value_dim + 1)) * static_cast<int64_t>(sizeof(float));
  return std::max<int64_t>(1, budget_bytes / std::max<int64_t>(per_token, 1));
}

}  // namespace mla
