// Every row of the op table (tests/ops/op_table.h) as a test: the op on one backend against its
// CPU twin at the portable level. mla_tests runs the CPU rows (the ISA levels with code of their
// own), mla_gpu_tests the CUDA rows (MLA_OP_TABLE_CUDA_ROWS); a backend this machine lacks is
// SKIPPED. MLA_OP_TIMING=N (N > 1) times each op alone N times on both sides and prints medians.
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ostream>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_features.h"
#include "tests/ops/op_table.h"

#ifndef MLA_OP_TABLE_CUDA_ROWS
#define MLA_OP_TABLE_CUDA_ROWS 0
#endif

namespace mla::test {
namespace {

struct OpRow {
  const OpCase* op_case;
  OpBackend backend;
  size_t index;  // in the table, for a unique test name
};

std::vector<OpRow> rows_of_this_executable() {
  std::vector<OpRow> rows;
  const std::vector<OpCase>& table = op_table();
  for (size_t i = 0; i < table.size(); ++i) {
    for (const OpBackend backend : table[i].backends) {
      if ((backend == OpBackend::Cuda) == static_cast<bool>(MLA_OP_TABLE_CUDA_ROWS))
        rows.push_back({&table[i], backend, i});
    }
  }
  return rows;
}

CpuIsa isa_of(OpBackend backend) {
  switch (backend) {
    case OpBackend::CpuAvx2: return CpuIsa::Avx2;
    case OpBackend::CpuAvx512: return CpuIsa::Avx512;
    case OpBackend::CpuAvx512Bf16: return CpuIsa::Avx512Bf16;
    case OpBackend::CpuAmx: return CpuIsa::Amx;
    default: return CpuIsa::Portable;
  }
}

// Runs `backend` with the CPU kernels held at its ISA level (the CPU's own level for cuda), then
// gives back the level there was.
OpRun run_at_level(const OpCase& op_case, OpBackend backend, int reps) {
  const CpuIsa before = cpu_isa();
  set_cpu_isa_limit(backend == OpBackend::Cuda ? before : isa_of(backend));
  OpRun run;
  try {
    run = op_case.run(backend, reps);
  } catch (...) {
    set_cpu_isa_limit(before);
    throw;
  }
  set_cpu_isa_limit(before);
  return run;
}

// ||got - want|| / ||want||; NaN where either holds a NaN the other does not (an unwritten element).
double normalised_error(const std::vector<float>& got, const std::vector<float>& want) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i]) != std::isnan(want[i])) return NAN;
    if (std::isnan(got[i])) continue;
    const double d = static_cast<double>(got[i]) - want[i];
    diff += d * d;
    norm += static_cast<double>(want[i]) * want[i];
  }
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

int timing_reps() {
  const char* text = std::getenv("MLA_OP_TIMING");
  const int reps = text == nullptr ? 1 : std::atoi(text);
  return reps > 1 ? reps : 1;
}

void PrintTo(const OpRow& row, std::ostream* out) {
  *out << row.op_case->op << " " << row.op_case->shape << " on " << backend_name(row.backend);
}

class OpTable : public testing::TestWithParam<OpRow> {};

TEST_P(OpTable, MatchesItsCpuTwin) {
  const OpRow& row = GetParam();
  const OpCase& op_case = *row.op_case;
  const std::string what = op_case.op + " " + op_case.shape + " on " + backend_name(row.backend);
  if (!backend_present(row.backend)) GTEST_SKIP() << backend_name(row.backend) << " is not on this machine";
  const int reps = timing_reps();
  const OpRun want = run_at_level(op_case, OpBackend::CpuPortable, reps);
  const OpRun got = run_at_level(op_case, row.backend, reps);
  ASSERT_EQ(got.output.size(), want.output.size()) << what;
  ASSERT_FALSE(want.output.empty()) << what;
  if (op_case.tolerance == 0) {
    size_t first_difference = want.output.size();
    for (size_t i = 0; i < want.output.size() && first_difference == want.output.size(); ++i) {
      if (std::memcmp(&got.output[i], &want.output[i], sizeof(float)) != 0) first_difference = i;
    }
    EXPECT_EQ(first_difference, want.output.size())
        << what << ": element " << first_difference << " is " << got.output[first_difference] << ", the twin's "
        << want.output[first_difference] << " (bitwise equality expected)";
  } else {
    const std::vector<size_t> parts = want.parts.empty() ? std::vector<size_t>{want.output.size()} : want.parts;
    size_t begin = 0;
    for (size_t part = 0; part < parts.size(); ++part) {
      const std::vector<float> got_part(got.output.begin() + begin, got.output.begin() + begin + parts[part]);
      const std::vector<float> want_part(want.output.begin() + begin, want.output.begin() + begin + parts[part]);
      const double error = normalised_error(got_part, want_part);
      EXPECT_LE(error, op_case.tolerance)
          << what << ", part " << part << (std::isnan(error) ? ": an element one side did not write" : "");
      begin += parts[part];
    }
    EXPECT_EQ(begin, want.output.size()) << what << ": the parts do not cover the output";
  }
  if (reps > 1) {
    std::printf("[ timing ] %s: %.4f ms; cpu twin (portable) %.4f ms; median of %d\n", what.c_str(), got.median_ms,
                want.median_ms, reps);
  }
}

std::string row_name(const testing::TestParamInfo<OpRow>& info) {
  std::string name =
      info.param.op_case->op + "_" + std::to_string(info.param.index) + "_" + backend_name(info.param.backend);
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(Rows, OpTable, testing::ValuesIn(rows_of_this_executable()), row_name);

}  // namespace
}  // namespace mla::test
