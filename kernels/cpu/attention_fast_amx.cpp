// The fused attention of a bf16 prefill on AMX tiles (see attention_fast_amx.h). Only the functions
// that issue tile instructions are compiled for AMX (MLA_AMX_TARGET, kernels/cpu/amx_tiles.h).
#include "kernels/cpu/attention_fast_amx.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/aligned_vector.h"
#include "kernels/cpu/amx_tiles.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/softmax.h"
#include "kernels/cpu/vector_ops.h"

namespace mla {

namespace {

constexpr int64_t kTileElements = kTileRows * kTileInner;
// Tiles 0-3 hold operands, 4-7 four accumulators: each pass produces four 16 x 16 output blocks.
constexpr int64_t kAccumulators = 4;

int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

// How many tiles a head's operands take when its queries see at most `cols` positions.
struct TileCounts {
  int64_t key_blocks = 0;    // 16-key blocks of the scores, a multiple of kAccumulators
  int64_t score_chunks = 0;  // 32-wide chunks of the score dimension
  int64_t key_chunks = 0;    // 32-key chunks of the value product
  int64_t value_blocks = 0;  // 16-column blocks of the values, a multiple of kAccumulators

  TileCounts(const AttentionParams& p, int64_t cols)
      : key_blocks(round_up((cols + kTileRows - 1) / kTileRows, kAccumulators)),
        score_chunks((p.score_dim + kTileInner - 1) / kTileInner),
        key_chunks((cols + kTileInner - 1) / kTileInner),
        value_blocks(round_up((p.value_dim + kTileRows - 1) / kTileRows, kAccumulators)) {}

  int64_t bf16_values() const {
    return (key_blocks * score_chunks + key_chunks * value_blocks) * kTileElements +
           (kTileRows + 1) * score_chunks * kTileInner + kTileRows * key_chunks * kTileInner +
           2 * value_blocks * kTileRows;
  }
  int64_t fp32_values() const { return kTileRows * (key_blocks + value_blocks) * kTileRows; }
};

}  // namespace

#if MLA_HAVE_AMX_INTRINSICS

namespace {

// One (sequence, head)'s keys and values in the tile products' B layout, and one query block's
// operands and results; per thread, reused across heads. Padding stays zero.
struct HeadTiles : TileCounts {
  AlignedVector<uint16_t> keys;        // [key_blocks][score_chunks] tiles
  AlignedVector<uint16_t> values;      // [key_chunks][value_blocks] tiles
  AlignedVector<uint16_t> queries;     // [16][score_chunks * 32]
  AlignedVector<float> scores;         // [16][key_blocks * 16]
  AlignedVector<uint16_t> probs;       // [16][key_chunks * 32]
  AlignedVector<float> outputs;        // [16][value_blocks * 16]
  AlignedVector<uint16_t> key_row;     // one key in bf16 while it is packed, zero past score_dim
  AlignedVector<uint16_t> value_rows;  // two positions' values in bf16 while they are packed

  HeadTiles(const AttentionParams& p, int64_t cols) : TileCounts(p, cols) {
    keys.assign(static_cast<size_t>(key_blocks * score_chunks * kTileElements), 0);
    values.assign(static_cast<size_t>(key_chunks * value_blocks * kTileElements), 0);
    queries.assign(static_cast<size_t>(kTileRows * score_chunks * kTileInner), 0);
    scores.assign(static_cast<size_t>(kTileRows * key_blocks * kTileRows), 0.0f);
    probs.assign(static_cast<size_t>(kTileRows * key_chunks * kTileInner), 0);
    outputs.assign(static_cast<size_t>(kTileRows * value_blocks * kTileRows), 0.0f);
    key_row.assign(static_cast<size_t>(score_chunks * kTileInner), 0);
    value_rows.assign(static_cast<size_t>(2 * value_blocks * kTileRows), 0);
  }
};

// One head's queries, keys or values of one sequence as bf16 bits, from whichever form
// AttentionParams holds them in: fp32 numbers (rounded here) or bf16 bits (copied).
struct HeadRows {
  const float* fp32 = nullptr;
  const uint16_t* bits = nullptr;
  int64_t pos_stride = 0;
  int64_t width = 0;

  HeadRows(const float* fp32_operand, const uint16_t* bits_operand, int64_t offset, int64_t stride, int64_t row_width)
      : fp32(bits_operand != nullptr ? nullptr : fp32_operand + offset),
        bits(bits_operand != nullptr ? bits_operand + offset : nullptr),
        pos_stride(stride),
        width(row_width) {}

