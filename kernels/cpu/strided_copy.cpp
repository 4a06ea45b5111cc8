#include "kernels/cpu/strided_copy.h"

#include "kernels/cpu/bf16.h"

namespace mla {

void strided_copy(const StridedCopyParams& p) {
#pragma omp parallel for collapse(3) schedule(static) if (p.batch * p.outer * p.inner * p.width > 65536)
  for (int64_t n = 0; n < p.batch; ++n) {
    for (int64_t i = 0; i < p.outer; ++i) {
      for (int64_t j = 0; j < p.inner; ++j) {
        const float* src = p.src + n * p.src_batch_stride + i * p.src_outer_stride + j * p.src_inner_stride;
        float* dst = p.dst + n * p.dst_batch_stride + i * p.dst_outer_stride + j * p.dst_inner_stride;
        for (int64_t k = 0; k < p.width; ++k) dst[k] = p.round_to_bf16 ? round_to_bf16(src[k]) : src[k];
      }
    }
  }
}

}  // namespace mla
