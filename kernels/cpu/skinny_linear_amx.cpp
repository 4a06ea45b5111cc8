// skinny_linear with bf16 weights and bf16 x on AMX tiles. The product runs transposed,
// y^T = W x^T: 16 rows of the weight (16 output features) are the tile product's A operand,
// loaded straight from the plain [out, in] layout with the row stride, and the few rows of x are
// the columns of its B operand, rearranged into pairs once per call. So the weight is streamed in
// the layout it is stored in, each byte read once, with no copy (oneDNN copies a plain weight into
// its blocked layout on every call) and the products cost next to nothing: a decode step is left
// bound by reading the weight, which is its limit.
#include "kernels/cpu/aligned_vector.h"
#include "kernels/cpu/amx_tiles.h"
#include "kernels/cpu/skinny_linear_isa.h"

namespace mla {

#if MLA_HAVE_AMX_INTRINSICS

namespace {

constexpr int64_t kTaskFeatures = 2 * kTileRows;  // two A tiles share each B tile
// The tiles (GCC's tile intrinsics take literal numbers): 0 = B, x as pairs, [16 pairs][rows];
// 1 and 2 = A, 16 weight rows each; 4 and 5 = C, [16 features][rows] in fp32.
constexpr int kPairsTile = 0;
constexpr int kWeightTiles[] = {1, 2};
constexpr int kSumTiles[] = {4, 5};

// out[f][r] = sum over the columns of W[f][:] x[r][:], for the 32 features from `weight` on.
MLA_AMX_TARGET void feature_block(const uint16_t* weight, int64_t weight_row_bytes, const uint16_t* x_pairs,
                                  int64_t pairs_chunk_step, int64_t pairs_row_bytes, int64_t chunks, float* out,
                                  int64_t out_row_bytes) {
  const uint16_t* second = weight + kTileRows * (weight_row_bytes / 2);
  _tile_zero(4);
  _tile_zero(5);
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    _tile_loadd(0, x_pairs + chunk * pairs_chunk_step, pairs_row_bytes);
    _tile_loadd(1, weight + chunk * kTileInner, weight_row_bytes);
    _tile_dpbf16ps(4, 1, 0);
    _tile_loadd(2, second + chunk * kTileInner, weight_row_bytes);
    _tile_dpbf16ps(5, 2, 0);
  }
  _tile_stored(4, out, out_row_bytes);
  _tile_stored(5, out + kTileRows * (out_row_bytes / 4), out_row_bytes);
}

}  // namespace

void skinny_linear_amx(const SkinnyLinearParams& p) {
  const int64_t in = p.in_features;
  const int64_t rows = p.rows;
  const int64_t tile_features = p.out_features - p.out_features % kTaskFeatures;
  if (in % kTileInner != 0 || tile_features == 0 || rows > kTileRows) {
    skinny_linear_avx512_bf16(p);
    return;
  }
  // x^T as the B operand: chunk c, pair row i, column r holds (x[r][32c + 2i], x[r][32c + 2i + 1]).
  AlignedVector<uint16_t> x_pairs(static_cast<size_t>(in * rows));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t col = 0; col < in; col += 2) {
      const int64_t chunk = col / kTileInner, pair = (col % kTileInner) / 2;
      uint16_t* slot = x_pairs.data() + ((chunk * kTileRows + pair) * rows + r) * 2;
      slot[0] = p.x_bf16[r * in + col];
      slot[1] = p.x_bf16[r * in + col + 1];
    }
  }
  const int64_t sum_row_bytes = rows * 4;
  TileConfig config;
  config.rows[kPairsTile] = static_cast<uint8_t>(kTileRows);
  config.colsb[kPairsTile] = static_cast<uint16_t>(sum_row_bytes);
  for (const int tile : kWeightTiles) {
    config.rows[tile] = static_cast<uint8_t>(kTileRows);
    config.colsb[tile] = static_cast<uint16_t>(kTileBytes);
  }
  for (const int tile : kSumTiles) {
    config.rows[tile] = static_cast<uint8_t>(kTileRows);
    config.colsb[tile] = static_cast<uint16_t>(sum_row_bytes);
  }
  const auto* weight = static_cast<const uint16_t*>(p.weight);
  const int64_t tasks = tile_features / kTaskFeatures;
#pragma omp parallel if (tile_features * in > 65536)
  {
    amx_load_tile_config(config);
    alignas(64) float sums[kTaskFeatures * kTileRows];  // [feature][row]
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t first = task * kTaskFeatures;
      feature_block(weight + first * in, in * 2, x_pairs.data(), kTileRows * rows * 2, sum_row_bytes, in / kTileInner,
                    sums, sum_row_bytes);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t f = 0; f < kTaskFeatures; ++f) p.y[r * p.y_stride + first + f] = sums[f * rows + r];
      }
    }
    amx_release_tiles();
  }
  if (tile_features < p.out_features) {  // the last out % 32 features
    SkinnyLinearParams tail = p;
    tail.weight = weight + tile_features * in;
    tail.y = p.y + tile_features;
    tail.out_features = p.out_features - tile_features;
    skinny_linear_avx512_bf16(tail);
  }
}

#else

void skinny_linear_amx(const SkinnyLinearParams& p) { skinny_linear_avx512_bf16(p); }

#endif

}  // namespace mla
