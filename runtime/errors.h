// Errors a user can fix (a config key, a file, a tensor): one line, exit code 2.
#pragma once

#include <stdexcept>
#include <string>

namespace mla {

// Thrown for bad input: the message names the key, file or tensor and says what was expected.
// Commands catch it, print "error: <message>" on one line and exit with kUserErrorExitCode.
class UserError : public std::runtime_error {
 public:
  explicit UserError(const std::string& message) : std::runtime_error(message) {}
};

inline constexpr int kUserErrorExitCode = 2;

}  // namespace mla
