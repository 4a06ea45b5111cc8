#include "kernels/cuda/pinned_uploads.h"

#include <cstring>
#include <stdexcept>
#include <string>

namespace mla {

PinnedUploads::PinnedUploads(size_t bytes) : capacity_(bytes) {
  CUDA_CHECK(cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming));
  if (capacity_ > 0) {
    const cudaError_t status = cudaMallocHost(reinterpret_cast<void**>(&host_), capacity_);
    if (status != cudaSuccess) {
      cudaEventDestroy(copied_);
      throw_cuda_error("cudaMallocHost(&host_, capacity_)", __FILE__, __LINE__, cudaGetErrorString(status));
    }
  }
}

PinnedUploads::~PinnedUploads() {
  // The copies read host_ until they run: wait for the last one (no throw from a destructor).
  cudaEventSynchronize(copied_);
  if (host_ != nullptr) cudaFreeHost(host_);
  cudaEventDestroy(copied_);
}

void PinnedUploads::copy(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  if (bytes == 0) return;
  if (bytes > capacity_) {  // rare: larger than the buffer was sized for; the driver stages it
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
    return;
  }
  if (used_ + bytes > capacity_) {
    CUDA_CHECK(cudaEventSynchronize(copied_));  // every earlier copy from host_ is done
    used_ = 0;
  }
  uint8_t* staged = host_ + used_;
  std::memcpy(staged, src, bytes);
  CUDA_CHECK(cudaMemcpyAsync(dst, staged, bytes, cudaMemcpyHostToDevice, stream));
  CUDA_CHECK(cudaEventRecord(copied_, stream));
  used_ += (bytes + 15) / 16 * 16;
}

void PinnedUploads::throw_too_long(int64_t count, int64_t capacity) {
  throw std::invalid_argument("PinnedUploads::upload: " + std::to_string(count) + " values into a device buffer of " +
                              std::to_string(capacity));
}

}  // namespace mla
