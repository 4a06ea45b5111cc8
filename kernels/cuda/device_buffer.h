// Device memory owned by one object: allocated once, at the size the config asks for, freed with
// the object. The layer sums the bytes of its buffers for its memory report; every allocation and
// release is also counted (kernels/cuda/device_memory.h), so what is held can be measured.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_memory.h"

namespace mla {

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(int64_t count) : count_(count) {
    if (count_ > 0) {
      CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&data_), bytes()));
      note_device_allocation(static_cast<int64_t>(bytes()));
    }
  }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      count_ = std::exchange(other.count_, 0);
    }
    return *this;
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  int64_t size() const { return count_; }
  size_t bytes() const { return static_cast<size_t>(count_) * sizeof(T); }

  void upload(const T* host, int64_t count, cudaStream_t stream) {
    CUDA_CHECK(cudaMemcpyAsync(data_, host, static_cast<size_t>(count) * sizeof(T), cudaMemcpyHostToDevice, stream));
  }
  void upload(const std::vector<T>& host, cudaStream_t stream) {
    upload(host.data(), static_cast<int64_t>(host.size()), stream);
  }

 private:
  void release() {
    if (data_ == nullptr) return;
    cudaFree(data_);  // no throw from a destructor; a failure here is moot
    note_device_allocation(-static_cast<int64_t>(bytes()));
    data_ = nullptr;
  }

  T* data_ = nullptr;
  int64_t count_ = 0;
};

// Copies `count` values to a new host vector (synchronous).
template <typename T>
std::vector<T> download(const T* device, int64_t count) {
  std::vector<T> host(static_cast<size_t>(count));
  if (count > 0) CUDA_CHECK(cudaMemcpy(host.data(), device, host.size() * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

}  // namespace mla
