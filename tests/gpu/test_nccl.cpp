// NCCL behind the communicator with a world of one (one GPU here): its deadline and abort, a whole
// run through it (wired on the layer's stream) equal to one without, a non-finite partial output;
// the all-gather and all-to-all on device memory.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include "parallel/host_staged_communicator.h"
#include "parallel/nccl_communicator.h"
#include "runtime/layer/cuda_step_executor.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/gpu/stall_kernel.h"
#include "tests/test_util.h"

namespace mla::test {
namespace {

using Nccl = GpuTest;

// NCCL's error path at a world of one, where a sum cannot be wrong: a kernel holds the stream past
// the deadline, so the all-reduce behind it is not done in time; the communicator is aborted and
// RankFailure names this rank and what it waited for, at the deadline rather than after the stall.
TEST_F(Nccl, AnAllReduceThatMissesItsDeadlineAbortsTheCommunicator) {
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  {
    NcclCommunicator comm(new_nccl_unique_id(), 0, 1, stream, 0.5);
    DeviceBuffer<float> device = to_device(random_floats(1 << 16, 30));
    stall_stream(stream, 4.0);
    const auto started = std::chrono::steady_clock::now();
    try {
      comm.allreduce_sum(device.data(), device.size());
      FAIL() << "an all-reduce behind a 4 s stall met a 0.5 s deadline";
    } catch (const RankFailure& failure) {
      const std::string message = failure.what();
      EXPECT_NE(message.find("rank 0"), std::string::npos) << message;
      EXPECT_NE(message.find("all-reduce"), std::string::npos) << message;
    }
    const double waited_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    EXPECT_LT(waited_s, 3.0) << "the wait ended with the stall, not at the deadline";
    // The stall ends; an in-place sum of one rank queues no kernel of NCCL's behind it.
    EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  }
  CUDA_CHECK(cudaStreamDestroy(stream));
}

// The collectives of context parallelism on device memory at a world of one, where both are a
// copy: through NCCL (an all-gather, and a group of a send and a receive to itself) and through
// host memory (HostStagedCommunicator over the single process).
TEST_F(Nccl, AllGatherAndAllToAllCopyAtAWorldOfOne) {
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  {
    const std::vector<float> values = random_floats(1000, 31);
    DeviceBuffer<float> send = to_device(values);
    NcclCommunicator nccl(new_nccl_unique_id(), 0, 1, stream, 10.0);
    SingleProcessCommunicator single;
    HostStagedCommunicator staged(single, stream);
    for (Communicator* comm : {static_cast<Communicator*>(&nccl), static_cast<Communicator*>(&staged)}) {
      DeviceBuffer<float> gathered(send.size()), exchanged(send.size());
      comm->allgather(send.data(), send.size(), gathered.data());
      comm->alltoall(send.data(), send.size(), exchanged.data());
      EXPECT_EQ(to_host(gathered), values);
      EXPECT_EQ(to_host(exchanged), values);
    }
  }
  CUDA_CHECK(cudaStreamDestroy(stream));
}

TEST_F(Nccl, ARunThroughNcclEqualsTheSameRunWithoutIt) {
  const ModelArgs m = model_args(72, 4, 24, 36, 12, 6, 10, 2, 32);
  const LoadedWeights loaded =
      load_layer_weights(random_weights(WeightDType::BF16, 11), m, whole(m), ComputeDType::BF16);
  const InputTensor x = random_input(m, 2, 7, 31);
  const std::vector<int64_t> steps = {5, 1, 1};
  RunConfig run;
  run.compute_dtype = ComputeDType::BF16;
  const CudaLayerLimits limits{2, 5, 7, false};
  std::vector<float> with_nccl, without;
  {
    CudaMlaLayer layer(m, whole(m), loaded.weights, run, limits);
    NcclCommunicator comm(new_nccl_unique_id(), 0, 1, layer.stream(), 30.0);
    CudaStepExecutor executor(layer, comm, {}, x.tokens);
    with_nccl = run_schedule(executor, x, steps, {}, {}).y;
  }
  {
    CudaMlaLayer layer(m, whole(m), loaded.weights, run, limits);
    SingleProcessCommunicator comm;
    CudaStepExecutor executor(layer, comm, {}, x.tokens);
    without = run_schedule(executor, x, steps, {}, {}).y;
  }
  EXPECT_EQ(with_nccl, without);
}

TEST_F(Nccl, ANonFinitePartialOutputStopsTheRun) {
  const ModelArgs m = model_args(72, 4, 24, 36, 12, 6, 10, 2, 32);
  const LoadedWeights loaded =
      load_layer_weights(random_weights(WeightDType::BF16, 12), m, whole(m), ComputeDType::FP32);
  const InputTensor x = random_input(m, 2, 7, 32);
  CudaMlaLayer layer(m, whole(m), loaded.weights, RunConfig{}, {2, 5, 7, false});
  NcclCommunicator comm(new_nccl_unique_id(), 0, 1, layer.stream(), 30.0);
  CudaStepExecutor executor(layer, comm, {}, x.tokens);
  RunOptions options;
  options.fault.mode = FaultMode::Nan;
  options.fault.step = 1;
  EXPECT_THROW(run_schedule(executor, x, {5, 1, 1}, {}, options), RankFailure);
}

}  // namespace
}  // namespace mla::test
