// Every CUDA runtime call is checked: a failure throws CudaError naming the call, the file and
// line, and CUDA's own description, so a GPU error is never silently carried into the output.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "runtime/base/errors.h"

namespace mla {

[[noreturn]] void throw_cuda_error(const char* call, const char* file, int line, const std::string& detail);

// The number of CUDA devices this process can use; 0 when there is no driver or no device
// (never throws: the GPU tests use it to decide whether to skip).
int cuda_device_count();

// The current device's opt-in shared memory per block. With needed_bytes > 0 (and within that
// limit) also lets `kernel` launch with that much dynamic shared memory. Both are read or raised
// once per device and kernel, not on every step.
int64_t reserve_dynamic_shared_bytes(const void* kernel, int64_t needed_bytes);

}  // namespace mla

#define CUDA_CHECK(call)                                                                        \
  do {                                                                                          \
    const cudaError_t mla_cuda_status_ = (call);                                                \
    if (mla_cuda_status_ != cudaSuccess) {                                                      \
      ::mla::throw_cuda_error(#call, __FILE__, __LINE__, cudaGetErrorString(mla_cuda_status_)); \
    }                                                                                           \
  } while (0)

// After a kernel launch (kernel_name a string literal): a bad launch configuration is reported
// here, naming the kernel, instead of surfacing at some later call.
#define CUDA_CHECK_LAUNCH(kernel_name)                                                                             \
  do {                                                                                                             \
    const cudaError_t mla_cuda_status_ = cudaGetLastError();                                                       \
    if (mla_cuda_status_ != cudaSuccess) {                                                                         \
      ::mla::throw_cuda_error("launch of " kernel_name, __FILE__, __LINE__, cudaGetErrorString(mla_cuda_status_)); \
    }                                                                                                              \
  } while (0)
