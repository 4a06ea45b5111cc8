// mla_run under mpiexec: worlds of 2 and 4 ranks on this machine give the world-1 output on every
// path, formulation and phase; ranks hold bitwise-identical y; split and unsplit checkpoints agree;
// a rank with a different config or a missing file stops the whole job with its reason.
#include <gtest/gtest.h>

#include <cstdio>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/io/safetensors.h"
#include "tests/cli_fixture.h"

namespace mla::test {
namespace {

class MlaRunMpi : public MlaRunCli {
 protected:
  // y of `ranks` ranks running `config_text` with `sets`; fails the test on a non-zero exit.
  std::vector<float> y_of(int ranks, const std::string& config_text, std::vector<std::string> sets) {
    const std::string y_path = dir_.file("y_world" + std::to_string(ranks) + ".safetensors");
    sets.push_back("run.output=" + y_path);
    sets.push_back("parallel.check_identical_output=true");
    const Outcome outcome = run_command(mpiexec(ranks) + mla_run_command(write_config("mpi.yaml", config_text), sets));
    EXPECT_EQ(outcome.exit_code, 0) << outcome.out << outcome.err;
    if (outcome.exit_code != 0) return {};
    EXPECT_NE(outcome.out.find("y is bitwise identical on all " + std::to_string(ranks) + " ranks"), std::string::npos)
        << outcome.out;
    return SafetensorsFile::open(y_path).read_f32("y");
  }

  // 4 heads, requests served by continuous batching in steps of at most 6 tokens.
  std::string four_head_requests(const std::string& requests) const {
    return "model: {dim: 48, n_heads: 4, q_lora_rank: 16, kv_lora_rank: 24, qk_nope_head_dim: 8,\n"
           "        qk_rope_head_dim: 4, v_head_dim: 8, max_batch_size: 2, max_seq_len: 32}\n"
           "weights: {format: random, dtype: bf16, seed: 5}\n"
           "run:\n"
           "  threads: 1\n"
           "  input: {random: {seed: 6}}\n"
           "  schedule: {requests: " +
           requests +
           "}\n"
           "  max_step_tokens: 6\n";
  }

