// The per-ISA bodies of skinny_linear (kernels/cpu/skinny_linear.h). Each is compiled in its own
// file with that ISA's flags; skinny_linear() picks one from cpu_isa().
#pragma once

#include "kernels/cpu/skinny_linear.h"

namespace mla {

void skinny_linear_portable(const SkinnyLinearParams& params);
void skinny_linear_avx2(const SkinnyLinearParams& params);
void skinny_linear_avx512(const SkinnyLinearParams& params);

}  // namespace mla
