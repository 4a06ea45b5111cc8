// Where each lane of a warp of kernels/cuda/attention_flash points ldmatrix, and which element of
// the score and output tiles each of its accumulator registers holds. Plain C++ as well as device
// code: tests/test_attention_flash_lanes.cpp replays a warp's products through these on the CPU,
// with ldmatrix and mma.m16n8k16 as PTX defines them (kernels/cuda/mma_ops.cuh), and checks them
// against plain matrix products, where no GPU is at hand.
#pragma once

#if defined(__CUDACC__)
#define MLA_FLASH_LANE_FN __host__ __device__ constexpr inline
#else
#define MLA_FLASH_LANE_FN constexpr inline
#endif

namespace mla::flash_lanes {

// A row and column of a bf16 tile in shared memory (the column a multiple of 8: one 16-byte row
// of an 8 x 8 matrix starts there).
struct TileCell {
  int row;
  int col;
};

// The warp's 16 query rows x 16 score dimensions as the mma's row operand: matrices rows 0-7 and
// 8-15 of columns 0-7, then of columns 8-15 (a[0] .. a[3]).
MLA_FLASH_LANE_FN TileCell query_cell(int lane) { return {lane % 16, (lane / 16) * 8}; }

// 16 keys x 16 dimensions (keys stored as rows) as the column operands of two 8-key tiles: keys
// 0-7 of dimensions 0-7 and 8-15 (b0, b1 of the first), then keys 8-15 (of the second).
MLA_FLASH_LANE_FN TileCell key_cell(int lane) { return {lane % 8 + (lane / 16) * 8, ((lane / 8) % 2) * 8}; }

// The wide kernel's: 8 keys x 32 dimensions as the column operands of two k16 steps of one 8-key
// tile: dimensions 0-7 and 8-15 (b0, b1 of the first step), then 16-23 and 24-31 (of the second).
MLA_FLASH_LANE_FN TileCell wide_key_cell(int lane) { return {lane % 8, (lane / 8) * 8}; }

// 16 positions x 16 value columns (positions stored as rows), read transposed, as the column
// operands of two 8-column tiles: positions 0-7 and 8-15 of columns 0-7 (b0, b1 of the first),
// then of columns 8-15 (of the second).
MLA_FLASH_LANE_FN TileCell value_cell(int lane) { return {lane % 8 + ((lane / 8) % 2) * 8, (lane / 16) * 8}; }

// Accumulator register e (0-3) of a 16 x 8 tile: its row (0-15) and column (0-7). Registers 0, 1
// are row lane / 4, registers 2, 3 the row 8 below; so a row's 8 columns are held by the 4 lanes
// lane / 4 * 4 .. + 3, which is where the softmax's row maximum and sum are gathered.
MLA_FLASH_LANE_FN int accumulator_row(int lane, int e) { return lane / 4 + 8 * (e / 2); }
MLA_FLASH_LANE_FN int accumulator_col(int lane, int e) { return (lane % 4) * 2 + e % 2; }

}  // namespace mla::flash_lanes
