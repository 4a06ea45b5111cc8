// What this CPU can run, read once from the flags the kernel reports in /proc/cpuinfo (an ISA the
// CPU has but the OS does not enable, such as AMX without its permission, is not listed there),
// and the level our kernels may use: the best the CPU reports, or a lower one forced for tests
// and comparisons by MLA_CPU_ISA=portable|avx2|avx512|avx512_bf16|amx (or set_cpu_isa_limit).
#pragma once

#include <string>

namespace mla {

// Ordered: each level includes the ones before it.
enum class CpuIsa { Portable = 0, Avx2 = 1, Avx512 = 2, Avx512Bf16 = 3, Amx = 4 };

struct CpuFeatures {
  bool avx2_fma = false;     // avx2 + fma
  bool avx512 = false;       // avx512f + bw + vl + dq (Skylake-X and later, Zen 4)
  bool avx512_bf16 = false;  // vdpbf16ps, vcvtne2ps2bf16
  bool amx_bf16 = false;     // amx_tile + amx_bf16
  std::string flags_source;  // "/proc/cpuinfo" or "cpuid" when /proc is not readable
};

const CpuFeatures& cpu_features();

CpuIsa best_cpu_isa(const CpuFeatures& features);

// The level in use: min(best the CPU reports, MLA_CPU_ISA, set_cpu_isa_limit). Throws
// std::invalid_argument naming MLA_CPU_ISA when its value is not one of the names above.
CpuIsa cpu_isa();

// Lowers (or, up to what the CPU has, raises) the level for the rest of the process; tests use it
// to run every path on one machine. The oneDNN limit is fixed at the first oneDNN call, so a test
// that forces a level below AVX-512 must do so before any linear layer is built.
void set_cpu_isa_limit(CpuIsa limit);

const char* cpu_isa_name(CpuIsa isa);
// Parses one of the names above; throws std::invalid_argument naming `what` otherwise.
CpuIsa parse_cpu_isa(const std::string& name, const std::string& what);

}  // namespace mla
