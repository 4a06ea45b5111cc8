#include "kernels/cpu/cpu_features.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>

namespace mla {

namespace {

std::set<std::string> proc_cpuinfo_flags() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::istringstream words(line.substr(colon + 1));
    std::set<std::string> flags;
    for (std::string word; words >> word;) flags.insert(word);
    return flags;
  }
  return {};
}

CpuFeatures detect() {
  CpuFeatures features;
  const std::set<std::string> flags = proc_cpuinfo_flags();
  if (!flags.empty()) {
    const auto has = [&flags](const char* name) { return flags.count(name) != 0; };
    features.flags_source = "/proc/cpuinfo";
    features.avx2_fma = has("avx2") && has("fma");
    features.avx512 = features.avx2_fma && has("avx512f") && has("avx512bw") && has("avx512vl") && has("avx512dq");
    features.avx512_bf16 = features.avx512 && has("avx512_bf16");
    features.amx_bf16 = features.avx512_bf16 && has("amx_tile") && has("amx_bf16");
    return features;
  }
  // No /proc (a container without it): the CPU's own answer, which does not know whether the OS
  // lets a process use AMX, so AMX stays off.
  features.flags_source = "cpuid";
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  features.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  features.avx512 = features.avx2_fma && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
  return features;
}

std::atomic<int> isa_limit{-1};  // -1: not set by set_cpu_isa_limit

const char* const kIsaNames[] = {"portable", "avx2", "avx512", "avx512_bf16", "amx"};

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

CpuIsa best_cpu_isa(const CpuFeatures& f) {
  if (f.amx_bf16) return CpuIsa::Amx;
  if (f.avx512_bf16) return CpuIsa::Avx512Bf16;
  if (f.avx512) return CpuIsa::Avx512;
  if (f.avx2_fma) return CpuIsa::Avx2;
  return CpuIsa::Portable;
}

const char* cpu_isa_name(CpuIsa isa) { return kIsaNames[static_cast<int>(isa)]; }

CpuIsa parse_cpu_isa(const std::string& name, const std::string& what) {
  for (int level = 0; level <= static_cast<int>(CpuIsa::Amx); ++level) {
    if (name == kIsaNames[level]) return static_cast<CpuIsa>(level);
  }
  throw std::invalid_argument(what + " = '" + name + "': expected portable, avx2, avx512, avx512_bf16 or amx");
}

CpuIsa cpu_isa() {
  static const int env_limit = [] {
    const char* value = std::getenv("MLA_CPU_ISA");
    return value == nullptr || *value == '\0' ? static_cast<int>(CpuIsa::Amx)
                                              : static_cast<int>(parse_cpu_isa(value, "MLA_CPU_ISA"));
  }();
  int level = static_cast<int>(best_cpu_isa(cpu_features()));
  level = std::min(level, env_limit);
  const int forced = isa_limit.load(std::memory_order_relaxed);
  if (forced >= 0) level = std::min(static_cast<int>(best_cpu_isa(cpu_features())), forced);
  return static_cast<CpuIsa>(level);
}

void set_cpu_isa_limit(CpuIsa limit) { isa_limit.store(static_cast<int>(limit), std::memory_order_relaxed); }

}  // namespace mla
