// How ranks talk: the layer's partial outputs are summed across ranks (docs/design.md step 9), and
// context parallelism moves queries and partial attention outputs within a group (all-gather,
// all-to-all). The MPI implementation (CPU ranks), the NCCL one and MPI through host memory (GPU
// ranks) come behind this interface.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "runtime/base/errors.h"
#include "runtime/base/host_name.h"

namespace mla {

// How a GPU rank sums its partial output (parallel.communicator): NCCL on the device, or MPI
// through host memory (several ranks may then share one GPU); auto: NCCL when every rank of the
// job has a GPU of its own, else MPI.
enum class CommunicatorChoice { Auto, Nccl, Mpi };

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  virtual std::string host() const = 0;
  // In place: every rank ends with the element-wise sum over ranks, bitwise identical everywhere.
  virtual void allreduce_sum(float* values, int64_t count) = 0;
  // Every rank's `count` values, in rank order, on every rank: recv [world * count]. send and recv
  // must not overlap.
  virtual void allgather(const float* send, int64_t count, float* recv) = 0;
  // Block r of send [world * count] goes to rank r; block r of recv [world * count] came from
  // rank r. send and recv must not overlap.
  virtual void alltoall(const float* send, int64_t count, float* recv) = 0;
};

// A world of one: the sum over ranks is the rank's own value, a gather or exchange a copy (of host
// memory).
class SingleProcessCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world() const override { return 1; }
  std::string host() const override;
  void allreduce_sum(float* /*values*/, int64_t /*count*/) override {}
  void allgather(const float* send, int64_t count, float* recv) override;
  void alltoall(const float* send, int64_t count, float* recv) override { allgather(send, count, recv); }
};

}  // namespace mla
