#include "runtime/base/random_values.h"

namespace mla {

namespace {
// splitmix64's finalizer: a bijection whose output bits each depend on every input bit.
uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

uint64_t random_stream_key(uint64_t seed, std::string_view tensor_name) {
  uint64_t name_hash = 0xcbf29ce484222325ull;  // FNV-1a
  for (const char c : tensor_name) name_hash = (name_hash ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  return mix64(mix64(seed) ^ name_hash);
}

float random_uniform(uint64_t stream_key, uint64_t index) {
  const uint64_t bits = mix64(stream_key ^ mix64(index));
  // 24 random bits: every value is exact in fp32.
  return static_cast<float>(bits >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

}  // namespace mla