  // 4 heads, every phase: a prefill, a chunk at an offset, decode steps.
  std::string four_head_config() const {
    return "model: {dim: 48, n_heads: 4, q_lora_rank: 16, kv_lora_rank: 24, qk_nope_head_dim: 8,\n"
           "        qk_rope_head_dim: 4, v_head_dim: 8, max_batch_size: 2, max_seq_len: 32}\n"
           "weights: {format: random, dtype: bf16, seed: 5}\n"
           "run:\n"
           "  threads: 1\n"
           "  input: {random: {batch: 2, tokens: 12, seed: 6}}\n"
           "  schedule: {chunks: [6, 3, 1, 1, 1]}\n";
  }
};

TEST_F(MlaRunMpi, WorldsOfTwoAndFourEqualWorldOneOnEveryPath) {
  for (const char* attention : {"fast", "standard"}) {
    for (const char* formulation : {"naive", "absorb"}) {
      const std::vector<std::string> sets = {std::string("run.attention=") + attention,
                                             std::string("run.formulation=") + formulation};
      const std::vector<float> world1 = y_of(1, four_head_config(), sets);
      for (int ranks : {2, 4}) {
        const std::vector<float> y = y_of(ranks, four_head_config(), sets);
        ASSERT_EQ(y.size(), world1.size());
        EXPECT_LE(relative_l2(y, to_double(world1)), 1e-5) << ranks << " ranks, " << attention << ", " << formulation;
      }
    }
  }
}

// Continuous batching at world 2 and 4: every rank runs the same planned steps with the same block
// tables, and each request's output equals world 1's (dense fp32 and paged fp8 caches).
TEST_F(MlaRunMpi, ContinuousBatchingAtTwoAndFourRanksEqualsOneRank) {
  const std::string config = four_head_requests(
      "[{name: a, prompt: 9, generate: 3}, {name: b, prompt: 3, generate: 6, arrival: 1},\n"
      "                        {name: c, prompt: 5, generate: 2, arrival: 2}]");
  for (const char* cache : {"{layout: dense}", "{layout: paged, page_size: 4, pages: 6, dtype: fp8}"}) {
    const std::vector<std::string> sets = {std::string("run.kv_cache=") + cache};
    std::vector<std::vector<float>> world1;
    for (int ranks : {1, 2, 4}) {
      const std::string y_path = dir_.file("y_requests" + std::to_string(ranks) + ".safetensors");
      std::vector<std::string> run_sets = sets;
      run_sets.push_back("run.output=" + y_path);
      run_sets.push_back("parallel.check_identical_output=true");
      const Outcome outcome = run_command(mpiexec(ranks) + mla_run_command(write_config("cb.yaml", config), run_sets));
      ASSERT_EQ(outcome.exit_code, 0) << outcome.out << outcome.err;
      EXPECT_NE(outcome.out.find("y is bitwise identical on all " + std::to_string(ranks) + " ranks"),
                std::string::npos);
      const SafetensorsFile y = SafetensorsFile::open(y_path);
      for (size_t i = 0; i < 3; ++i) {
        const std::vector<float> values = y.read_f32(std::string("y.") + "abc"[i]);
        if (ranks == 1) {
          world1.push_back(values);
        } else {
          EXPECT_LE(relative_l2(values, to_double(world1[i])), 1e-5) << ranks << " ranks, " << cache << ", " << i;
        }
      }
    }
  }
}

// parallel.context_parallel: groups of 2 at world 2 and 4, of 4 at world 4, every rank keeping its
// share of each sequence's positions: the same y as world 1 (uniform steps on both paths and
// formulations, uneven heads, and continuous batching over a paged fp8 cache), each rank saying
// which positions it keeps; bad settings refused naming their key.
TEST_F(MlaRunMpi, ContextParallelGroupsEqualWorldOne) {
  for (const char* plan : {"fast naive", "fast absorb", "standard naive", "standard absorb"}) {
    const std::string attention(plan, std::string(plan).find(' '));
    const std::vector<std::string> sets = {"run.attention=" + attention,
                                           "run.formulation=" + std::string(plan).substr(attention.size() + 1)};
    const std::vector<float> world1 = y_of(1, four_head_config(), sets);
    for (const auto& [ranks, group] : {std::pair{2, 2}, std::pair{4, 2}, std::pair{4, 4}}) {
      std::vector<std::string> cp_sets = sets;
      cp_sets.push_back("parallel.context_parallel=" + std::to_string(group));
      const std::vector<float> y = y_of(ranks, four_head_config(), cp_sets);
      ASSERT_EQ(y.size(), world1.size());
      EXPECT_LE(relative_l2(y, to_double(world1)), 1e-5) << ranks << " ranks, groups of " << group << ", " << plan;
    }
  }
  // Uneven heads (5 over 2 and 4 ranks, the first rank holding one more): the blocks the group
  // exchanges are sized for its most heads.
  for (const char* formulation : {"naive", "absorb"}) {
    const std::vector<std::string> sets = {"model.n_heads=5", "parallel.uneven_heads=true",
                                           std::string("run.formulation=") + formulation};
    const std::vector<float> world1 = y_of(1, four_head_config(), sets);
    for (const auto& [ranks, group] : {std::pair{2, 2}, std::pair{4, 2}, std::pair{4, 4}}) {
      std::vector<std::string> cp_sets = sets;
      cp_sets.push_back("parallel.context_parallel=" + std::to_string(group));
      EXPECT_LE(relative_l2(y_of(ranks, four_head_config(), cp_sets), to_double(world1)), 1e-5)
          << ranks << " ranks, groups of " << group << ", 5 heads, " << formulation;
    }
  }
  const std::string requests =
      four_head_requests("[{name: a, prompt: 9, generate: 3}, {name: b, prompt: 3, generate: 6, arrival: 1}]") +
      "  kv_cache: {layout: paged, page_size: 2, pages: 6, dtype: fp8}\n";
  std::vector<std::vector<float>> world1;
  for (const int group : {1, 2, 4}) {
    const std::string y_path = dir_.file("y_cp" + std::to_string(group) + ".safetensors");
    const Outcome outcome =
        run_command(mpiexec(group == 1 ? 1 : 4) +
                    mla_run_command(write_config("cp.yaml", requests),
                                    {"parallel.context_parallel=" + std::to_string(group), "run.output=" + y_path}));
    ASSERT_EQ(outcome.exit_code, 0) << outcome.out << outcome.err;
    if (group > 1) {
      EXPECT_NE(outcome.out.find("(context group of " + std::to_string(group) + " ranks)"), std::string::npos)
          << outcome.out;
    }
    const SafetensorsFile y = SafetensorsFile::open(y_path);
    for (const char* name : {"y.a", "y.b"}) {
      const std::vector<float> values = y.read_f32(name);
      if (group == 1) {
        world1.push_back(values);
      } else {
        // fp8 rows: the ranks' c_n is computed as world 1's, but a tie may round to either code.
        EXPECT_LE(relative_l2(values, to_double(world1[name[2] - 'a'])), 1e-4) << "groups of " << group << " " << name;
      }
    }
  }
  const std::string config = write_config("bad.yaml", four_head_config());
  expect_user_error(run_command(mpiexec(2) + mla_run_command(config, {"parallel.context_parallel=4"})),
                    {"parallel.context_parallel", "do not divide"});
  expect_user_error(run_command(mpiexec(2) + mla_run_command(config, {"parallel.context_parallel=2", "run.mask=m"})),
                    {"run.mask", "context_parallel"});
}

// "[rank r/n host] ... pinned to CPUs 0-1,4; ..." -> {0, 1, 4} for each rank; a rank without such a
// line fails the test.
std::vector<std::set<int>> pinned_cpus_per_rank(const std::string& out, int ranks) {
  std::vector<std::set<int>> cpus(static_cast<size_t>(ranks));
  const std::string marker = " threads pinned to CPUs ";
  std::stringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    int rank = -1;
    const size_t at = line.find(marker);
    if (std::sscanf(line.c_str(), "[rank %d/", &rank) != 1 || at == std::string::npos || rank < 0 || rank >= ranks)
      continue;
    std::set<int>& rank_cpus = cpus[static_cast<size_t>(rank)];
    std::stringstream ranges(line.substr(at + marker.size(), line.find(';', at) - at - marker.size()));
    for (std::string range; std::getline(ranges, range, ',');) {
      const size_t dash = range.find('-');
      const int first = std::stoi(range.substr(0, dash));
      const int last = dash == std::string::npos ? first : std::stoi(range.substr(dash + 1));
      for (int cpu = first; cpu <= last; ++cpu) rank_cpus.insert(cpu);
    }
  }
  for (int r = 0; r < ranks; ++r)
    EXPECT_FALSE(cpus[static_cast<size_t>(r)].empty()) << "rank " << r << " not pinned\n" << out;
  return cpus;
}

// Ranks of one node pin their threads to CPUs no other rank uses: bound by mpiexec (its default)
// and unbound (every rank allowed on every CPU, so each takes its local rank's slice).
TEST_F(MlaRunMpi, RanksOfOneNodePinTheirThreadsToDisjointCpus) {
  for (const char* binding : {"", "OMPI_MCA_hwloc_base_binding_policy=none "}) {
    const Outcome outcome = run_command(
        binding + mpiexec(2) + mla_run_command(write_config("pin.yaml", four_head_config()), {"run.threads=0"}));
    ASSERT_EQ(outcome.exit_code, 0) << outcome.out << outcome.err;
    const std::vector<std::set<int>> cpus = pinned_cpus_per_rank(outcome.out, 2);
    for (const int cpu : cpus[0])
      EXPECT_EQ(cpus[1].count(cpu), 0u) << "CPU " << cpu << " pinned by both ranks (" << binding << ")\n"
                                        << outcome.out;
  }
}

TEST_F(MlaRunMpi, PinningCanBeTurnedOff) {
  const Outcome outcome = run_command(
      mpiexec(1) + mla_run_command(write_config("pin.yaml", four_head_config()), {"run.pin_threads=false"}));
  ASSERT_EQ(outcome.exit_code, 0) << outcome.out << outcome.err;
  EXPECT_NE(outcome.out.find("not pinned (run.pin_threads: false)"), std::string::npos) << outcome.out;
}

// DeepSeek's fixture has 5 heads: worlds 2 and 4 need uneven sharding, and must still reproduce it.
TEST_F(MlaRunMpi, UnevenHeadsReproduceDeepSeek) {
  const std::vector<float> expected =
      SafetensorsFile::open(kFixtureDir + "/expected.safetensors").read_f32("y_absorb_f32");
  std::vector<std::string> sets = fixture_sets(kFixtureDir);
  sets.pop_back();  // y_of sets run.output
  sets.push_back("parallel.uneven_heads=true");
  for (int ranks : {2, 4}) {
    EXPECT_LE(relative_l2(y_of(ranks, read_text(kFixtureDir + "/config.yaml"), sets), to_double(expected)), 1e-5)
        << ranks;
  }
}

TEST_F(MlaRunMpi, HeadsNotDivisibleAreRefusedUnlessUneven) {
  const Outcome outcome =
      run_command(mpiexec(2) + mla_run_command(write_config("c.yaml", read_text(kFixtureDir + "/config.yaml")),
                                               fixture_sets(kFixtureDir)));
  expect_user_error(outcome, {"model.n_heads", "not divisible", "parallel.uneven_heads"});
}

// DeepSeek's converted files split for world 2 give the same y as each rank slicing model0-mp1.
TEST_F(MlaRunMpi, SplitAndUnsplitCheckpointsAgree) {
  const ModelArgs m = model_args(48, 4, 16, 24, 8, 4, 8, 2, 32);  // four_head_config()'s model
  const WeightsConfig random = random_weights(WeightDType::BF16, 5);
  std::filesystem::create_directories(dir_.file("unsplit"));
  std::filesystem::create_directories(dir_.file("split"));
  write_deepseek_checkpoint(dir_.file("unsplit") + "/model0-mp1.safetensors", m, random, whole(m));
  for (int rank = 0; rank < 2; ++rank) {
    write_deepseek_checkpoint(dir_.file("split") + "/model" + std::to_string(rank) + "-mp2.safetensors", m, random,
                              shard_heads(4, 2, rank, false));
  }
  const std::string config = four_head_config();
  const std::vector<float> unsplit =
      y_of(2, config, {"weights={format: deepseek, path: " + dir_.file("unsplit") + "}"});
  const std::vector<float> split = y_of(2, config, {"weights={format: deepseek, path: " + dir_.file("split") + "}"});
  const std::vector<float> random_world1 = y_of(1, config, {});
  EXPECT_EQ(split, unsplit) << "the same weights in the same order: the same bits";
  EXPECT_LE(relative_l2(unsplit, to_double(random_world1)), 1e-5);
}

// mpiexec's MPMD form gives rank 1 another config: every rank stops, naming rank 1 and the key.
TEST_F(MlaRunMpi, ARankWithADifferentConfigIsCaught) {
  const std::string a = write_config("a.yaml", four_head_config());
  const std::string b = write_config("b.yaml", four_head_config() + "  fast_path_max_len: 8\n");
  const Outcome outcome = run_command(mpiexec(1) + mla_run_command(a, {"run.output=" + output()}) + " : -n 1 " +
                                      mla_run_command(b, {"run.output=" + output()}));
  expect_user_error(outcome,
                    {"configuration differs", "rank(s) 1", "run.fast_path_max_len=256", "run.fast_path_max_len=8"});
}

TEST_F(MlaRunMpi, ARankMissingItsCheckpointStopsEveryRank) {
  const std::string a = write_config("a.yaml", four_head_config());
  const Outcome outcome = run_command(
      mpiexec(1) + mla_run_command(a, {"run.output=" + output()}) + " : -n 1 " +
      mla_run_command(a, {"run.output=" + output(), "weights={format: deepseek, path: " + dir_.file("nowhere") + "}"}));
  // The configs differ too (weights.format); the first disagreement found is reported.
  EXPECT_EQ(outcome.exit_code, 2) << outcome.err;
  EXPECT_NE(outcome.err.find("rank"), std::string::npos) << outcome.err;
  EXPECT_FALSE(std::filesystem::exists(output()));
}

// The multi-node path for real: a hostfile of two hosts (network namespaces with their own
// addresses, made by tests/multinode/two_hosts.sh), 2 ranks on each, MPI over their addresses.
TEST_F(MlaRunMpi, FourRanksOnTwoHostsEqualOneRank) {
  const std::string config = write_config("hosts.yaml", four_head_config());
  const std::string y_path = dir_.file("y_two_hosts.safetensors");
  const Outcome outcome =
      run_command("bash " + std::string(MLA_SOURCE_DIR) + "/tests/multinode/two_hosts.sh 4 " +
                  mla_run_command(config, {"run.output=" + y_path, "parallel.check_identical_output=true"}));
  if (outcome.exit_code == 77) GTEST_SKIP() << outcome.err;
  ASSERT_EQ(outcome.exit_code, 0) << outcome.out << outcome.err;
  for (const char* rank_on_host :
       {"[rank 0/4 mla-host1]", "[rank 1/4 mla-host1]", "[rank 2/4 mla-host2]", "[rank 3/4 mla-host2]"}) {
    EXPECT_NE(outcome.out.find(rank_on_host), std::string::npos) << rank_on_host << "\n" << outcome.out;
  }
  EXPECT_NE(outcome.out.find("y is bitwise identical on all 4 ranks"), std::string::npos);
  const std::vector<float> world1 = y_of(1, four_head_config(), {});
  EXPECT_LE(relative_l2(SafetensorsFile::open(y_path).read_f32("y"), to_double(world1)), 1e-5);
}

}  // namespace
}  // namespace mla::test
