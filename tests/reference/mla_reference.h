// Float64 reference of one MLA layer on one rank, written from the design card's specification
// alone (docs/design.md restates it) and, where it leaves a detail, from DeepSeek-V3's
// inference/model.py. Plain loops, no BLAS: it exists to be obviously right, so that the fast
// CPU/CUDA code can be checked against it (docs/design.md, Precision and tolerances).
#pragma once

#include <cstdint>
#include <vector>

namespace mla::ref {

// How the latent cache keeps c_n and k_pe (docs/design.md, The latent cache): exactly, rounded to
// bf16, or c_n as e4m3 codes with one fp32 scale per 128 values and k_pe as bf16.
enum class RefCacheDType { Exact, BF16, FP8 };

struct RefConfig {               // DeepSeek ModelArgs names
  int64_t dim = 0, n_heads = 0;  // n_heads = the heads these weights hold (a rank's slice or all)
  int64_t q_lora_rank = 0;       // 0: plain wq
  int64_t kv_lora_rank = 0, qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  int64_t max_seq_len = 0, original_seq_len = 4096;
  double rope_theta = 10000.0, rope_factor = 40.0, beta_fast = 32.0, beta_slow = 1.0, mscale = 1.0;
  RefCacheDType cache_dtype = RefCacheDType::Exact;
};

// One sequence of a ragged step: its cache slot (a batch row of this object's cache), its start
// position and its new tokens (0: idle).
struct RefSequenceStep {
  int64_t slot = 0, start_pos = 0, new_tokens = 0;
};

struct RefWeights {  // row-major [out_features, in_features], linear y = x W^T; unused ones empty
  std::vector<double> wq, wq_a, q_norm, wq_b, wkv_a, kv_norm, wkv_b, wo;
};

enum class RefFormulation { Naive, Absorb };

class RefMla {
 public:
  // Throws std::invalid_argument when a weight's size does not match the config.
  RefMla(const RefConfig& config, const RefWeights& weights, int64_t batch, RefFormulation formulation);

  // x: [batch, seq, dim] row-major. start_pos: tokens already in this object's cache. mask ==
  // nullptr: causal (query at start_pos+s sees t <= start_pos+s). Otherwise an additive mask
  // [seq, start_pos+seq] row-major added to the scores, replacing the causal rule.
  // Returns this slice's partial y [batch, seq, dim] (docs/design.md step 9, before the all-reduce).
  // Throws std::invalid_argument when x's size, start_pos or the cache capacity do not fit.
  std::vector<double> forward(const std::vector<double>& x, int64_t seq, int64_t start_pos,
                              const std::vector<double>* mask = nullptr);
  // A ragged step (docs/design.md, Serving-shaped steps): x holds the sequences' new tokens
  // packed in order, [sum of new_tokens, dim]; returns the partial y in the same order. Causal.
  std::vector<double> forward_ragged(const std::vector<double>& x, const std::vector<RefSequenceStep>& sequences);

 private:
  // Where each token of a call sits, and what it sees: positions t < end, and t <= position
  // unless a mask row (mask_row >= 0, row mask_row of the [S, end] mask) replaces the causal rule.
  struct TokenPlace {
    int64_t slot = 0, position = 0, end = 0, mask_row = -1;
  };
  // Per-token projections shared by both formulations (docs/design.md steps 1-4), each [tokens, ...].
  struct Projected {
    std::vector<double> q;     // [tokens, H, dq], q_pe already rotated
    std::vector<double> c_n;   // [tokens, C], as the cache keeps it
    std::vector<double> k_pe;  // [tokens, dr], rotated, as the cache keeps it
  };
  std::vector<double> forward_tokens(const std::vector<double>& x, const std::vector<TokenPlace>& places,
                                     const std::vector<double>* mask);
  Projected project(const std::vector<double>& x, const std::vector<TokenPlace>& places) const;
  // c_n and k_pe as cfg_.cache_dtype keeps them.
  void quantize_for_cache(Projected& p) const;
  void store_naive(const Projected& p, const std::vector<TokenPlace>& places);
  void store_absorb(const Projected& p, const std::vector<TokenPlace>& places);
  // Attention output o [tokens, H, dv] for the tokens in p (docs/design.md steps 5-8).
  std::vector<double> attend_naive(const Projected& p, const std::vector<TokenPlace>& places,
                                   const std::vector<double>* mask) const;
  std::vector<double> attend_absorb(const Projected& p, const std::vector<TokenPlace>& places,
                                    const std::vector<double>* mask) const;

  RefConfig cfg_;
  RefWeights w_;
  int64_t batch_;
  RefFormulation formulation_;
  std::vector<double> freqs_;
  double scale_;
  // Naive caches: k [B, max_seq_len, H, dq], v [B, max_seq_len, H, dv].
  // Absorb caches: c_n [B, max_seq_len, C], k_pe [B, max_seq_len, dr]. The runtime keeps one
  // cache of [c_n | k_pe] for both formulations (docs/design.md); these are DeepSeek's.
  std::vector<double> k_cache_, v_cache_, cn_cache_, kpe_cache_;
};

// rmsnorm(v, w) = v * rsqrt(mean(v^2) + eps) * w, per row of length weight.size() (docs/design.md step 4).
std::vector<double> rmsnorm(const std::vector<double>& x, int64_t rows, const std::vector<double>& weight,
                            double eps = 1e-6);
// f_i for i < dr/2, YaRN applied when max_seq_len > original_seq_len (docs/design.md, RoPE and YaRN).
std::vector<double> rope_frequencies(const RefConfig& config);
// Interleaved pairs (x[2i], x[2i+1]) rotated by angle position * f_i, in place.
void rope_apply(double* pair_values, int64_t dr, int64_t position, const std::vector<double>& freqs);
// dq^-0.5, times mscale'^2 when YaRN is active (docs/design.md, Shapes and symbols).
double softmax_scale(const RefConfig& config);
// float8 e4m3fn: bias 7, no infinities, 0x7f/0xff NaN, max finite 448.
double fp8_e4m3_value(uint8_t code);
// W[i][j] = value(codes[i][j]) * scale[i/128][j/128]; scale [ceil(rows/128), ceil(cols/128)].
// round_to_bf16 (docs/design.md's default, weights.fp8_dequant: bf16): each W[i][j], computed in fp32 as
// DeepSeek's weight_dequant computes it, rounded to the nearest bf16 number, ties to even.
std::vector<double> fp8_dequant(const std::vector<uint8_t>& codes, int64_t rows, int64_t cols,
                                const std::vector<float>& scale, bool round_to_bf16 = false);
// The nearest bf16 number (8 significant bits, ties to even) to a finite normal value.
double round_to_bf16(double value);
// docs/design.md's fp8 latent rule on one row of c_n, computed in fp32 as the runtime does: per
// block of 128 values scale = max|block| / 448 (1 for zeros), code = the nearest e4m3 value to
// value / scale (ties to the even code, saturated at 448); returns code * scale.
std::vector<double> fp8_latent_row(const double* values, int64_t count);
// ||got - want||_2 / ||want||_2 over want.size() values; 0 when both are zero, +inf when only want is.
double relative_l2(const float* got, const std::vector<double>& want);

// y [rows, out] = x [rows, in] W^T with W [out, in] row-major.
std::vector<double> linear(const std::vector<double>& x, int64_t rows, int64_t in_features,
                           const std::vector<double>& weight, int64_t out_features);

}  // namespace mla::ref
