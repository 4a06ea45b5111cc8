// The parts of runtime/config.h that need no YAML parser: value names and the schedule's steps.
// Kept apart from config.cpp so that the GPU check, built where yaml-cpp is absent, links them.
#include <string>

#include "runtime/config.h"
#include "runtime/errors.h"

namespace mla {

const char* to_string(WeightsFormat value) {
  switch (value) {
    case WeightsFormat::DeepSeek: return "deepseek";
    case WeightsFormat::HuggingFace: return "hf";
    case WeightsFormat::Random: return "random";
  }
  return "?";
}
const char* to_string(WeightDType value) { return value == WeightDType::BF16 ? "bf16" : "fp8"; }
const char* to_string(Backend value) {
  switch (value) {
    case Backend::Cpu: return "cpu";
    case Backend::Cuda: return "cuda";
    case Backend::Auto: return "auto";
  }
  return "?";
}
const char* to_string(ComputeDType value) { return value == ComputeDType::FP32 ? "fp32" : "bf16"; }
const char* to_string(AttentionChoice value) {
  switch (value) {
    case AttentionChoice::Auto: return "auto";
    case AttentionChoice::Fast: return "fast";
    case AttentionChoice::Standard: return "standard";
  }
  return "?";
}
const char* to_string(FormulationChoice value) {
  switch (value) {
    case FormulationChoice::Auto: return "auto";
    case FormulationChoice::Naive: return "naive";
    case FormulationChoice::Absorb: return "absorb";
  }
  return "?";
}
const char* to_string(StepLog value) { return value == StepLog::Table ? "table" : "steps"; }
const char* to_string(Fp8Dequant value) { return value == Fp8Dequant::Bf16 ? "bf16" : "exact"; }

const char* to_string(FaultMode value) {
  switch (value) {
    case FaultMode::None: return "none";
    case FaultMode::Exit: return "exit";
    case FaultMode::Hang: return "hang";
    case FaultMode::Nan: return "nan";
  }
  return "?";
}

std::vector<int64_t> ScheduleConfig::steps(int64_t tokens) const {
  std::vector<int64_t> result;
  if (explicit_chunks) {
    result = chunks;
  } else {
    const int64_t prefill_tokens = prefill > 0 ? prefill : tokens - decode_steps;
    if (prefill_tokens < 1) {
      throw UserError("run.schedule: " + std::to_string(decode_steps) + " decode steps leave no token to prefill of the " +
                      std::to_string(tokens) + " input tokens");
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
