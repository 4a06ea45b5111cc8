#include "runtime/commands/run_log.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <thread>

#include "parallel/rank_agreement.h"
#include "runtime/base/atomic_file.h"
#include "runtime/base/errors.h"
#include "runtime/base/units.h"

namespace mla {

void print_model(const ModelArgs& m) {
  std::printf("model: dim %ld, n_heads %ld, q_lora_rank %ld, kv_lora_rank %ld, dq %ld (%ld nope + %ld rope), dv %ld\n",
              m.dim, m.n_heads, m.q_lora_rank, m.kv_lora_rank, m.qk_head_dim(), m.qk_nope_head_dim, m.qk_rope_head_dim,
              m.v_head_dim);
  std::printf("rope: theta %g, YaRN %s, softmax scale %.6g\n", m.rope_theta,
              m.yarn_active() ? ("on (factor " + std::to_string(m.rope_factor) + ")").c_str() : "off",
              m.softmax_scale());
}

const char* step_phase(const StepReport& step) {
  if (step.prefill_tokens >= 0) {  // continuous batching
    return step.prefill_tokens == 0 ? "decode" : (step.decode_tokens == 0 ? "prefill" : "mixed");
  }
  return step.seq == 1 && step.start_pos > 0 ? "decode" : (step.start_pos == 0 ? "prefill" : "chunk");
}

int64_t step_tokens(const StepReport& step) {
  return step.prefill_tokens >= 0 ? step.prefill_tokens + step.decode_tokens : step.seq;
}

void print_step(const std::string& label, size_t index, const StepReport& step) {
  std::printf("%s step %zu: %-7s start_pos %ld tokens %ld kv_len %ld -> %s path, %s (%s); workspace %s; %.3f ms%s\n",
              label.c_str(), index, step_phase(step), step.start_pos, step.seq, step.kv_len, to_string(step.plan.path),
              to_string(step.plan.formulation), step.plan.reason.c_str(),
              format_bytes(static_cast<double>(step.attention_workspace_bytes)).c_str(), step.time_ms,
              step.graph_replayed ? " (one CUDA graph launch)" : "");
}

namespace {

// What one rank chose for one step: "fast, absorb".
std::string step_choice(const StepReport& step) {
  return std::string(to_string(step.plan.path)) + ", " + to_string(step.plan.formulation);
}

}  // namespace

std::vector<std::vector<std::string>> gather_choices(const MpiSession& session, const std::vector<StepReport>& steps) {
  std::string mine;
  for (const StepReport& step : steps) mine += step_choice(step) + "\n";
  std::vector<std::vector<std::string>> choices;
  for (const std::string& text : session.all_gather(mine)) {
    std::vector<std::string>& rank_choices = choices.emplace_back();
    for (size_t begin = 0, end; (end = text.find('\n', begin)) != std::string::npos; begin = end + 1) {
      rank_choices.push_back(text.substr(begin, end - begin));
    }
  }
  return choices;
}

void print_step_table(const std::vector<StepReport>& steps, const std::vector<std::vector<std::string>>& choices) {
  std::printf("%5s  %-7s  %7s  %7s  %-8s  %-11s  %9s\n", "step", "phase", "tokens", "kv_len", "path", "formulation",
              "ms");
  std::vector<std::string> explained;
  for (size_t index = 0; index < steps.size(); ++index) {
    const StepReport& step = steps[index];
    std::string others;
    for (size_t rank = 1; rank < choices.size(); ++rank) {
      const std::string& choice = index < choices[rank].size() ? choices[rank][index] : "?";
      if (choice != step_choice(step))
        others += (others.empty() ? "  rank " : "; rank ") + std::to_string(rank) + ": " + choice;
    }
    std::printf("%5zu  %-7s  %7ld  %7ld  %-8s  %-11s  %9.3f%s\n", index, step_phase(step), step_tokens(step),
                step.kv_len, to_string(step.plan.path), to_string(step.plan.formulation), step.time_ms, others.c_str());
  }
  const auto replayed =
      std::count_if(steps.begin(), steps.end(), [](const StepReport& step) { return step.graph_replayed; });
  if (replayed > 0) {
    std::printf(
        "CUDA graphs (run.cuda_graphs): %ld of the %zu steps on rank 0 were one launch of a captured decode step\n",
        static_cast<long>(replayed), steps.size());
  }
  for (size_t index = 0; index < steps.size(); ++index) {
    const StepReport& step = steps[index];
    if (std::find(explained.begin(), explained.end(), step_choice(step)) != explained.end()) continue;
    explained.push_back(step_choice(step));
    std::printf("why %s (step %zu, rank 0): %s\n", explained.back().c_str(), index, step.plan.reason.c_str());
  }
}

void print_checksum(const std::vector<const std::vector<float>*>& y) {
  double sum = 0.0, abs_sum = 0.0;
  for (const std::vector<float>* values : y) {
    for (const float value : *values) {
      sum += value;
      abs_sum += std::fabs(value);
    }
  }
  std::printf("y checksum: sum %.9g, sum|y| %.9g, fnv1a64 %016llx\n", sum, abs_sum,
              static_cast<unsigned long long>(fingerprint(y)));
}

[[noreturn]] void hold_until_ended(const MpiSession& session, int64_t step) {
  const std::string activity = "held at step " + std::to_string(step) + " (debug.hold)";
  std::string failure;
  for (;;) {
    session.watchdog()->progress(activity);
    session.all_ok(true, "", &failure);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void check_debug_plan(const DebugConfig& debug, int world, size_t steps) {
  if (debug.hold_step >= static_cast<int64_t>(steps)) {
    throw UserError("debug.hold.step: " + std::to_string(debug.hold_step) + " is not a step of this schedule of " +
                    std::to_string(steps) + " steps (counted from 0)");
  }
  const FaultPlan& fault = debug.fail;
  if (fault.mode == FaultMode::None) return;
  if (fault.rank >= world) {
    throw UserError("debug.fail.rank: " + std::to_string(fault.rank) + " is not a rank of this world of " +
                    std::to_string(world));
  }
  if (fault.step >= static_cast<int64_t>(steps)) {
    throw UserError("debug.fail.step: " + std::to_string(fault.step) + " is not a step of this schedule of " +
                    std::to_string(steps) + " steps (counted from 0)");
  }
}

RunOptions run_options(const MpiSession& session, const Config& config) {
  RunOptions options;
  options.on_step = [log = config.run.log, label = session.label(),
                     step_index = size_t{0}](const StepReport& step) mutable {
    if (log == StepLog::Steps) print_step(label, step_index, step);
    ++step_index;
  };
  options.check_finite = config.run.check_finite;
  options.fault = config.debug.fail;
  options.hold_step = config.debug.hold_step;
  options.hold = [&session, step = config.debug.hold_step] { hold_until_ended(session, step); };
  options.watchdog = session.watchdog();
  return options;
}

void write_output(const MpiSession& session, Phases& phases, const Config& config, const std::string& config_path,
                  const std::vector<OutputTensor>& tensors, const std::string& what) {
  const bool leader = session.rank() == 0;
  std::unique_ptr<AtomicFile> y_file;
  phases.run([&] {
    if (!leader || config.run.output.empty()) return;
    y_file = std::make_unique<AtomicFile>(config.run.output);
    write_safetensors_f32(*y_file, tensors,
                          {{"config", config_path},
                           {"compute_dtype", to_string(config.run.compute_dtype)},
                           {"world", std::to_string(session.world())}});
    y_file->finish();
  });
  session.watchdog()->finish_run([&] {
    if (y_file) y_file->commit();
  });
  if (!leader) return;
  if (config.run.output.empty()) {
    std::printf("output: not written (run.output is empty)\n");
  } else {
    std::printf("output: %s -> %s\n", what.c_str(), config.run.output.c_str());
  }
  std::fflush(stdout);
}

std::unique_ptr<MpiCommunicator> context_group(const MpiSession& session, const ParallelConfig& parallel) {
  if (parallel.context_parallel <= 1) return nullptr;
  return std::make_unique<MpiCommunicator>(session, static_cast<int>(parallel.context_parallel));
}

std::string describe_context(const Communicator* group, const std::string& transport) {
  if (group == nullptr) return "shared by both formulations";
  return "positions t % " + std::to_string(group->world()) + " == " + std::to_string(group->rank()) +
         " of every sequence (context group of " + std::to_string(group->world()) + " ranks" +
         (transport.empty() ? "" : "; " + transport) + ")";
}

}  // namespace mla
