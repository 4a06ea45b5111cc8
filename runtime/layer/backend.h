// Which backend a rank runs: the one asked for, where this build and this rank can run it.
#pragma once

#include <string>

#include "runtime/io/config.h"

namespace mla {

// `requested` as the setting `key` gave it (run.backend, sweep.backend): cuda needs a build with
// the CUDA backend and a device this rank sees, or it is a UserError naming the key; auto is cuda
// where both are there, else cpu.
Backend resolve_backend(Backend requested, const std::string& key);

// parallel.communicator against the backend a rank resolved: nccl sums GPU ranks' outputs, so
// with the CPU backend it is a UserError naming the key (auto and mpi serve both backends).
void check_communicator(Backend backend, CommunicatorChoice communicator);

// parallel.context_parallel against the job: it must divide the world; with more than one rank per
// group the cache split needs the causal rule (no run.mask), and on the CUDA backend what
// check_cuda_context_split asks. A UserError naming the key otherwise.
void check_context_parallel(const Config& config, int world, Backend backend);

// The CUDA layer attends a rank's share of the cache with the split-KV kernel, which returns the
// log-sum-exps the merge needs and serves the absorb formulation only: with groups of `group` > 1
// ranks, run.formulation naive or run.attention standard is a UserError naming the key.
void check_cuda_context_split(const RunConfig& run, int64_t group);

}  // namespace mla
