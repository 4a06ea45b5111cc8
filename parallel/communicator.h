// How ranks talk: the layer's partial outputs are summed across ranks (docs/design.md step 9).
// The MPI implementation (CPU ranks) and the NCCL one (GPU ranks) come behind this interface.
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
};

// A world of one: the sum over ranks is the rank's own value.
class SingleProcessCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world() const override { return 1; }
  std::string host() const override;
  void allreduce_sum(float* /*values*/, int64_t /*count*/) override {}
};

}  // namespace mla
