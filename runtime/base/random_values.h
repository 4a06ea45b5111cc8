// Seeded values that depend only on (seed, tensor name, element index): the same weights and
// inputs come out whichever rank makes them and whatever slice it makes.
#pragma once

#include <cstdint>
#include <string_view>

namespace mla {

uint64_t random_stream_key(uint64_t seed, std::string_view tensor_name);

// Uniform in [-1, 1), from the stream key and the element's index in the whole tensor.
float random_uniform(uint64_t stream_key, uint64_t index);

}  // namespace mla
