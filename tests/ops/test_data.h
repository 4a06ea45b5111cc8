// Seeded random test data, the same on every machine (std::mt19937 is specified exactly).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace mla::test {

inline std::vector<float> random_floats(int64_t count, uint32_t seed, float low = -1.0f, float high = 1.0f) {
  std::mt19937 generator(seed);
  std::uniform_real_distribution<float> distribution(low, high);
  std::vector<float> values(static_cast<size_t>(count));
  for (float& value : values) value = distribution(generator);
  return values;
}

}  // namespace mla::test
