// A kernel that holds a stream for a while: how the tests make a collective wait past its deadline
// without a second GPU or a dead peer.
#pragma once

#include <cuda_runtime.h>

namespace mla::test {

// Queues on `stream` one kernel that spins for about `seconds` (by the SM clock), then returns.
void stall_stream(cudaStream_t stream, double seconds);

}  // namespace mla::test
