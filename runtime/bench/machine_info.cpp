#include "runtime/bench/machine_info.h"

#include <sys/utsname.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/packed_linear.h"
#include "parallel/communicator.h"
#include "runtime/base/errors.h"

namespace mla {

namespace {

// The first line of `command`'s output, or "" (popen: only fixed commands, never user text).
std::string command_output(const std::string& command) {
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return "";
  std::array<char, 256> line{};
  std::string text;
  if (std::fgets(line.data(), static_cast<int>(line.size()), pipe) != nullptr) text = line.data();
  ::pclose(pipe);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  return text;
}

std::string shell_quote(const std::string& text) {
  std::string quoted = "'";
  for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

std::string proc_field(const char* file, const std::string& key) {
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key, 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(" \t"));
    return value;
  }
  return "";
}

// The ISA extensions our CPU kernels and the BLAS care about, in a fixed order.
std::string cpu_isa_flags() {
  std::istringstream flags(proc_field("/proc/cpuinfo", "flags"));
  std::set<std::string> present;
  for (std::string flag; flags >> flag;) present.insert(flag);
  std::string listed;
  for (const char* flag : {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                           "amx_tile", "amx_bf16", "amx_int8"}) {
    if (present.count(flag)) listed += (listed.empty() ? "" : " ") + std::string(flag);
  }
  return listed.empty() ? "none of avx2/avx512/amx" : listed;
}

std::string git_commit(const std::string& source_dir) {
  const std::string git = "git -C " + shell_quote(source_dir);
  const std::string commit = command_output(git + " rev-parse --short=12 HEAD 2>/dev/null");
  if (commit.empty()) return "unknown";
  const bool dirty = !command_output(git + " status --porcelain --untracked-files=no 2>/dev/null").empty();
  return commit + (dirty ? "-dirty" : "");
}

}  // namespace

MachineEntries describe_machine(const std::string& source_dir) {
  MachineEntries entries;
  entries.emplace_back("host", this_host_name());
  utsname name{};
  if (::uname(&name) == 0) {
    entries.emplace_back("os", std::string(name.sysname) + " " + name.release + " " + name.machine);
  }
  const std::string model = proc_field("/proc/cpuinfo", "model name");
  entries.emplace_back("cpu_model", model.empty() ? "unknown" : model);
  entries.emplace_back("cpu_cores", std::to_string(std::thread::hardware_concurrency()));
  entries.emplace_back("cpu_isa", cpu_isa_flags());
  // What our kernels use of them (MLA_CPU_ISA may lower it) and which library runs the linear layers.
  entries.emplace_back("kernels_isa", cpu_isa_name(mla::cpu_isa()));
  entries.emplace_back("linear_gemm", have_onednn() && mla::cpu_isa() != CpuIsa::Portable
                                          ? "oneDNN (weights prepared once)"
                                          : "BLAS sgemm");
  entries.emplace_back("memory_total", proc_field("/proc/meminfo", "MemTotal"));
  entries.emplace_back("blas", blas_description());
#if defined(__clang__)
  entries.emplace_back("compiler", std::string("clang ") + __clang_version__);
#elif defined(__GNUC__)
  entries.emplace_back("compiler", std::string("gcc ") + __VERSION__);
#endif
#if defined(_OPENMP)
  entries.emplace_back("openmp", std::to_string(_OPENMP));
#endif
  entries.emplace_back("git_commit", git_commit(source_dir));
  return entries;
}

void check_kernel_environment() {
  try {
    cpu_isa();
  } catch (const std::invalid_argument& error) {
    throw UserError(std::string("environment variable ") + error.what());
  }
}

std::string machine_entry(const MachineEntries& entries, const std::string& key) {
  for (const auto& [name, value] : entries) {
    if (name == key) return value;
  }
  return "";
}

}  // namespace mla
