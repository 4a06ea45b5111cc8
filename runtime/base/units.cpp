#include "runtime/base/units.h"

#include <cstdio>

namespace mla {

std::string format_bytes(double bytes) {
  char text[32];
  if (bytes < 1e6) {
    std::snprintf(text, sizeof(text), "%.1f KB", bytes / 1e3);
  } else if (bytes < 1e9) {
    std::snprintf(text, sizeof(text), "%.1f MB", bytes / 1e6);
  } else {
    std::snprintf(text, sizeof(text), "%.2f GB", bytes / 1e9);
  }
  return text;
}

std::string format_bytes_binary(int64_t bytes) {
  char text[32];
  if (bytes < 1024) {
    std::snprintf(text, sizeof(text), "%ld B", static_cast<long>(bytes));
  } else if (bytes < (int64_t{1} << 20)) {
    std::snprintf(text, sizeof(text), "%.0f KiB", static_cast<double>(bytes) / 1024.0);
  } else {
    std::snprintf(text, sizeof(text), "%.0f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
  }
  return text;
}

}  // namespace mla
