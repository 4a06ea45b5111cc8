#include "tests/thread_group.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <stdexcept>
#include <thread>

namespace mla::test {

class ThreadGroup::RankCommunicator final : public Communicator {
 public:
  RankCommunicator(ThreadGroup& group, int rank) : group_(group), rank_(rank) {}
  int rank() const override { return rank_; }
  int world() const override { return group_.size(); }
  std::string host() const override { return "thread " + std::to_string(rank_); }

  // Summed in rank order on every rank, so every rank gets the same bits.
  void allreduce_sum(float* values, int64_t count) override {
    publish(values);
    std::vector<float> sum(static_cast<size_t>(count), 0.0f);
    for (const float* source : group_.sends_) {
      for (int64_t i = 0; i < count; ++i) sum[i] += source[i];
    }
    group_.meet();  // every rank has read every rank's values before any is overwritten
    std::copy(sum.begin(), sum.end(), values);
  }
  void allgather(const float* send, int64_t count, float* recv) override {
    publish(send);
    for (int source = 0; source < world(); ++source) {
      std::copy(group_.sends_[source], group_.sends_[source] + count, recv + source * count);
    }
    group_.meet();
  }
  void alltoall(const float* send, int64_t count, float* recv) override {
    publish(send);
    for (int source = 0; source < world(); ++source) {
      const float* block = group_.sends_[source] + rank_ * count;
      std::copy(block, block + count, recv + source * count);
    }
    group_.meet();
  }

 private:
  void publish(const float* send) {
    {
      std::lock_guard<std::mutex> lock(group_.mutex_);
      group_.sends_[rank_] = send;
    }
    group_.meet();
  }

  ThreadGroup& group_;
  int rank_;
};

ThreadGroup::ThreadGroup(int ranks) : sends_(static_cast<size_t>(ranks), nullptr) {
  if (ranks < 1) throw std::invalid_argument("ThreadGroup: " + std::to_string(ranks) + " ranks");
  for (int r = 0; r < ranks; ++r) ranks_.push_back(std::make_unique<RankCommunicator>(*this, r));
}

ThreadGroup::~ThreadGroup() = default;

Communicator& ThreadGroup::rank(int r) { return *ranks_.at(static_cast<size_t>(r)); }

void ThreadGroup::meet() {
  std::unique_lock<std::mutex> lock(mutex_);
  if (aborted_) throw std::runtime_error("ThreadGroup: another rank failed");
  const int64_t generation = generation_;
  if (++waiting_ == size()) {
    waiting_ = 0;
    ++generation_;
    arrived_.notify_all();
    return;
  }
  // A rank that never comes (a test whose ranks make different calls) fails the test, not hangs it.
  const bool met =
      arrived_.wait_for(lock, std::chrono::seconds(120), [&] { return generation_ != generation || aborted_; });
  if (!met) {
    aborted_ = true;
    arrived_.notify_all();
    throw std::runtime_error("ThreadGroup: the ranks did not all reach a collective within 120 s");
  }
  if (generation_ == generation) throw std::runtime_error("ThreadGroup: another rank failed");
}

void ThreadGroup::abort_all() {
  std::lock_guard<std::mutex> lock(mutex_);
  aborted_ = true;
  arrived_.notify_all();
}

void ThreadGroup::run(const std::function<void(int)>& body, const std::vector<ThreadGroup*>& linked) {
  for (ThreadGroup* group : linked) {
    std::lock_guard<std::mutex> lock(group->mutex_);
    group->aborted_ = false;
    group->waiting_ = 0;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    aborted_ = false;
    waiting_ = 0;
  }
  std::vector<std::exception_ptr> failures(ranks_.size());
  std::vector<std::thread> threads;
  for (int r = 0; r < size(); ++r) {
    threads.emplace_back([&, r] {
      try {
        body(r);
      } catch (...) {
        failures[r] = std::current_exception();
        abort_all();
        for (ThreadGroup* group : linked) group->abort_all();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  // The rank that failed first is the one whose error is not "another rank failed"; any will do
  // when several failed on their own.
  std::exception_ptr first;
  for (const std::exception_ptr& failure : failures) {
    if (failure == nullptr) continue;
    try {
      std::rethrow_exception(failure);
    } catch (const std::runtime_error& error) {
      if (std::string(error.what()).find("another rank failed") != std::string::npos) {
        if (first == nullptr) first = failure;
        continue;
      }
      std::rethrow_exception(failure);
    } catch (...) {
      std::rethrow_exception(failure);
    }
  }
  if (first != nullptr) std::rethrow_exception(first);
}

ThreadWorld::ThreadWorld(int world, int group_size) : group_size_(group_size), world_(world) {
  if (group_size < 1 || world % group_size != 0) {
    throw std::invalid_argument("ThreadWorld: groups of " + std::to_string(group_size) + " in a world of " +
                                std::to_string(world));
  }
  for (int g = 0; g < world / group_size; ++g) groups_.push_back(std::make_unique<ThreadGroup>(group_size));
}

Communicator& ThreadWorld::context_group(int r) {
  return groups_.at(static_cast<size_t>(r / group_size_))->rank(r % group_size_);
}

void ThreadWorld::run(const std::function<void(int)>& body) {
  std::vector<ThreadGroup*> linked;
  for (const std::unique_ptr<ThreadGroup>& group : groups_) linked.push_back(group.get());
  world_.run(body, linked);
}

}  // namespace mla::test
