// The parts of runtime/io/config.h that need no YAML parser: value names and the schedule's steps.
// Kept apart from config.cpp so that the GPU check, built where yaml-cpp is absent, links them.
#include <string>

#include "runtime/base/errors.h"
#include "runtime/io/config.h"

namespace mla {

template <>
const std::vector<std::string>& value_names<WeightsFormat>() {
  static const std::vector<std::string> names = {"deepseek", "hf", "random"};
  return names;
}
template <>
const std::vector<std::string>& value_names<WeightDType>() {
  static const std::vector<std::string> names = {"bf16", "fp8"};
  return names;
}
template <>
const std::vector<std::string>& value_names<Backend>() {
  static const std::vector<std::string> names = {"cpu", "cuda", "auto"};
  return names;
}
template <>
const std::vector<std::string>& value_names<ComputeDType>() {
  static const std::vector<std::string> names = {"fp32", "bf16"};
  return names;
}
template <>
const std::vector<std::string>& value_names<AttentionChoice>() {
  static const std::vector<std::string> names = {"auto", "fast", "standard"};
  return names;
}
template <>
const std::vector<std::string>& value_names<FormulationChoice>() {
  static const std::vector<std::string> names = {"auto", "naive", "absorb"};
  return names;
}
template <>
const std::vector<std::string>& value_names<StepLog>() {
  static const std::vector<std::string> names = {"table", "steps"};
  return names;
}
template <>
const std::vector<std::string>& value_names<Fp8Dequant>() {
  static const std::vector<std::string> names = {"bf16", "exact"};
  return names;
}
template <>
const std::vector<std::string>& value_names<KvCacheLayout>() {
  static const std::vector<std::string> names = {"dense", "paged"};
  return names;
}
template <>
const std::vector<std::string>& value_names<KvCacheDType>() {
  static const std::vector<std::string> names = {"auto", "fp32", "bf16", "fp8"};
  return names;
}
template <>
const std::vector<std::string>& value_names<CommunicatorChoice>() {
  static const std::vector<std::string> names = {"auto", "nccl", "mpi"};
  return names;
}
template <>
const std::vector<std::string>& value_names<FaultMode>() {
  static const std::vector<std::string> names = {"none", "exit", "hang", "nan"};
  return names;
}

const char* to_string(WeightsFormat value) { return value_name(value); }
const char* to_string(WeightDType value) { return value_name(value); }
const char* to_string(Backend value) { return value_name(value); }
const char* to_string(ComputeDType value) { return value_name(value); }
const char* to_string(AttentionChoice value) { return value_name(value); }
const char* to_string(FormulationChoice value) { return value_name(value); }
const char* to_string(StepLog value) { return value_name(value); }
const char* to_string(Fp8Dequant value) { return value_name(value); }
const char* to_string(KvCacheLayout value) { return value_name(value); }
const char* to_string(KvCacheDType value) { return value_name(value); }
const char* to_string(FaultMode value) { return value_name(value); }
const char* to_string(CommunicatorChoice value) { return value_name(value); }

std::vector<int64_t> ScheduleConfig::steps(int64_t tokens) const {
  std::vector<int64_t> result;
  if (explicit_chunks) {
    result = chunks;
  } else {
    const int64_t prefill_tokens = prefill > 0 ? prefill : tokens - decode_steps;
    if (prefill_tokens < 1) {
      throw UserError("run.schedule: " + std::to_string(decode_steps) +
                      " decode steps leave no token to prefill of the " + std::to_string(tokens) + " input tokens");
    }
    result.push_back(prefill_tokens);
    result.insert(result.end(), static_cast<size_t>(decode_steps), 1);
  }
  int64_t total = 0;
  for (int64_t step : result) total += step;
  if (total != tokens) {
    throw UserError("run.schedule: the steps add up to " + std::to_string(total) + " tokens but the input has " +
                    std::to_string(tokens) + " (run.input)");
  }
  return result;
}

}  // namespace mla
