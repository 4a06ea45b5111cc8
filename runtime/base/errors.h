// The project's error types and exit codes, in one place below everything else. Each error names
// what a user needs to act on: the key, file or tensor (UserError), the failing rank (RankFailure),
// or the failing call with its file, line, rank and host (MpiError, CudaError; thrown by MPI_CHECK
// in parallel/mpi_session.h and CUDA_CHECK in kernels/cuda/cuda_check.h).
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

// A rank failed during the run (a non-finite partial output, a stalled peer): the job stops with
// a non-zero exit and no output. Every rank throws it together, so each can exit cleanly.
class RankFailure : public std::runtime_error {
 public:
  explicit RankFailure(const std::string& message) : std::runtime_error(message) {}
};

// An MPI call failed (the message names the call, file, line, rank and host).
class MpiError : public std::runtime_error {
 public:
  explicit MpiError(const std::string& message) : std::runtime_error(message) {}
};

// A CUDA runtime, cuBLAS or NCCL call failed (the message names the call, file and line).
class CudaError : public std::runtime_error {
 public:
  explicit CudaError(const std::string& message) : std::runtime_error(message) {}
};

// Exit codes of every command: 0 done; 1 an internal error (or, for mla_allreduce_bench, wrong
// elements); 2 bad input; 3 a rank failed during the run; 77 skipped (ctest's and automake's code),
// for a check that needs hardware this machine lacks.
inline constexpr int kInternalErrorExitCode = 1;
inline constexpr int kUserErrorExitCode = 2;
inline constexpr int kRankFailureExitCode = 3;
inline constexpr int kSkippedExitCode = 77;

}  // namespace mla
