// What machine a benchmark ran on, recorded next to every number it prints (mla_bench's JSONL, the
// all-reduce benchmark's header): numbers without their machine cannot be compared or trusted.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace mla {

using MachineEntries = std::vector<std::pair<std::string, std::string>>;

// host, os, cpu_model, cpu_cores, cpu_isa (the flags that decide our kernels: avx2, avx512f,
// avx512_bf16, amx_bf16, ...), memory_total, blas, compiler, openmp, git_commit.
// `source_dir`: the checkout whose commit is reported ("git" is asked; "unknown" when it cannot say).
MachineEntries describe_machine(const std::string& source_dir);

// Reads the environment variables that choose kernels (MLA_CPU_ISA, kernels/cpu/cpu_features.h)
// before any work: a bad value is bad input, a UserError naming the variable.
void check_kernel_environment();

// The value of `key`, or "" when absent.
std::string machine_entry(const MachineEntries& entries, const std::string& key);

}  // namespace mla
