#include "runtime/layer/request_schedule.h"

#include <algorithm>
#include <numeric>
#include <string>

#include "runtime/base/errors.h"

namespace mla {

namespace {

// A rank's pages for a request of `tokens` tokens: its rows of them (all, or with context
// parallelism the most any rank of the group keeps), in pages.
int64_t pages_for(int64_t tokens, const RequestLimits& limits) {
  const int64_t rows = (tokens + limits.context_parallel - 1) / limits.context_parallel;
  return (rows + limits.page_size - 1) / limits.page_size;
}

struct Running {
  int64_t request = 0;
  int64_t slot = 0;
  int64_t position = 0;  // tokens processed so far
  int64_t total = 0;     // prompt + generate
  int64_t prompt = 0;
};

void check_request_fits(const std::vector<RequestConfig>& requests, const RequestLimits& limits) {
  for (size_t i = 0; i < requests.size(); ++i) {
    const RequestConfig& request = requests[i];
    const std::string key = "run.schedule.requests[" + std::to_string(i) + "] (" + request.name + ")";
    const int64_t total = request.prompt + request.generate;
    if (total > limits.max_seq_len) {
      throw UserError(key + ": prompt " + std::to_string(request.prompt) + " + generate " +
                      std::to_string(request.generate) + " tokens do not fit model.max_seq_len " +
                      std::to_string(limits.max_seq_len));
    }
    if (pages_for(total, limits) > limits.pages) {
      throw UserError(key + ": its " + std::to_string(total) + " tokens need " +
                      std::to_string(pages_for(total, limits)) + " pages of " + std::to_string(limits.page_size) +
                      " positions, more than run.kv_cache.pages " + std::to_string(limits.pages));
    }
  }
}

}  // namespace

std::vector<PlannedStep> plan_requests(const std::vector<RequestConfig>& requests, const RequestLimits& limits) {
  check_request_fits(requests, limits);
  std::vector<int64_t> waiting(requests.size());
  std::iota(waiting.begin(), waiting.end(), 0);
  std::stable_sort(waiting.begin(), waiting.end(),
                   [&](int64_t a, int64_t b) { return requests[a].arrival < requests[b].arrival; });
  std::vector<bool> slot_busy(static_cast<size_t>(limits.slots), false);
  std::vector<Running> running;  // in admission order
  int64_t promised_pages = 0;    // what running requests hold at their end
  std::vector<PlannedStep> plan;
  size_t next_waiting = 0;
  for (int64_t clock = 0; next_waiting < waiting.size() || !running.empty(); ++clock) {
    if (running.empty() && requests[waiting[next_waiting]].arrival > clock) {
      clock = requests[waiting[next_waiting]].arrival;  // nothing to run until the next arrival
    }
    PlannedStep planned;
    planned.clock = clock;
    while (next_waiting < waiting.size()) {
      const RequestConfig& request = requests[waiting[next_waiting]];
      const int64_t pages = pages_for(request.prompt + request.generate, limits);
      const auto free_slot = std::find(slot_busy.begin(), slot_busy.end(), false);
      if (request.arrival > clock || free_slot == slot_busy.end() || promised_pages + pages > limits.pages) break;
      *free_slot = true;
      promised_pages += pages;
      running.push_back(
          {waiting[next_waiting], free_slot - slot_busy.begin(), 0, request.prompt + request.generate, request.prompt});
      planned.admitted.push_back(waiting[next_waiting]);
      ++next_waiting;
    }
    int64_t budget = limits.max_step_tokens;
    std::vector<int64_t> tokens(running.size(), 0);
    for (size_t i = 0; i < running.size() && budget > 0; ++i) {  // decodes first: one token each
      if (running[i].position >= running[i].prompt) tokens[i] = 1, --budget;
    }
    for (size_t i = 0; i < running.size() && budget > 0; ++i) {  // then prefill chunks
      if (running[i].position < running[i].prompt) {
        tokens[i] = std::min(budget, running[i].prompt - running[i].position);
        budget -= tokens[i];
      }
    }
    for (size_t i = 0; i < running.size(); ++i) {
      Running& sequence = running[i];
      planned.step.sequences.push_back({sequence.slot, sequence.position, tokens[i]});
      planned.request.push_back(sequence.request);
      (sequence.position >= sequence.prompt ? planned.decode_tokens : planned.prefill_tokens) += tokens[i];
      sequence.position += tokens[i];
      if (sequence.position == sequence.total) planned.finished.push_back(sequence.request);
    }
    for (const int64_t request : planned.finished) {
      const auto done =
          std::find_if(running.begin(), running.end(), [&](const Running& r) { return r.request == request; });
      slot_busy[static_cast<size_t>(done->slot)] = false;
      promised_pages -= pages_for(done->total, limits);
      running.erase(done);
    }
    plan.push_back(std::move(planned));
  }
  return plan;
}

}  // namespace mla