  void row(int64_t t, uint16_t* out) const {
    if (bits != nullptr) {
      std::memcpy(out, bits + t * pos_stride, static_cast<size_t>(width) * sizeof(uint16_t));
    } else {
      f32_to_bf16_bits_rne(fp32 + t * pos_stride, out, width);
    }
  }
};

HeadRows head_queries(const AttentionParams& p, int64_t b, int64_t h) {
  return {p.q, p.q_bf16, b * p.seq * p.q_token_stride + h * p.q_head_stride, p.q_token_stride, p.score_dim};
}

HeadRows head_keys(const AttentionParams& p, int64_t b, int64_t h) {
  return {p.keys, p.key_bf16, b * p.key_batch_stride + h * p.key_head_stride, p.key_pos_stride, p.score_dim};
}

HeadRows head_values(const AttentionParams& p, int64_t b, int64_t h) {
  return {p.values, p.value_bf16, b * p.value_batch_stride + h * p.value_head_stride, p.value_pos_stride, p.value_dim};
}

// Key t, score dimensions (d, d + 1) go to tile (t / 16, d / 32), row (d % 32) / 2, column t % 16:
// each key's bf16 pairs are written down a column, 64 bytes apart.
void pack_keys(const HeadRows& keys, int64_t cols, HeadTiles& tiles) {
  const int64_t pairs = tiles.score_chunks * kTileInner / 2;
  uint16_t* row = tiles.key_row.data();
  for (int64_t t = 0; t < cols; ++t) {
    keys.row(t, row);
    uint16_t* column = tiles.keys.data() + (t / kTileRows) * tiles.score_chunks * kTileElements + (t % kTileRows) * 2;
    // Pair i of the key is row i % 16 of chunk i / 16's tile: kTileInner values further down.
    for (int64_t pair = 0; pair < pairs; ++pair)
      std::memcpy(column + pair * kTileInner, row + 2 * pair, 2 * sizeof(uint16_t));
  }
}

// Positions (t, t + 1), value column c go to tile (t / 32, c / 16), row (t % 32) / 2, column c % 16:
// a tile row interleaves 16 columns of two consecutive positions.
void pack_values(const HeadRows& values, int64_t cols, HeadTiles& tiles) {
  uint16_t* even = tiles.value_rows.data();
  uint16_t* odd = even + tiles.value_blocks * kTileRows;
  for (int64_t t = 0; t < cols; t += 2) {
    values.row(t, even);
    if (t + 1 < cols) {
      values.row(t + 1, odd);
    } else {
      std::fill(odd, odd + values.width, uint16_t{0});  // past the last position: zero, like the padding
    }
    uint16_t* row = tiles.values.data() + (t / kTileInner) * tiles.value_blocks * kTileElements +
                    ((t % kTileInner) / 2) * kTileInner;
    for (int64_t c = 0; c < values.width; ++c) {
      uint16_t* pair = row + (c / kTileRows) * kTileElements + (c % kTileRows) * 2;
      pair[0] = even[c];
      pair[1] = odd[c];
    }
  }
}

// Four 16 x 16 fp32 results side by side, out[r][16 j + c] (rows `out_stride` bytes apart), each
// the sum over `chunks` of A chunk k (16 x 32 bf16 at a + 32 k, rows `a_stride` bytes apart) times
// B tile (k, j) at b + k * b_chunk_step + j * b_block_step. Tiles 0-3 hold operands, 4-7 the sums.
MLA_AMX_TARGET void tile_products(const uint16_t* a, int64_t a_stride, const uint16_t* b, int64_t b_chunk_step,
                                  int64_t b_block_step, int64_t chunks, float* out, int64_t out_stride) {
  _tile_zero(4);
  _tile_zero(5);
  _tile_zero(6);
  _tile_zero(7);
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const uint16_t* b_chunk = b + chunk * b_chunk_step;
    _tile_loadd(0, a + chunk * kTileInner, a_stride);
    _tile_loadd(1, b_chunk, kTileBytes);
    _tile_dpbf16ps(4, 0, 1);
    _tile_loadd(2, b_chunk + b_block_step, kTileBytes);
    _tile_dpbf16ps(5, 0, 2);
    _tile_loadd(3, b_chunk + 2 * b_block_step, kTileBytes);
    _tile_dpbf16ps(6, 0, 3);
    _tile_loadd(1, b_chunk + 3 * b_block_step, kTileBytes);
    _tile_dpbf16ps(7, 0, 1);
  }
  _tile_stored(4, out, out_stride);
  _tile_stored(5, out + kTileRows, out_stride);
  _tile_stored(6, out + 2 * kTileRows, out_stride);
  _tile_stored(7, out + 3 * kTileRows, out_stride);
}

// The tile configuration is per thread, and oneDNN's GEMMs load their own between our calls.

// scores[r][t] = dot(query r, key t) for the first `key_blocks` blocks of 16 keys.
void score_tiles(const HeadTiles& tiles, int64_t key_blocks, float* scores) {
  const int64_t query_stride = tiles.score_chunks * kTileInner * static_cast<int64_t>(sizeof(uint16_t));
  const int64_t score_stride = tiles.key_blocks * kTileRows * static_cast<int64_t>(sizeof(float));
  const int64_t key_block_step = tiles.score_chunks * kTileElements;
  for (int64_t block = 0; block < key_blocks; block += kAccumulators) {
    tile_products(tiles.queries.data(), query_stride, tiles.keys.data() + block * key_block_step, kTileElements,
                  key_block_step, tiles.score_chunks, scores + block * kTileRows, score_stride);
  }
}

// outputs[r][c] = sum_t probs[r][t] values[t][c] over the first `key_chunks` chunks of 32 keys.
void value_tiles(const HeadTiles& tiles, int64_t key_chunks, float* outputs) {
  const int64_t prob_stride = tiles.key_chunks * kTileInner * static_cast<int64_t>(sizeof(uint16_t));
  const int64_t output_stride = tiles.value_blocks * kTileRows * static_cast<int64_t>(sizeof(float));
  const int64_t value_chunk_step = tiles.value_blocks * kTileElements;
  for (int64_t block = 0; block < tiles.value_blocks; block += kAccumulators) {
    tile_products(tiles.probs.data(), prob_stride, tiles.values.data() + block * kTileElements, value_chunk_step,
                  kTileElements, key_chunks, outputs + block * kTileRows, output_stride);
  }
}

// Query rows [first, first + rows) of head h of sequence b (rows <= 16); the head's keys and
// values are packed in `tiles`.
void attend_query_block(const AttentionParams& p, int64_t b, int64_t h, int64_t first, int64_t rows, HeadTiles& tiles) {
  const int64_t query_width = tiles.score_chunks * kTileInner;
  std::fill(tiles.queries.begin(), tiles.queries.end(), uint16_t{0});
  const HeadRows queries = head_queries(p, b, h);
  for (int64_t r = 0; r < rows; ++r) queries.row(first + r, tiles.queries.data() + r * query_width);
  // The block's last row sees the most positions.
  const int64_t cols = attention_visible_len(p, first + rows - 1);
  score_tiles(tiles, round_up((cols + kTileRows - 1) / kTileRows, kAccumulators), tiles.scores.data());

  const int64_t score_width = tiles.key_blocks * kTileRows;
  const int64_t prob_width = tiles.key_chunks * kTileInner;
  const int64_t key_chunks = (cols + kTileInner - 1) / kTileInner;
  for (int64_t r = 0; r < kTileRows; ++r) {
    uint16_t* probs = tiles.probs.data() + r * prob_width;
    int64_t visible = 0;
    if (r < rows) {
      float* row = tiles.scores.data() + r * score_width;
      visible = attention_visible_len(p, first + r);
      scores_to_probs(attention_score_row(p, first + r, row, nullptr, visible));
      bf16_values_to_bits(row, probs, visible);  // the probabilities are bf16 values here
    }
    // Positions a row does not see, and rows past the block's end, add nothing.
    std::fill(probs + visible, probs + key_chunks * kTileInner, uint16_t{0});
  }
  value_tiles(tiles, key_chunks, tiles.outputs.data());

  const int64_t output_width = tiles.value_blocks * kTileRows;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t out = (b * p.seq + first + r) * p.out_token_stride + h * p.out_head_stride;
    if (p.out_bf16 != nullptr) {
      f32_to_bf16_bits_rne(tiles.outputs.data() + r * output_width, p.out_bf16 + out, p.value_dim);
    } else {
      round_to_bf16_copy(tiles.outputs.data() + r * output_width, p.out + out, p.value_dim);
    }
  }
}

}  // namespace

