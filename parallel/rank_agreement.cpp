#include "parallel/rank_agreement.h"

#include <sstream>

namespace mla {

namespace {
// For key=value lines: the first key whose value differs, with both values.
std::string describe_difference(const std::vector<std::string>& texts) {
  for (size_t r = 1; r < texts.size(); ++r) {
    std::istringstream first(texts[0]), other(texts[r]);
    for (std::string a, b; std::getline(first, a) && std::getline(other, b);) {
      if (a != b) return ": rank 0 has " + a + ", rank " + std::to_string(r) + " has " + b;
    }
  }
  return "";
}
}  // namespace

void Phases::agree(const std::string& what, const std::string& local_text) const {
  const std::vector<std::string> texts = session_.all_gather(local_text);
  std::string differing;
  for (size_t r = 1; r < texts.size(); ++r) {
    if (texts[r] != texts[0]) differing += (differing.empty() ? "" : ", ") + std::to_string(r);
  }
  if (!differing.empty()) {
    throw UserError(what + " differs between rank 0 and rank(s) " + differing + describe_difference(texts));
  }
}

uint64_t fingerprint(const std::vector<const std::vector<float>*>& tensors) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (const std::vector<float>* tensor : tensors) {
    const auto* bytes = reinterpret_cast<const unsigned char*>(tensor->data());
    for (size_t i = 0; i < tensor->size() * sizeof(float); ++i) hash = (hash ^ bytes[i]) * 0x100000001b3ull;
  }
  return hash;
}

}  // namespace mla
