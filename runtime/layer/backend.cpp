#include "runtime/layer/backend.h"

#include "runtime/base/errors.h"

#if MLA_HAVE_CUDA
#include "kernels/cuda/cuda_check.h"
#endif

namespace mla {

Backend resolve_backend(Backend requested, const std::string& key) {
#if MLA_HAVE_CUDA
  const int devices = cuda_device_count();
  if (requested == Backend::Cuda && devices == 0) {
    throw UserError(key + ": cuda, but this rank sees no CUDA device; use cpu or auto");
  }
  if (requested == Backend::Auto) return devices > 0 ? Backend::Cuda : Backend::Cpu;
  return requested;
#else
  if (requested == Backend::Cuda) {
    throw UserError(key + ": cuda is not available in this build (built without nvcc); use cpu or auto");
  }
  return Backend::Cpu;
#endif
}

void check_communicator(Backend backend, CommunicatorChoice communicator) {
  if (backend == Backend::Cpu && communicator == CommunicatorChoice::Nccl) {
    throw UserError(
        "parallel.communicator: nccl sums GPU ranks' outputs, but this run is on the CPU "
        "(run.backend resolved to cpu); use auto or mpi");
  }
}

}  // namespace mla
