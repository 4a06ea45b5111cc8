// The lanes of kernels/cuda/attention_flash, replayed on the CPU: one warp's products over a stage
// (narrow: 16 query rows, 64 keys, 48 score dimensions, 32 value columns; wide: its share of a
// 32-key stage and the probabilities shared through memory) through the lane addresses and
// accumulator positions of kernels/cuda/attention_flash_lanes.h, with ldmatrix (.x4, and .trans)
// and mma.m16n8k16 emulated as the PTX ISA defines them. The scores must be Q K^T, each row's 64
// scores must sit in the 4 lanes the kernel's shuffles gather (lane / 4 the same), and the value
// product, fed the score accumulators in place as its row operand, must be P V. The GPU is where the
// kernel itself runs (its op-table rows); this checks the index arithmetic without one.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "kernels/cpu/bf16.h"
#include "kernels/cuda/attention_flash_lanes.h"
#include "tests/ops/test_data.h"

namespace mla::test {
namespace {

using flash_lanes::TileCell;

using Pair = std::array<float, 2>;
using Operand = std::array<std::array<Pair, 4>, 32>;       // [lane][register]: ldmatrix .x4's four registers
using Accumulator = std::array<std::array<float, 4>, 32>;  // [lane][register] of a 16 x 8 tile

// A bf16 tile in shared memory, as floats holding bf16 numbers: rows of `ld`.
struct Tile {
  std::vector<float> values;
  int ld;
  float at(int row, int col) const { return values[static_cast<size_t>(row * ld + col)]; }
};

Tile random_tile(int rows, int cols, uint32_t seed) {
  Tile tile{random_floats(rows * (cols + 8), seed), cols + 8};  // padded by 8, as the kernel's
  round_to_bf16_inplace(tile.values.data(), static_cast<int64_t>(tile.values.size()));
  return tile;
}

// ldmatrix.x4 (PTX ISA): lanes 8i .. 8i+7 give the start of rows 0-7 of matrix i (here: the cell
// `cell(lane)` of the tile from (row0, col0)); each lane receives of matrix i the pair at row
// lane / 4, columns 2 (lane % 4) and the next, or, transposed, at rows 2 (lane % 4) and the next of
// column lane / 4.
template <typename Cell>
Operand load_matrices(const Tile& tile, int row0, int col0, Cell cell, bool transpose) {
  Operand out{};
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 4; ++i) {
      const auto start = [&](int matrix_row) {
        const TileCell c = cell(8 * i + matrix_row);
        return TileCell{row0 + c.row, col0 + c.col};
      };
      const int r = lane / 4, c = 2 * (lane % 4);
      if (transpose) {
        out[lane][i] = {tile.at(start(c).row, start(c).col + r), tile.at(start(c + 1).row, start(c + 1).col + r)};
      } else {
        out[lane][i] = {tile.at(start(r).row, start(r).col + c), tile.at(start(r).row, start(r).col + c + 1)};
      }
    }
  }
  return out;
}

// mma.m16n8k16 (PTX ISA fragments, g = lane / 4, t = lane % 4): a[0] row g columns 2t, 2t+1; a[1]
// row g+8; a[2], a[3] the same rows at columns 2t+8, 2t+9. b0 rows 2t, 2t+1 of column g; b1 rows
// 2t+8, 2t+9. c[0], c[1] row g columns 2t, 2t+1; c[2], c[3] row g+8.
void mma(Accumulator& c, const std::array<std::array<Pair, 4>, 32>& a, int b0, int b1, const Operand& b) {
  double A[16][16] = {}, B[16][8] = {};
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    for (int j = 0; j < 2; ++j) {
      A[g][2 * t + j] = a[lane][0][j];
      A[g + 8][2 * t + j] = a[lane][1][j];
      A[g][2 * t + 8 + j] = a[lane][2][j];
      A[g + 8][2 * t + 8 + j] = a[lane][3][j];
      B[2 * t + j][g] = b[lane][b0][j];
      B[2 * t + 8 + j][g] = b[lane][b1][j];
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    for (int e = 0; e < 4; ++e) {
      const int row = g + 8 * (e / 2), col = 2 * t + e % 2;
      double sum = c[lane][e];
      for (int k = 0; k < 16; ++k) sum += A[row][k] * B[k][col];
      c[lane][e] = static_cast<float>(sum);
    }
  }
}

