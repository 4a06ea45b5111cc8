// Continuous batching (docs/design.md, Continuous batching): which request runs how many tokens in
// which step, planned before the first step from the requests alone, so every rank runs the same
// steps. Each step first gives every running decode its token, then fills the rest of the token
// budget (run.max_step_tokens) with prefill chunks in admission order; a waiting request is
// admitted, in arrival order, once it has arrived, a sequence slot is free and the cache can hold
// all its tokens (prompt + generate) beside what running requests will hold at their end. A
// finished request frees its slot and pages at once.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/io/config.h"
#include "runtime/layer/ragged_step.h"

namespace mla {

struct RequestLimits {
  int64_t slots = 0;             // max_batch_size
  int64_t max_seq_len = 0;       // positions one request may reach
  int64_t max_step_tokens = 0;   // run.max_step_tokens
  int64_t page_size = 0;         // of the cache; dense: max_seq_len
  int64_t pages = 0;             // dense: slots
  int64_t context_parallel = 1;  // a rank keeps ceil(positions / context_parallel) rows of a request
};

struct PlannedStep {
  int64_t clock = 0;  // the step number arrivals count in (idle steps are skipped, not run)
  RaggedStep step;
  std::vector<int64_t> request;   // per sequence of the step, the request's index
  std::vector<int64_t> admitted;  // requests that start in this step
  std::vector<int64_t> finished;  // requests whose last token is in this step (their slots are freed after it)
  int64_t prefill_tokens = 0;
  int64_t decode_tokens = 0;
};

// Throws UserError naming run.schedule.requests[i] when a request can never run: more tokens than
// model.max_seq_len, or more pages than run.kv_cache.pages.
std::vector<PlannedStep> plan_requests(const std::vector<RequestConfig>& requests, const RequestLimits& limits);

}  // namespace mla
