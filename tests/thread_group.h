// Ranks as threads of one process, for tests of what happens inside a step's collectives (context
// parallelism gathers queries and exchanges partial outputs mid-step, so a group cannot be emulated
// by running its ranks one after another). Each rank's communicator works on host memory; a GPU
// test wraps it in HostStagedCommunicator, as parallel.communicator: mpi does with MPI.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace mla::test {

class ThreadGroup {
 public:
  explicit ThreadGroup(int ranks);
  ~ThreadGroup();
  ThreadGroup(const ThreadGroup&) = delete;
  ThreadGroup& operator=(const ThreadGroup&) = delete;

  int size() const { return static_cast<int>(ranks_.size()); }
  // Rank r's communicator: its collectives return once every rank of the group has made the same
  // call. Valid while the group lives.
  Communicator& rank(int r);
  // Runs body(r) on a thread per rank and joins them. When a rank throws, the others' collectives
  // throw too (no thread waits forever), also those of `linked` groups the threads use (a world's
  // context groups), and the first exception is rethrown here.
  void run(const std::function<void(int)>& body, const std::vector<ThreadGroup*>& linked = {});

 private:
  class RankCommunicator;
  friend class RankCommunicator;

  // Every rank publishes its buffers, meets the others, reads what it needs, and meets them again
  // before anyone's buffers may change.
  void meet();
  void abort_all();

  std::vector<std::unique_ptr<RankCommunicator>> ranks_;
  std::mutex mutex_;
  std::condition_variable arrived_;
  int waiting_ = 0;
  int64_t generation_ = 0;
  bool aborted_ = false;
  std::vector<const float*> sends_;  // each rank's send buffer of the current collective
};

// A world of threads in context groups (parallel.context_parallel) of group_size consecutive
// ranks: rank r is rank r % group_size of group r / group_size.
class ThreadWorld {
 public:
  ThreadWorld(int world, int group_size);
  Communicator& rank(int r) { return world_.rank(r); }
  Communicator& context_group(int r);
  // As ThreadGroup::run over the world, a failing rank ending the waits in every group too.
  void run(const std::function<void(int)>& body);

 private:
  int group_size_;
  ThreadGroup world_;
  std::vector<std::unique_ptr<ThreadGroup>> groups_;
};

}  // namespace mla::test
