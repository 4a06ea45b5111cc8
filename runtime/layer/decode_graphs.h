// Which decode steps the CUDA layer replays as a captured CUDA graph (docs/cuda_backend.md, The
// decode step as one CUDA graph), kept apart from CUDA so that the policy is tested everywhere.
//
// A captured graph replays its launches with the arguments they had at capture: the buffers'
// addresses (fixed for the layer's life), the step's token and sequence counts, and the split of
// the keys among blocks. The per-sequence lengths, positions and block tables are read from device
// memory, uploaded before each replay, so one graph serves every step of the same shape whatever
// its sequences' lengths, as long as the split is the same: the split is sized for the kv_len
// bucket (decode_kv_bucket) rather than for the exact length, eager steps included, so that a
// replayed step is bit for bit the step launched without the graph.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <set>
#include <tuple>
#include <utility>

namespace mla {

// The kv_len a decode step's split is sized for: kv_len rounded up to 4, 5, 6 or 7 times a power of
// two (at least 64), so that a sequence growing one token a step changes bucket about 4 times per
// doubling, and at least 4/7 of the blocks a bucket's split launches have keys to read.
int64_t decode_kv_bucket(int64_t kv_len);

// Everything a decode step's launches take from the host. x and y: the step's input and output
// buffers (the executor's own, the same every step). timed: attention timing events in the graph.
struct DecodeGraphKey {
  int64_t sequences = 0;
  int64_t tokens = 0;
  int64_t max_new_tokens = 0;
  int64_t kv_bucket = 0;
  const void* x = nullptr;
  const void* y = nullptr;
  bool timed = false;

  bool operator<(const DecodeGraphKey& other) const {
    return std::tie(sequences, tokens, max_new_tokens, kv_bucket, x, y, timed) <
           std::tie(other.sequences, other.tokens, other.max_new_tokens, other.kv_bucket, other.x, other.y,
                    other.timed);
  }
};

enum class DecodeGraphAction {
  Eager,    // the first step of its shape: launched one by one, which also warms what a capture records
            // (cuBLAS's choices, kernels' shared-memory limits)
  Capture,  // the second: captured, then replayed
  Replay,   // every later one
};

// Graphs by key, at most `capacity`, the least recently used dropped first. Graph: the backend's
// move-only handle (a CUDA graph exec on the GPU; anything in the tests).
template <class Graph>
class DecodeGraphCache {
 public:
  explicit DecodeGraphCache(size_t capacity) : capacity_(capacity) {}

  // What to do with a step of `key`, counting it as seen. Replay: graph(key) holds it.
  DecodeGraphAction action(const DecodeGraphKey& key) {
    auto found = entries_.find(key);
    if (found == entries_.end()) {
      if (seen_.size() >= 4 * capacity_) seen_.clear();  // shapes seen once: bounded as well
      if (seen_.insert(key).second) return DecodeGraphAction::Eager;
      seen_.erase(key);
      return DecodeGraphAction::Capture;
    }
    recency_.splice(recency_.begin(), recency_, found->second.position);
    return DecodeGraphAction::Replay;
  }
  Graph& graph(const DecodeGraphKey& key) { return entries_.at(key).graph; }
  Graph& insert(const DecodeGraphKey& key, Graph graph) {
    if (entries_.size() >= capacity_ && !recency_.empty()) {
      entries_.erase(recency_.back());
      recency_.pop_back();
    }
    recency_.push_front(key);
    Entry& entry = entries_.emplace(key, Entry{std::move(graph), recency_.begin()}).first->second;
    ++captured_;
    return entry.graph;
  }
  void clear() {
    entries_.clear();
    recency_.clear();
    seen_.clear();
  }
  size_t size() const { return entries_.size(); }
  int64_t captured() const { return captured_; }  // graphs captured over the cache's life

 private:
  struct Entry {
    Graph graph;
    std::list<DecodeGraphKey>::iterator position;
  };
  size_t capacity_;
  std::map<DecodeGraphKey, Entry> entries_;
  std::list<DecodeGraphKey> recency_;  // most recently used first
  std::set<DecodeGraphKey> seen_;      // shapes stepped once, not yet captured
  int64_t captured_ = 0;
};

}  // namespace mla
