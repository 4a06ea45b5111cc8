// Sizes as people read them, the same in every log and message of the project.
#pragma once

#include <cstdint>
#include <string>

namespace mla {

// Powers of 1000, one decimal (two in GB): "812.0 KB", "29.9 MB", "3.25 GB". For memory sizes.
std::string format_bytes(double bytes);

// Powers of 1024, whole numbers: "8 B", "4 KiB", "256 MiB". For the message sizes of a
// power-of-two sweep, which are exact in these units.
std::string format_bytes_binary(int64_t bytes);

}  // namespace mla
