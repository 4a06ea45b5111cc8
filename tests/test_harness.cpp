// The benchmark harness (runtime/bench/harness.h): the one statistic, the repetition budget, the
// result files; and the shared pieces below it (byte units, the backend choice).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/base/errors.h"
#include "runtime/base/units.h"
#include "runtime/bench/harness.h"
#include "runtime/layer/backend.h"
#include "tests/test_util.h"

#if MLA_HAVE_CUDA
#include "kernels/cuda/cuda_check.h"
#endif

namespace mla {
namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(Harness, SummaryIsTheMedianMinP90AndMaxOfTheTimings) {
  // Odd count: the middle value; p90 is the value at rank ceil(0.9 n) = 9 of 10, 5 of 5.
  const TimeSummary odd = summarize_times({5, 1, 4, 2, 3});
  EXPECT_EQ(odd.median, 3);
  EXPECT_EQ(odd.min, 1);
  EXPECT_EQ(odd.max, 5);
  EXPECT_EQ(odd.p90, 5);
  EXPECT_EQ(odd.count, 5);
  // Even count: the mean of the middle two.
  const TimeSummary even = summarize_times({10, 1, 9, 2, 8, 3, 7, 4, 6, 5});
  EXPECT_EQ(even.median, 5.5);
  EXPECT_EQ(even.p90, 9);
  EXPECT_EQ(even.min, 1);
  EXPECT_EQ(even.max, 10);
  const TimeSummary none = summarize_times({});
  EXPECT_EQ(none.count, 0);
  EXPECT_EQ(none.median, 0);
}

TEST(Harness, TheBudgetGivesAtLeastMinRepsAndStopsAtTimeOrMaxReps) {
  const RepBudget budget{2, 3, 10, 1.0};
  EXPECT_TRUE(budget.wants_more(0, 5.0));  // under min_reps, whatever the time
  EXPECT_TRUE(budget.wants_more(2, 5.0));
  EXPECT_FALSE(budget.wants_more(3, 1.0));  // min_reps done, time spent
  EXPECT_TRUE(budget.wants_more(3, 0.5));
  EXPECT_FALSE(budget.wants_more(10, 0.0));  // max_reps
  // A fixed count: what fits the rest of the time, within [min_reps, max_reps].
  EXPECT_EQ(budget.reps_that_fit(0.5, 0.1), 5);
  EXPECT_EQ(budget.reps_that_fit(0.0, 0.01), 10);
  EXPECT_EQ(budget.reps_that_fit(0.99, 1.0), 3);
  EXPECT_EQ(budget.reps_that_fit(2.0, 1.0), 3);  // over budget already: still min_reps
}

TEST(Harness, TimeRepetitionsWarmsUpThenTimesWhatTheBudgetAllows) {
  int calls = 0;
  const std::vector<double> fixed_count = time_repetitions(RepBudget{2, 4, 4, INFINITY}, [&] {
    ++calls;
    return 1.0;
  });
  EXPECT_EQ(calls, 6);
  EXPECT_EQ(fixed_count.size(), 4u);
  // 400 ms a step against a 1 s budget: min_reps 1, then while under 1 s: 3 steps (0.4, 0.8, 1.2).
  const std::vector<double> by_time = time_repetitions(RepBudget{0, 1, 100, 1.0}, [] { return 400.0; });
  EXPECT_EQ(by_time.size(), 3u);
}

TEST(Harness, NumbersForResultFilesLeaveNonFiniteValuesEmpty) {
  EXPECT_EQ(significant(0.287945123), "0.287945");
  EXPECT_EQ(significant(27991040.0, 10), "27991040");
  EXPECT_EQ(significant(2.504123, 4), "2.504");
  EXPECT_EQ(fixed(0.0156712, 6), "0.015671");
  EXPECT_EQ(fixed(0.51, 3), "0.510");
  EXPECT_EQ(significant(NAN), "");
  EXPECT_EQ(fixed(INFINITY, 3), "");
}

TEST(Harness, ACsvRowMustGiveTheHeadersColumnsInOrder) {
  test::TempDir dir;
  ResultFile csv = ResultFile::csv(dir.file("r.csv"), {"a", "b"});
  ResultRow swapped;
  swapped.add("b", "1").add("a", "2");
  EXPECT_THROW(csv.add(swapped), std::logic_error);
  ResultRow short_row;
  short_row.add("a", "1");
  EXPECT_THROW(csv.add(short_row), std::logic_error);
  ResultRow long_row;
  long_row.add("a", "1").add("b", "2").add("c", "3");
  EXPECT_THROW(csv.add(long_row), std::logic_error);
  EXPECT_THROW(csv.add_line("{}"), std::logic_error);
}

TEST(Harness, ResultFilesAreWrittenWholeWithQuotedCellsAndReadBack) {
  test::TempDir dir;
  const std::string path = dir.file("r.csv");
  {
    ResultFile csv = ResultFile::csv(path, {"name", "world"});
    ResultRow first, second;
    first.add("name", "plain").add("world", "1");
    second.add("name", "with, comma and \"quote\"").add("world", "2");
    csv.add(first);
    csv.add(second);
    csv.write();
  }
  EXPECT_EQ(read_all(path), "name,world\nplain,1\n\"with, comma and \"\"quote\"\"\",2\n");

  ResultFile again = ResultFile::csv(path, {"name", "world"});
  EXPECT_EQ(again.existing_values("world"), (std::set<std::string>{"1", "2"}));
  EXPECT_EQ(again.existing_values("name"), (std::set<std::string>{"plain", "with, comma and \"quote\""}));
  again.keep_existing_rows();
  ResultRow third;
  third.add("name", "added").add("world", "4");
  again.add(third);
  again.write();
  EXPECT_EQ(read_all(path), "name,world\nplain,1\n\"with, comma and \"\"quote\"\"\",2\nadded,4\n");

  // Another table's file is not appended to, and its values are not read as ours.
  ResultFile other = ResultFile::csv(path, {"name", "size"});
  EXPECT_TRUE(other.existing_values("size").empty());
  try {
    other.keep_existing_rows();
    FAIL() << "a different header was accepted";
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find(path), std::string::npos) << error.what();
  }

