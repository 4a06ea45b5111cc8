#pragma once
// Where a rank's CPU threads run. One OpenMP pool serves our kernels, oneDNN and OpenBLAS (all
// OpenMP builds), so pinning that pool's threads once places every parallel region that follows.

#include <string>
#include <vector>

namespace mla {

// The CPUs this process may run on (sched_getaffinity), ascending.
std::vector<int> allowed_cpus();

struct PlacementRequest {
  int threads = 1;           // the rank's OpenMP threads
  std::vector<int> allowed;  // allowed_cpus() of the rank
  int node_cpus = 1;         // CPUs of the node
  int local_rank = 0;        // rank among the processes of this node
  int local_size = 1;        // processes of this job on this node
};

// One CPU per thread, or empty where pinning would hurt: more threads than allowed CPUs, or ranks
// that share an unbound node (every rank allowed on all its CPUs, as with `mpirun --bind-to none`
// or an oversubscribed node) and whose slices would not all fit. On such a node local rank r takes
// allowed CPUs [r * threads, (r + 1) * threads), so ranks do not pin onto the same cores; a rank the
// launcher bound to its own CPUs takes the first `threads` of them.
std::vector<int> choose_thread_cpus(const PlacementRequest& request);

// Pins OpenMP thread i of a `cpus.size()`-thread team to cpus[i]; false when the kernel refused.
bool pin_openmp_threads(const std::vector<int>& cpus);

// Lets every OpenMP thread of a `threads`-thread team run on all of `cpus` again.
bool unpin_openmp_threads(int threads, const std::vector<int>& cpus);

// "0-3,8" for {0, 1, 2, 3, 8}.
std::string describe_cpus(const std::vector<int>& cpus);

struct RankThreads {
  int count = 1;
  std::string placement;  // "pinned to CPUs 0-3", or why not
};

// The CPU threads of one rank: `requested` when > 0; else the CPUs this process may run on
// (mpirun --bind-to, Slurm's cpus-per-task), at most the node's cores split over its local_size ranks, so
// ranks on one node do not fight over cores. Sets OpenMP's and the BLAS's thread counts to it and,
// with `pin` (run.pin_threads), pins thread i to one CPU unless
// OMP_PROC_BIND, OMP_PLACES, GOMP_CPU_AFFINITY or KMP_AFFINITY already say where threads go.
RankThreads configure_rank_threads(int requested, bool pin, int local_rank, int local_size);

}  // namespace mla
