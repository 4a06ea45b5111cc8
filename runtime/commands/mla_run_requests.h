// mla_run's continuous-batching job (run.schedule.requests): the requests' steps planned, run on
// the CPU or the CUDA layer with each rank's slice of heads, each request's output written as
// "y.<name>".
#pragma once

#include <string>

#include "parallel/mpi_session.h"
#include "parallel/rank_agreement.h"
#include "parallel/thread_placement.h"
#include "runtime/io/config.h"

namespace mla {

// Collective; returns the exit code. Throws UserError (bad input) and RankFailure as mla_run does.
int run_requests_job(const MpiSession& session, Phases& phases, const Config& config, const std::string& config_path,
                     Backend backend, const RankThreads& rank_threads);

}  // namespace mla
