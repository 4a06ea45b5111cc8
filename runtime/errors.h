// Errors a user can fix (a config key, a file, a tensor): one line, exit code 2.
#pragma once

#include <stdexcept>
#include <string>

namespace mla {

// Thrown for bad input: the message names the key, file or tensor and says what was expected.
// Commands catch it, print "error: <message>" on one line and exit with kUserErrorExitCode.
// The message keeps to one line whatever the user's file put into it: control characters (a
// newline inside a YAML key, say) are written as \xNN.
class UserError : public std::runtime_error {
 public:
  explicit UserError(const std::string& message) : std::runtime_error(one_line(message)) {}

  static std::string one_line(const std::string& text) {
    std::string line;
    for (const unsigned char c : text) {
      if (c < 0x20 || c == 0x7f) {
        static const char kHex[] = "0123456789abcdef";
        line += "\\x";
        line += kHex[c >> 4];
        line += kHex[c & 0xf];
      } else {
        line += static_cast<char>(c);
      }
    }
    return line;
  }
};

inline constexpr int kUserErrorExitCode = 2;

}  // namespace mla
