// Small host-to-device copies of a step's lists (token positions, block tables) through one
// pinned host buffer. From pageable memory the driver stages each copy itself and the call returns
// only once it has; from pinned memory the copy is queued and the call returns at once, which is
// most of a decode step's host time once its launches are one graph. Copies go to successive
// places in the buffer; one that would reach past its end first waits for the copies queued before
// it (an event after each), then starts again at the front.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/cuda/device_buffer.h"

namespace mla {

class PinnedUploads {
 public:
  // bytes: the pinned buffer; a copy larger than it goes from the caller's memory as is.
  explicit PinnedUploads(size_t bytes);
  ~PinnedUploads();
  PinnedUploads(const PinnedUploads&) = delete;
  PinnedUploads& operator=(const PinnedUploads&) = delete;

  // The first `count` values of dst get src's values, in stream order (the call may return before
  // the copy runs; src may change as soon as it returns). count <= dst.size().
  template <typename T>
  void upload(DeviceBuffer<T>& dst, const T* src, int64_t count, cudaStream_t stream) {
    if (count > dst.size()) throw_too_long(count, dst.size());
    copy(dst.data(), src, static_cast<size_t>(count) * sizeof(T), stream);
  }
  template <typename T>
  void upload(DeviceBuffer<T>& dst, const std::vector<T>& src, cudaStream_t stream) {
    upload(dst, src.data(), static_cast<int64_t>(src.size()), stream);
  }

 private:
  void copy(void* dst, const void* src, size_t bytes, cudaStream_t stream);
  [[noreturn]] static void throw_too_long(int64_t count, int64_t capacity);

  uint8_t* host_ = nullptr;
  size_t capacity_ = 0;
  size_t used_ = 0;
  cudaEvent_t copied_ = nullptr;  // after the latest copy from host_
};

}  // namespace mla
