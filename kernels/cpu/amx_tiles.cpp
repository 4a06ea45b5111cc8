#include "kernels/cpu/amx_tiles.h"

#if MLA_HAVE_AMX_INTRINSICS
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace mla {

#if MLA_HAVE_AMX_INTRINSICS

bool amx_tiles_permitted() {
  static const bool permitted = [] {
    constexpr int kArchReqXcompPerm = 0x1023;
    constexpr int kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return permitted;
}

MLA_AMX_TARGET void amx_load_tile_config(const TileConfig& config) { _tile_loadconfig(&config); }
MLA_AMX_TARGET void amx_release_tiles() { _tile_release(); }

#else

bool amx_tiles_permitted() { return false; }
void amx_load_tile_config(const TileConfig&) {}
void amx_release_tiles() {}

#endif

}  // namespace mla