// Over a warp's 16 x 8 tiles (tile nt holds columns nt * 8 ..), each register where
// accumulator_row / accumulator_col place it against want(row, column): the largest difference,
// and the largest |want|.
template <size_t kTiles, typename Want>
std::pair<double, double> worst_error(const std::array<Accumulator, kTiles>& tiles, Want want) {
  double worst = 0.0, largest = 0.0;
  for (size_t nt = 0; nt < kTiles; ++nt) {
    for (int lane = 0; lane < 32; ++lane) {
      for (int e = 0; e < 4; ++e) {
        const double w = want(flash_lanes::accumulator_row(lane, e),
                              static_cast<int>(nt) * 8 + flash_lanes::accumulator_col(lane, e));
        worst = std::max(worst, std::abs(tiles[nt][lane][e] - w));
        largest = std::max(largest, std::abs(w));
      }
    }
  }
  return {worst, largest};
}

TEST(AttentionFlashLanes, AWarpsFragmentsGiveTheScoresAndTheValueProduct) {
  constexpr int kRows = 16, kKeys = 64, kDims = 48, kValueCols = 32;
  const Tile q = random_tile(kRows, kDims, 1), keys = random_tile(kKeys, kDims, 2),
             values = random_tile(kKeys, kValueCols, 3);

  // Scores, as the kernel's loop: per 16 dimensions, the queries' operand, then per 16 keys the
  // key operands of two 8-key tiles.
  std::array<Accumulator, kKeys / 8> score{};
  for (int k0 = 0; k0 < kDims; k0 += 16) {
    const Operand q_operand = load_matrices(q, 0, k0, flash_lanes::query_cell, false);
    for (int pair = 0; pair < kKeys / 16; ++pair) {
      const Operand key_operand = load_matrices(keys, pair * 16, k0, flash_lanes::key_cell, false);
      mma(score[2 * pair], q_operand, 0, 1, key_operand);
      mma(score[2 * pair + 1], q_operand, 2, 3, key_operand);
    }
  }
  const auto direct_score = [&](int row, int key) {
    double s = 0.0;
    for (int d = 0; d < kDims; ++d) s += static_cast<double>(q.at(row, d)) * keys.at(key, d);
    return s;
  };
  EXPECT_LE(worst_error(score, direct_score).first, 1e-4) << "scores";
  // Every (row, key) once, held by a lane whose lane / 4 is row % 8, in the register half row / 8.
  std::vector<int> seen(kRows * kKeys, 0);
  for (int st = 0; st < kKeys / 8; ++st) {
    for (int lane = 0; lane < 32; ++lane) {
      for (int e = 0; e < 4; ++e) {
        const int row = flash_lanes::accumulator_row(lane, e);
        ++seen[static_cast<size_t>(row * kKeys + st * 8 + flash_lanes::accumulator_col(lane, e))];
        EXPECT_EQ(row % 8, lane / 4);
        EXPECT_EQ(row / 8, e / 2);
      }
    }
  }
  for (const int count : seen) ASSERT_EQ(count, 1);

  // The value product: the score accumulators of tiles 2 k0 and 2 k0 + 1, rounded to bf16, as the
  // row operand of 16 positions (registers: tile 2 k0's rows g and g+8, then tile 2 k0 + 1's).
  std::array<Accumulator, kValueCols / 8> out{};
  for (int k0 = 0; k0 < kKeys / 16; ++k0) {
    std::array<std::array<Pair, 4>, 32> probs{};
    for (int lane = 0; lane < 32; ++lane) {
      const auto& low = score[2 * k0][lane];
      const auto& high = score[2 * k0 + 1][lane];
      probs[lane] = {
          Pair{round_to_bf16(low[0]), round_to_bf16(low[1])}, Pair{round_to_bf16(low[2]), round_to_bf16(low[3])},
          Pair{round_to_bf16(high[0]), round_to_bf16(high[1])}, Pair{round_to_bf16(high[2]), round_to_bf16(high[3])}};
    }
    for (int vt = 0; vt < kValueCols / 16; ++vt) {
      const Operand value_operand = load_matrices(values, k0 * 16, vt * 16, flash_lanes::value_cell, true);
      mma(out[2 * vt], probs, 0, 1, value_operand);
      mma(out[2 * vt + 1], probs, 2, 3, value_operand);
    }
  }
  // Against the scores as the warp holds them (checked above), rounded as the kernel packs them: a
  // bf16 rounding apart at most, where a wrong lane is 100x off.
  const auto [worst, largest] = worst_error(out, [&](int row, int col) {
    double want = 0.0;
    for (int key = 0; key < kKeys; ++key) {
      want += static_cast<double>(round_to_bf16(static_cast<float>(direct_score(row, key)))) * values.at(key, col);
    }
    return want;
  });
  EXPECT_LE(worst, 1e-2 * largest) << "value product";
}

