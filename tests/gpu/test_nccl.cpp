// NCCL behind the communicator with a world of one (one GPU here): the in-place all-reduce on the
// layer's stream leaves the values as they are, and a whole run through NCCL equals one without.
#include <gtest/gtest.h>

#include <vector>

#include "parallel/nccl_communicator.h"
#include "runtime/layer/cuda_step_executor.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/test_util.h"

namespace mla::test {
namespace {

using Nccl = GpuTest;

TEST_F(Nccl, WorldOfOneAllReduceIsInPlaceAndExact) {
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  {
    NcclCommunicator comm(new_nccl_unique_id(), 0, 1, stream, 30.0);
    EXPECT_EQ(comm.rank(), 0);
    EXPECT_EQ(comm.world(), 1);
    const std::vector<float> values = random_floats(100003, 30);
    DeviceBuffer<float> device = to_device(values);
    comm.allreduce_sum(device.data(), static_cast<int64_t>(values.size()));
    EXPECT_EQ(to_host(device), values);
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
