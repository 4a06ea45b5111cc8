// How the ranks of a job agree before and after the run: every rank runs a phase, and if any
// failed, all of them stop with every failing rank's reason; values that must be the same
// everywhere (the config, the replicated weights, the input) are compared across ranks.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "parallel/mpi_session.h"
#include "runtime/base/errors.h"

namespace mla {

class Phases {
 public:
  explicit Phases(const MpiSession& session) : session_(session) {}

  // Collective: runs body; a UserError on any rank becomes a UserError on every rank, naming the
  // failing ranks and their reasons.
  template <typename Body>
  void run(Body&& body) {
    std::string message;
    bool ok = true;
    try {
      body();
    } catch (const UserError& error) {
      ok = false;
      message = error.what();
    }
    std::string failure;
    if (session_.all_ok(ok, message, &failure)) return;
    throw UserError(failure);
  }

  // Collective: every rank must hold the same text, or every rank throws a UserError naming the
  // ranks whose text differs from rank 0's (and, for key=value lines, the first key that differs).
  void agree(const std::string& what, const std::string& local_text) const;

 private:
  const MpiSession& session_;
};

// FNV-1a over the bytes of the tensors, in order.
uint64_t fingerprint(const std::vector<const std::vector<float>*>& tensors);

}  // namespace mla