// The wide kernel's warp (column group 1 of 2, row warp 0): its two 8-key score tiles of a 32-key
// stage over 64 dimensions, loaded 32 at a time (wide_key_cell); its probabilities stored into the
// shared tile by pairs, as the kernel stores them, beside the other group's; the tile read back as
// the row operand (query_cell over it), times the key rows' columns 32-63 read transposed
// (value_cell): P V over all 32 keys, for the group's 32 value columns.
TEST(AttentionFlashLanes, AWideWarpsProbabilitiesGoThroughSharedMemory) {
  constexpr int kRows = 16, kKeys = 32, kTiles = 2, kGroup = 1, kDims = 64, kValueCols = 32;
  const Tile q = random_tile(kRows, kDims, 4), keys = random_tile(kKeys, kDims, 5);
  const auto direct_score = [&](int row, int key) {
    double s = 0.0;
    for (int d = 0; d < kDims; ++d) s += static_cast<double>(q.at(row, d)) * keys.at(key, d);
    return s;
  };

  std::array<Accumulator, kTiles> score{};
  for (int k0 = 0; k0 < kDims; k0 += 32) {
    const Operand q_low = load_matrices(q, 0, k0, flash_lanes::query_cell, false);
    const Operand q_high = load_matrices(q, 0, k0 + 16, flash_lanes::query_cell, false);
    for (int tt = 0; tt < kTiles; ++tt) {
      const Operand key_operand =
          load_matrices(keys, (kGroup * kTiles + tt) * 8, k0, flash_lanes::wide_key_cell, false);
      mma(score[tt], q_low, 0, 1, key_operand);
      mma(score[tt], q_high, 2, 3, key_operand);
    }
  }
  // The probabilities' tile: the other group's keys as its warp would leave them, this warp's
  // places NaN until its stores fill them.
  Tile probs{std::vector<float>(kRows * (kKeys + 8), 0.0f), kKeys + 8};
  for (int row = 0; row < kRows; ++row) {
    for (int key = 0; key < kKeys; ++key) {
      const bool mine = key / (8 * kTiles) == kGroup;
      probs.values[static_cast<size_t>(row * probs.ld + key)] =
          mine ? NAN : round_to_bf16(static_cast<float>(direct_score(row, key)));
    }
  }
  double worst = 0.0;
  for (int tt = 0; tt < kTiles; ++tt) {
    for (int lane = 0; lane < 32; ++lane) {
      for (int half = 0; half < 2; ++half) {
        const int row = flash_lanes::accumulator_row(lane, 2 * half);
        const int col = (kGroup * kTiles + tt) * 8 + flash_lanes::accumulator_col(lane, 2 * half);
        for (int j = 0; j < 2; ++j) {
          worst = std::max(worst, std::abs(score[tt][lane][2 * half + j] - direct_score(row, col + j)));
          probs.values[static_cast<size_t>(row * probs.ld + col + j)] = round_to_bf16(score[tt][lane][2 * half + j]);
        }
      }
    }
  }
  EXPECT_LE(worst, 1e-4) << "scores";
  for (int row = 0; row < kRows; ++row) {
    for (int key = 0; key < kKeys; ++key) ASSERT_FALSE(std::isnan(probs.at(row, key))) << row << " " << key;
  }

  std::array<Accumulator, kValueCols / 8> out{};
  const int first_value_col = kGroup * kValueCols;
  for (int k0 = 0; k0 < kKeys / 16; ++k0) {
    const Operand prob_operand = load_matrices(probs, 0, k0 * 16, flash_lanes::query_cell, false);
    for (int vt = 0; vt < kValueCols / 16; ++vt) {
      const Operand value_operand =
          load_matrices(keys, k0 * 16, first_value_col + vt * 16, flash_lanes::value_cell, true);
      mma(out[2 * vt], prob_operand, 0, 1, value_operand);
      mma(out[2 * vt + 1], prob_operand, 2, 3, value_operand);
    }
  }
  // The same bf16 operands: the sums' order apart.
  const auto [value_worst, largest] = worst_error(out, [&](int row, int col) {
    double want = 0.0;
    for (int key = 0; key < kKeys; ++key) {
      want += static_cast<double>(probs.at(row, key)) * keys.at(key, first_value_col + col);
    }
    return want;
  });
  EXPECT_LE(value_worst, 1e-5 * largest) << "value product";
}

}  // namespace
}  // namespace mla::test