  ResultFile jsonl = ResultFile::jsonl(dir.file("r.jsonl"));
  jsonl.add_line("{\"a\":1}");
  jsonl.write();
  EXPECT_EQ(read_all(dir.file("r.jsonl")), "{\"a\":1}\n");
  EXPECT_THROW(jsonl.add(third), std::logic_error);
}

TEST(Harness, TheMachineSummaryNamesWhatIsKnown) {
  const MachineEntries entries = {{"cpu_model", "AMD EPYC"}, {"cpu_cores", "2"},     {"cpu_isa", "avx2 avx512f"},
                                  {"memory_total", "24 GB"}, {"mpi", "Open MPI v4"}, {"git_commit", "abc123"}};
  EXPECT_EQ(machine_summary(entries), "AMD EPYC, 2 cores (avx2 avx512f), memory 24 GB; Open MPI v4; commit abc123");
}

TEST(Units, BytesInPowersOfAThousandAndOfTwo) {
  EXPECT_EQ(format_bytes(1536), "1.5 KB");
  EXPECT_EQ(format_bytes(29.9e6), "29.9 MB");
  EXPECT_EQ(format_bytes(3.254e9), "3.25 GB");
  EXPECT_EQ(format_bytes_binary(8), "8 B");
  EXPECT_EQ(format_bytes_binary(4096), "4 KiB");
  EXPECT_EQ(format_bytes_binary(int64_t{256} << 20), "256 MiB");
}

TEST(Backend, AutoIsTheCpuWithoutADeviceAndCudaWithoutOneIsAnErrorNamingTheKey) {
#if MLA_HAVE_CUDA
  const int devices = cuda_device_count();
#else
  const int devices = 0;
#endif
  if (devices > 0) {
    EXPECT_EQ(resolve_backend(Backend::Auto, "run.backend"), Backend::Cuda);
    EXPECT_EQ(resolve_backend(Backend::Cuda, "run.backend"), Backend::Cuda);
    return;
  }
  EXPECT_EQ(resolve_backend(Backend::Auto, "run.backend"), Backend::Cpu);
  EXPECT_EQ(resolve_backend(Backend::Cpu, "run.backend"), Backend::Cpu);
  try {
    resolve_backend(Backend::Cuda, "sweep.backend");
    FAIL() << "cuda was accepted without a device";
  } catch (const UserError& error) {
    EXPECT_EQ(std::string(error.what()).rfind("sweep.backend: cuda", 0), 0u) << error.what();
  }
}

}  // namespace
}  // namespace mla
