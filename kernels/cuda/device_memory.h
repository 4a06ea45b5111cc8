// Device memory as measured, not as computed: every DeviceBuffer reports its allocation and its
// release here, so a benchmark or a test reads what the program really holds (and held at most),
// next to what the driver says the whole process uses.
#pragma once

#include <cstdint>

namespace mla {

struct DeviceMemoryUse {
  int64_t in_use_bytes = 0;  // held through DeviceBuffer now
  int64_t peak_bytes = 0;    // the most held at once since the last reset_device_memory_peak()
};

DeviceMemoryUse device_memory_use();

// The peak starts again from what is held now (a benchmark calls it before each point).
void reset_device_memory_peak();

// DeviceBuffer's bookkeeping: `bytes` allocated (positive) or freed (negative).
void note_device_allocation(int64_t bytes);

// Total minus free memory of the current device, as the driver reports it: the CUDA context,
// cuBLAS, NCCL and every buffer of this process, and of any other process on the same device.
int64_t device_memory_used_by_driver();

// What the driver accounts to this process alone, over every GPU (nvidia-smi's per-process list,
// whole MiB): its CUDA context, libraries and buffers, none of another process's (a benchmark's
// PyTorch worker shares the device). -1 where the driver does not list this process: no
// nvidia-smi, or a sandbox whose process ids are not the driver's.
int64_t device_memory_used_by_this_process();

}  // namespace mla
