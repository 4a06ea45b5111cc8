// What every AMX kernel needs before its first tile instruction: the compiler's intrinsics (only
// the functions that issue tile instructions are compiled for AMX, with MLA_AMX_TARGET, never a
// whole file: inline and template code compiled there is shared with the rest of the program,
// which must run on any x86-64), the tile configuration, and Linux's permission.
#pragma once

#include <cstdint>

// AMX intrinsics under a function's target attribute: GCC 11 and clang 12 onwards, x86-64 only.
#if defined(__x86_64__) && ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define MLA_HAVE_AMX_INTRINSICS 1
#include <immintrin.h>
#define MLA_AMX_TARGET __attribute__((target("amx-tile,amx-bf16")))
#else
#define MLA_HAVE_AMX_INTRINSICS 0
#endif

namespace mla {

// A tile is 16 rows of 64 bytes: 16 x 32 bf16 operands, or 16 x 16 fp32 accumulators. The B
// operand of a tile product holds its inner dimension in pairs: row r, column n is the 32-bit
// pair (B[2r][n], B[2r+1][n]).
inline constexpr int64_t kTileRows = 16;
inline constexpr int64_t kTileInner = 32;  // bf16 values along the inner dimension per tile
inline constexpr int64_t kTileBytes = 64;

// The operand of ldtilecfg (palette 1): rows and bytes per row of each of the 8 tiles.
struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Whether Linux gave this process the tile registers' state (arch_prctl ARCH_REQ_XCOMP_PERM),
// asked once. False where the build has no AMX intrinsics.
bool amx_tiles_permitted();

// ldtilecfg and tilerelease for the calling thread. Functions of their own because an OpenMP
// region is outlined into a function that does not inherit its enclosing function's target
// attribute (clang). Call only where cpu_isa() is Amx and amx_tiles_permitted().
void amx_load_tile_config(const TileConfig& config);
void amx_release_tiles();

}  // namespace mla
