#include "kernels/cpu/attention_merge.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/bf16.h"

namespace mla {

void attention_merge(const AttentionMergeParams& p) {
  const int64_t parts = p.parts, rows = p.rows, dim = p.dim;
  const int64_t part_rows = p.part_rows > 0 ? p.part_rows : rows;
#pragma omp parallel if (rows * dim * parts > 65536)
  {
    std::vector<double> weight(static_cast<size_t>(parts)), sum(static_cast<size_t>(dim));
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      float max_lse = -std::numeric_limits<float>::infinity();
      for (int64_t part = 0; part < parts; ++part) max_lse = std::max(max_lse, p.lse[part * part_rows + row]);
      float* merged = p.merged + row * dim;
      if (max_lse == -std::numeric_limits<float>::infinity()) {
        std::fill(merged, merged + dim, 0.0f);
        if (p.merged_lse != nullptr) p.merged_lse[row] = max_lse;
        continue;
      }
      double total = 0.0;
      for (int64_t part = 0; part < parts; ++part) {
        const float lse = p.lse[part * part_rows + row];
        weight[part] = lse == -std::numeric_limits<float>::infinity() ? 0.0 : std::exp(double{lse} - max_lse);
        total += weight[part];
      }
      std::fill(sum.begin(), sum.end(), 0.0);
      for (int64_t part = 0; part < parts; ++part) {
        if (weight[part] == 0.0) continue;  // its output may be anything finite or not: it saw no key
        const float* out = p.out + (part * part_rows + row) * dim;
        for (int64_t i = 0; i < dim; ++i) sum[i] += weight[part] * out[i];
      }
      for (int64_t i = 0; i < dim; ++i) {
        const float value = static_cast<float>(sum[i] / total);
        merged[i] = p.round_to_bf16 ? round_to_bf16(value) : value;
      }
      if (p.merged_lse != nullptr) p.merged_lse[row] = static_cast<float>(max_lse + std::log(total));
    }
  }
}

}  // namespace mla
