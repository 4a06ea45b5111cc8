#include "tests/test_util.h"

#include <unistd.h>

#include <atomic>

namespace mla::test {

TempDir::TempDir() {
  static std::atomic<int> counter{0};
  path_ = std::filesystem::path(testing::TempDir()) /
          ("mla_test_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
  std::filesystem::remove_all(path_);
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

}  // namespace mla::test
