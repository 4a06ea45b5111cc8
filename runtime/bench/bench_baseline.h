// The PyTorch eager baseline of mla_bench: launch/torch_mla_baseline.py, started once per sweep as a
// worker ("--serve") that times the same shapes, weights and threads as each point and answers one
// JSON line per request (the protocol is described at the top of that script).
#pragma once

#include <sys/types.h>

#include <nlohmann/json.hpp>
#include <string>

namespace mla {

class TorchBaseline {
 public:
  // Starts `python script --serve` and reads its greeting. Throws UserError naming the interpreter
  // and the reason when it cannot start, torch does not import, or no greeting comes in `timeout_s`.
  TorchBaseline(const std::string& python, const std::string& script, double timeout_s);
  ~TorchBaseline();  // closes the worker's stdin and reaps it (killed when it does not exit)
  TorchBaseline(const TorchBaseline&) = delete;
  TorchBaseline& operator=(const TorchBaseline&) = delete;

  const nlohmann::json& greeting() const { return greeting_; }

  // Sends one request and waits up to `timeout_s` for its answer. Throws UserError when the worker
  // died, answered something that is not JSON, or did not answer in time (then it is killed).
  nlohmann::json request(const nlohmann::json& request, double timeout_s);

 private:
  std::string read_line(double timeout_s);
  void stop();

  std::string python_;
  pid_t pid_ = -1;
  int to_worker_ = -1;    // the worker's stdin
  int from_worker_ = -1;  // the worker's stdout
  std::string pending_;   // bytes read past the last line
  nlohmann::json greeting_;
};

}  // namespace mla
