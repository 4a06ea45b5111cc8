// The op table: every kernel's cases (shapes, precisions, strides, odd sizes) written once, each
// run on every backend that has the op (the CPU at each ISA level that has its own code for it,
// and CUDA), and compared with its CPU twin at the portable level (plain loops) by a normalised
// error. tests/ops/test_op_table.cpp turns every (case, backend) pair into a test; one this
// machine cannot run is reported SKIPPED. MLA_OP_TIMING=N times each op alone N times and prints
// the median beside its twin's.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/paged_latent.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/skinny_linear.h"
#include "kernels/cpu/strided_copy.h"
#include "tests/ops/test_data.h"

namespace mla::test {

enum class OpBackend { CpuPortable, CpuAvx2, CpuAvx512, CpuAvx512Bf16, CpuAmx, Cuda };

const char* backend_name(OpBackend backend);  // "cpu-portable", ..., "cuda"
// Whether this machine runs `backend`: the CPU reports the ISA, or (cuda) the build has the CUDA
// backend and a device is visible.
bool backend_present(OpBackend backend);

// One run of an op: its output (bf16 results widened to float, indices as floats) and the median
// time of the op alone over the timed repetitions.
struct OpRun {
  std::vector<float> output;
  double median_ms = 0;
  // Where the output holds parts of different scales (an attention output and its log-sum-exps),
  // their lengths in order: each part is compared with the twin's by its own normalised error.
  // Empty: the whole output is one part.
  std::vector<size_t> parts;
};

// A row of the table before the backend is chosen.
struct OpCase {
  std::string op;     // "rmsnorm"
  std::string shape;  // "rows 7 dim 517 stride 530 bf16"
  std::vector<OpBackend> backends;
  double tolerance = 0;  // normalised error allowed against the twin; 0: bitwise equal
  std::function<OpRun(OpBackend backend, int reps)> run;
};

// Every case of every op.
const std::vector<OpCase>& op_table();

// Runs `op` reps times (at least once), `reset` before each, untimed; the median of the op's times.
double time_on_cpu(int reps, const std::function<void()>& reset, const std::function<void()>& op);

// ---- the cases, one struct per op ---------------------------------------------------------------

struct RmsNormCase {
  int64_t rows, dim, stride;
  bool bf16;
};

struct RopeCase {
  int64_t batch, seq, heads, vec_stride;
  int64_t offset;     // where the rotated part starts in each head's vector (q_pe after q_nope)
  int64_t start_pos;  // of the step's first token
  int64_t positions;  // the table's length
  int64_t rope_dim;
  bool yarn, bf16;
};

struct Fp8DequantCase {
  int64_t rows, cols;
  bool bf16;
};

struct KvCacheAppendCase {
  int64_t batch, seq, width, row_padding, capacity, start_pos;
};

// Rows appended through a shuffled block table to a paged pool of the given dtype, then read back
// (gathered, dequantized): the output is the gathered rows, then the pool's bytes.
struct PagedLatentCase {
  LatentDType dtype;
  int64_t latent_dim, rope_dim, page_size;
  std::vector<int64_t> lengths;  // positions appended per sequence
  // The rows taken through row_index: token i stores row 2 (n - 1 - i) + 1 of twice as many rows
  // (reversed, every other row left out), as a rank of a context group appends only its own.
  bool indexed = false;
};

struct StridedCopyCase {
  StridedCopyParams shape;  // src and dst left null: the runner sizes and fills them
};

struct Bf16ConvertCase {
  int64_t rows, cols, src_stride, rows_per_batch, src_batch_stride;
};

struct GemmCase {
  int64_t m, n, k, batch;
  bool transpose_a, transpose_b, shared_b;
  bool bf16;  // a bf16 linear layer, y = x W^T, fp32 accumulation
};

struct FiniteCheckCase {
  int64_t count;
  std::vector<int64_t> non_finite;  // where inf or NaN sit
};

struct SkinnyLinearCase {
  int64_t rows, out_features, in_features;
  WeightCodes codes;
  bool x_bf16;  // bf16 compute: x handed over as bf16 numbers (bf16 weights only)
};

// The bf16 layer's streamed decode projection (kernels/cuda/fp8_linear): fp8 codes with block
// scales, x holding bf16 values, against skinny_linear with the codes rounded to bf16.
struct Fp8LinearCase {
  int64_t rows, out_features, in_features;
};
struct Fp8LinearInputs {
  std::vector<float> x;  // [rows, in_features], bf16 values
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  int64_t scale_cols = 0;
};
Fp8LinearInputs fp8_linear_inputs(const Fp8LinearCase& c);

// The two layouts the layer uses: naive (keys and values per head) and absorb (one latent row per
// position shared by all heads, the value being its first value_dim entries).
struct AttentionCase {
  bool absorb;
  int64_t batch, seq, start_pos, heads;
  bool mask;
  bool bf16;
  // 0: the small defaults (absorb: latent 61 + rope 16, value = latent; naive: 40, value 24).
  int64_t main_dim = 0, rope_dim = 0, value_dim = 0;
};

// An attention case as host data; params points into the vectors.
struct AttentionData {
  std::vector<float> q, keys, values, mask, out;
  AttentionParams params;
};
AttentionData make_attention(const AttentionCase& c, uint32_t seed);

// The standard path's query chunk (0: the fast path) and, for decode over the shared cache,
// sequences per launch.
// How the GPU's fast path is handed the bf16 operands: as fp32 buffers (attention_fast_mma), or as
// bf16 buffers read in place by the flash kernel, the keys joined or with their last dimensions
// (k_pe) in a buffer of their own at another layout, or (shared keys) as a bf16 latent cache's
// pages in a shuffled pool, read through a block table.
enum class FlashOperands { None, Joined, TailApart, Pages };

struct AttentionRun {
  int64_t standard_chunk = 0;
  int64_t sequences = 1;
  FlashOperands flash = FlashOperands::None;
};

// Decode attention over a paged latent cache, the split-KV kernel (kernels/cuda/attention_decode)
// against attention_fast over the same stored rows: sequences at the given start positions with a
// few new tokens each, rows of `dtype` in a shuffled pool, one shard of a context-parallel group,
// the log-sum-exp beside the output.
struct DecodeAttentionCase {
  LatentDType dtype;
  int64_t latent_dim, rope_dim, page_size, heads;
  std::vector<int64_t> start_pos, new_tokens;
  int64_t shards = 1, shard = 0;
  bool bf16 = false;
  // How the CUDA kernel divides the keys: 0 as attention_decode_split chooses for this device, -1 one
  // block per sequence (no merge), else this many keys per split.
  int64_t keys_per_split = 0;
};

// A case as host data: the stored pool (written by the CPU's paged_latent_append), its block table,
// the per-sequence lists (start_pos, new_tokens, token_offset); params points into them.
struct DecodeAttentionData {
  std::vector<float> q, out, lse;
  std::vector<uint8_t> pool;
  std::vector<int32_t> block_table;
  std::vector<int64_t> lists;
  PagedLatentView cache;
  AttentionParams params;
  int64_t tokens = 0;
};
DecodeAttentionData make_decode_attention(const DecodeAttentionCase& c, uint32_t seed);
// The op's output as the table compares it, in three parts (OpRun::parts): the outputs, the
// log-sum-exps (0 for a row that saw no key), and a flag per row, 1 where it saw none (lse -inf).
OpRun decode_attention_output(const std::vector<float>& out, const std::vector<float>& lse);

// attention_merge: `parts` partial outputs of `rows` rows, some parts seeing no key (lse -inf).
struct AttentionMergeCase {
  int64_t parts, rows, dim;
  bool bf16;
  int64_t part_rows = 0;  // rows from part to part (0: rows); the rows past `rows` hold NaN
};
struct AttentionMergeInputs {
  std::vector<float> out, lse;
};
AttentionMergeInputs attention_merge_inputs(const AttentionMergeCase& c);

// The decode and merge rows of the table (tests/ops/op_table_decode.cpp).
void add_decode_attention_cases(std::vector<OpCase>& table);

#if MLA_HAVE_CUDA
// The CUDA side of each op (tests/ops/op_table_cuda.cpp): the same case, on the device.
OpRun run_cuda(const RmsNormCase& c, int reps);
OpRun run_cuda(const RopeCase& c, int reps);
OpRun run_cuda(const Fp8DequantCase& c, int reps);
OpRun run_cuda(const KvCacheAppendCase& c, int reps);
OpRun run_cuda(const PagedLatentCase& c, int reps);
OpRun run_cuda(const StridedCopyCase& c, int reps);
OpRun run_cuda(const Bf16ConvertCase& c, int reps);
OpRun run_cuda(const GemmCase& c, int reps);
OpRun run_cuda(const FiniteCheckCase& c, int reps);
OpRun run_cuda(const Fp8LinearCase& c, int reps);
OpRun run_cuda(const AttentionCase& c, uint32_t seed, const AttentionRun& how, int reps);
OpRun run_cuda(const DecodeAttentionCase& c, uint32_t seed, int reps);
OpRun run_cuda(const AttentionMergeCase& c, int reps);
#endif

// Inputs both sides of a case share.
std::vector<float> rmsnorm_input(const RmsNormCase& c);
std::vector<float> rmsnorm_weight(const RmsNormCase& c);
RopeTable rope_table(const RopeCase& c);
std::vector<float> rope_input(const RopeCase& c);
std::vector<uint8_t> fp8_codes(const Fp8DequantCase& c);
std::vector<float> fp8_scales(const Fp8DequantCase& c);
int64_t fp8_scale_cols(const Fp8DequantCase& c);
// A paged-latent case's rows [tokens, C + dr] (with an all-zero fp8 block and large values), its
// tokens' (sequence, position) lists, and its block table over a shuffled pool.
struct PagedLatentInputs {
  std::vector<float> rows;
  std::vector<int64_t> sequence, position;
  std::vector<int64_t> row_index;  // empty unless the case is indexed
  std::vector<int32_t> block_table;
  int64_t pages_per_sequence = 0;
  int64_t pool_bytes = 0;
};
PagedLatentInputs paged_latent_inputs(const PagedLatentCase& c);
std::vector<float> strided_copy_source(const StridedCopyCase& c);
std::vector<float> strided_copy_destination(const StridedCopyCase& c);
std::vector<float> bf16_convert_source(const Bf16ConvertCase& c);
std::vector<float> finite_check_values(const FiniteCheckCase& c);
// a [batch, rows, lda-strided] and b operands of a GEMM case (bf16 numbers for a bf16 case).
struct GemmInputs {
  std::vector<float> a, b;
  int64_t lda, ldb, ldc, a_size, b_size;
};
GemmInputs gemm_operands(const GemmCase& c);

}  // namespace mla::test