bool attention_fast_amx_applies(const AttentionParams& p) {
  return p.round_to_bf16 && p.score_split == 0 && p.key_head_stride != 0 && p.value_head_stride != 0 &&
         p.key_tail_bf16 == nullptr && p.seq_start_pos == nullptr && p.latent_pages == nullptr && p.kv_shards == 1 &&
         p.lse == nullptr && p.seq >= kAmxMinQueryRows && cpu_isa() == CpuIsa::Amx && amx_tiles_permitted();
}

void attention_fast_amx(const AttentionParams& p) {
  TileConfig config;
  for (int tile = 0; tile < 8; ++tile) {
    config.rows[tile] = static_cast<uint8_t>(kTileRows);
    config.colsb[tile] = static_cast<uint16_t>(kTileBytes);
  }
  // Every row sees at most the positions the sequence's last query sees.
  const int64_t cols = attention_visible_len(p, p.seq - 1);
#pragma omp parallel
  {
    HeadTiles tiles(p, cols);
    amx_load_tile_config(config);
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t b = 0; b < p.batch; ++b) {
      for (int64_t h = 0; h < p.n_heads; ++h) {
        // Packing writes only real positions and dimensions: the padding stays zero.
        pack_keys(head_keys(p, b, h), cols, tiles);
        pack_values(head_values(p, b, h), cols, tiles);
        for (int64_t first = 0; first < p.seq; first += kTileRows) {
          attend_query_block(p, b, h, first, std::min(kTileRows, p.seq - first), tiles);
        }
      }
    }
    amx_release_tiles();
  }
}

#else  // a compiler without AMX intrinsics: attention_fast keeps its loops

bool attention_fast_amx_applies(const AttentionParams&) { return false; }
void attention_fast_amx(const AttentionParams&) {}

#endif

int64_t attention_fast_amx_workspace_bytes(const AttentionParams& p, int threads) {
  const TileCounts counts(p, attention_visible_len(p, p.seq - 1));
  return static_cast<int64_t>(threads) * (counts.bf16_values() * static_cast<int64_t>(sizeof(uint16_t)) +
                                          counts.fp32_values() * static_cast<int64_t>(sizeof(float)));
}

}  // namespace mla
