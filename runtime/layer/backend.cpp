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

void check_context_parallel(const Config& config, int world, Backend backend) {
  const int64_t group = config.parallel.context_parallel;
  if (world % group != 0) {
    throw UserError("parallel.context_parallel: groups of " + std::to_string(group) + " ranks do not divide the " +
                    std::to_string(world) + " ranks of this job");
  }
  if (group == 1) return;
  if (backend == Backend::Cuda) check_cuda_context_split(config.run, group);
  if (!config.run.mask.empty()) {
    throw UserError("run.mask: an explicit mask with parallel.context_parallel " + std::to_string(group) +
                    " (the mask's columns are positions, which the group's ranks split); use the causal rule");
  }
}

void check_cuda_context_split(const RunConfig& run, int64_t group) {
  if (group <= 1) return;
  const std::string why = " with parallel.context_parallel " + std::to_string(group) +
                          " on the CUDA backend, which attends a rank's share of the cache with the split-KV "
                          "kernel in the absorb formulation";
  if (run.formulation == FormulationChoice::Naive)
    throw UserError("run.formulation: naive" + why + "; use absorb or auto");
  if (run.attention == AttentionChoice::Standard)
    throw UserError("run.attention: standard" + why + "; use fast or auto");
}

}  // namespace mla
