// The per-ISA bodies of skinny_linear (kernels/cpu/skinny_linear.h). Each is compiled in its own
// file with that ISA's flags; skinny_linear() picks one from cpu_isa().
#pragma once

#include "kernels/cpu/skinny_linear.h"

namespace mla {

void skinny_linear_portable(const SkinnyLinearParams& params);
void skinny_linear_avx2(const SkinnyLinearParams& params);
void skinny_linear_avx512(const SkinnyLinearParams& params);
// bf16 weights and x_bf16 only: vdpbf16ps.
void skinny_linear_avx512_bf16(const SkinnyLinearParams& params);
// bf16 weights and x_bf16 only, on AMX tiles (cpu_isa() Amx and amx_tiles_permitted()); weights
// whose in_features are not a multiple of 32 go to skinny_linear_avx512_bf16.
void skinny_linear_amx(const SkinnyLinearParams& params);

}  // namespace mla
