// What both of mla_run's jobs (a uniform schedule, continuous batching) print and check: the
// model line, the per-step log and table, the checksum of y, and debug.fail / debug.hold.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "parallel/mpi_session.h"
#include "parallel/rank_agreement.h"
#include "runtime/io/config.h"
#include "runtime/io/safetensors.h"
#include "runtime/layer/mla_layer.h"
#include "runtime/layer/runner.h"

namespace mla {

void print_model(const ModelArgs& model);
// "prefill", "chunk", "decode", or for continuous batching "mixed" (prompt and decode tokens).
const char* step_phase(const StepReport& step);
int64_t step_tokens(const StepReport& step);
// run.log: steps (or --verbose): every rank prints every step as it ends.
void print_step(const std::string& label, size_t index, const StepReport& step);
// Collective: every rank's choice (path, formulation) per step, [rank][step], for rank 0's table.
std::vector<std::vector<std::string>> gather_choices(const MpiSession& session, const std::vector<StepReport>& steps);
// The default log: rank 0's one table of the steps, the other ranks' choices where they differ,
// the reason for each distinct choice once.
void print_step_table(const std::vector<StepReport>& steps, const std::vector<std::vector<std::string>>& choices);
// A checksum of y to compare runs by: the sum, the sum of |y| and an FNV-1a of the bits.
void print_checksum(const std::vector<const std::vector<float>*>& y);
// debug.hold: the ranks exchange an agreement every 20 ms, reporting progress, until the job is
// ended from outside; a rank stopped then leaves its peers waiting in the agreement, and their
// watchdogs end the job.
[[noreturn]] void hold_until_ended(const MpiSession& session, int64_t step);
// debug.fail and debug.hold must name a rank and a step that exist, or they would silently never
// fire. Throws UserError naming the key.
void check_debug_plan(const DebugConfig& debug, int world, size_t steps);
// The runner's options from the config: run.log, run.check_finite, debug.fail, debug.hold and the
// session's watchdog.
RunOptions run_options(const MpiSession& session, const Config& config);

// Collective: rank 0 writes `tensors` to run.output through a temporary file, renamed into place
// only once every rank has agreed that the run succeeded (a failed run leaves the old file);
// `what` names them in the log line.
void write_output(const MpiSession& session, Phases& phases, const Config& config, const std::string& config_path,
                  const std::vector<OutputTensor>& tensors, const std::string& what);

// parallel.context_parallel > 1: this rank's group (collective over the job); else nullptr.
std::unique_ptr<MpiCommunicator> context_group(const MpiSession& session, const ParallelConfig& parallel);
// "shared by both formulations" or "positions t % 4 == 1 of every sequence (context group of 4
// ranks)", with "; <transport>" inside the parentheses when one is named (the CUDA backend's NCCL or
// MPI).
std::string describe_context(const Communicator* group, const std::string& transport = "");

}  // namespace mla
