// Float64 reference of docs/design.md's forward pass. Every step is a plain loop over the indices the spec
// names, so a reader can check it line by line against the spec.
#include "tests/reference/mla_reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <stdexcept>
#include <string>

namespace mla::ref {
namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("mla::ref: " + what);
}

void require_size(const std::vector<double>& v, int64_t expected, const char* name) {
  require(static_cast<int64_t>(v.size()) == expected,
          std::string(name) + " has " + std::to_string(v.size()) + " values, expected " + std::to_string(expected));
}

double dot(const double* a, const double* b, int64_t n) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// Masking rule of docs/design.md step 6, then softmax over t (step 7). scores holds t < end. Causal:
// the query at `position` sees t <= position; a mask row replaces that rule.
// A row that sees nothing (all -inf) yields NaN, as softmax over an empty set does in DeepSeek's code.
void mask_and_softmax(std::vector<double>& scores, int64_t position, int64_t end, const double* mask_row) {
  const double neg_inf = -std::numeric_limits<double>::infinity();
  for (int64_t t = 0; t < end; ++t) {
    if (mask_row == nullptr) {
      if (t > position) scores[t] = neg_inf;
    } else {
      scores[t] += mask_row[t];
    }
  }
  double max_score = neg_inf;
  for (int64_t t = 0; t < end; ++t) max_score = std::max(max_score, scores[t]);
  double sum = 0.0;
  for (int64_t t = 0; t < end; ++t) {
    scores[t] = std::exp(scores[t] - max_score);
    sum += scores[t];
  }
  for (int64_t t = 0; t < end; ++t) scores[t] /= sum;
}

}  // namespace

std::vector<double> linear(const std::vector<double>& x, int64_t rows, int64_t in_features,
                           const std::vector<double>& weight, int64_t out_features) {
  std::vector<double> y(rows * out_features, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out_features; ++o)
      y[r * out_features + o] = dot(&x[r * in_features], &weight[o * in_features], in_features);
  return y;
}

std::vector<double> rmsnorm(const std::vector<double>& x, int64_t rows, const std::vector<double>& weight, double eps) {
  const int64_t n = static_cast<int64_t>(weight.size());
  std::vector<double> y(rows * n);
  for (int64_t r = 0; r < rows; ++r) {
    const double* v = &x[r * n];
    const double mean_square = dot(v, v, n) / static_cast<double>(n);
    const double inv_rms = 1.0 / std::sqrt(mean_square + eps);
    for (int64_t i = 0; i < n; ++i) y[r * n + i] = v[i] * inv_rms * weight[i];
  }
  return y;
}

std::vector<double> rope_frequencies(const RefConfig& config) {
  const int64_t dr = config.qk_rope_head_dim;
  const double dr_d = static_cast<double>(dr);
  std::vector<double> freqs(dr / 2);
  for (int64_t i = 0; i < dr / 2; ++i) freqs[i] = std::pow(config.rope_theta, -2.0 * static_cast<double>(i) / dr_d);
  if (config.max_seq_len <= config.original_seq_len) return freqs;

  // YaRN (docs/design.md, RoPE and YaRN): dimensions that rotate fewer than beta_slow times over the original
  // context are interpolated by rope_factor, those rotating more than beta_fast times are kept.
  const double original = static_cast<double>(config.original_seq_len);
  auto corr = [&](double n_rotations) {
    return dr_d * std::log(original / (n_rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(config.rope_theta));
  };
  const double low = std::max(std::floor(corr(config.beta_fast)), 0.0);
  double high = std::min(std::ceil(corr(config.beta_slow)), dr_d - 1.0);
  if (low == high) high += 0.001;  // avoids 0/0 in the ramp, as DeepSeek's linear_ramp_factor does
  for (int64_t i = 0; i < dr / 2; ++i) {
    const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
    freqs[i] = freqs[i] / config.rope_factor * ramp + freqs[i] * (1.0 - ramp);
  }
  return freqs;
}

void rope_apply(double* pair_values, int64_t dr, int64_t position, const std::vector<double>& freqs) {
  for (int64_t i = 0; i < dr / 2; ++i) {
    const double angle = static_cast<double>(position) * freqs[i];
    const double c = std::cos(angle), s = std::sin(angle);
    const double re = pair_values[2 * i], im = pair_values[2 * i + 1];
    // (re + i im) * (cos + i sin): docs/design.md's "as a complex number".
    pair_values[2 * i] = re * c - im * s;
    pair_values[2 * i + 1] = re * s + im * c;
  }
}

double softmax_scale(const RefConfig& config) {
  const double dq = static_cast<double>(config.qk_nope_head_dim + config.qk_rope_head_dim);
  double scale = 1.0 / std::sqrt(dq);
  if (config.max_seq_len > config.original_seq_len) {
    const double m = 0.1 * config.mscale * std::log(config.rope_factor) + 1.0;
    scale *= m * m;
  }
  return scale;
}

double fp8_e4m3_value(uint8_t code) {
  const bool negative = (code & 0x80) != 0;
  const int exponent_bits = (code >> 3) & 0xf;
  const int mantissa_bits = code & 0x7;
  // e4m3fn ("finite"): the all-ones exponent still holds normal numbers, except S.1111.111 = NaN.
  if (exponent_bits == 0xf && mantissa_bits == 0x7) return std::numeric_limits<double>::quiet_NaN();
  double magnitude;
  if (exponent_bits == 0) {
    magnitude = std::ldexp(static_cast<double>(mantissa_bits) / 8.0, 1 - 7);  // subnormal
  } else {
    magnitude = std::ldexp(1.0 + static_cast<double>(mantissa_bits) / 8.0, exponent_bits - 7);
  }
  return negative ? -magnitude : magnitude;
}

double round_to_bf16(double value) {
  if (value == 0.0 || !std::isfinite(value)) return value;
  int exponent = 0;
  const double mantissa = std::frexp(value, &exponent);  // |mantissa| in [0.5, 1)
  // 8 significant bits: the mantissa scaled to [128, 256), rounded to an integer, ties to even.
  return std::ldexp(std::nearbyint(std::ldexp(mantissa, 8)), exponent - 8);
}

std::vector<double> fp8_dequant(const std::vector<uint8_t>& codes, int64_t rows, int64_t cols,
                                const std::vector<float>& scale, bool round_to_bf16_values) {
  const int64_t scale_cols = (cols + 127) / 128;
  const int64_t scale_rows = (rows + 127) / 128;
  require(static_cast<int64_t>(codes.size()) == rows * cols, "fp8 codes size != rows*cols");
  require(static_cast<int64_t>(scale.size()) == scale_rows * scale_cols,
          "fp8 scale size != ceil(rows/128)*ceil(cols/128)");
  std::vector<double> w(rows * cols);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j)
      w[i * cols + j] =
          fp8_e4m3_value(codes[i * cols + j]) * static_cast<double>(scale[(i / 128) * scale_cols + j / 128]);
  // DeepSeek's weight_dequant multiplies in fp32 and stores bf16: the product is rounded to fp32
  // first (the only rounding of the exact product), then to bf16.
  if (round_to_bf16_values)
    for (double& value : w) value = round_to_bf16(static_cast<float>(value));
  return w;
}

double relative_l2(const float* got, const std::vector<double>& want) {
  double diff_sq = 0.0, want_sq = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    diff_sq += d * d;
    want_sq += want[i] * want[i];
  }
  if (want_sq == 0.0) return diff_sq == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
  return std::sqrt(diff_sq / want_sq);
}

RefMla::RefMla(const RefConfig& config, const RefWeights& weights, int64_t batch, RefFormulation formulation)
    : cfg_(config), w_(weights), batch_(batch), formulation_(formulation) {
  const RefConfig& c = cfg_;
  require(c.dim > 0 && c.n_heads > 0 && c.kv_lora_rank > 0 && c.qk_nope_head_dim > 0 && c.qk_rope_head_dim > 0 &&
              c.v_head_dim > 0 && c.max_seq_len > 0 && batch > 0,
          "dims, max_seq_len and batch must be positive");
  require(c.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim must be even (rope rotates pairs)");
  require(c.q_lora_rank >= 0, "q_lora_rank must be >= 0");
  const int64_t D = c.dim, H = c.n_heads, C = c.kv_lora_rank, dr = c.qk_rope_head_dim;
  const int64_t dq = c.qk_nope_head_dim + dr, dn = c.qk_nope_head_dim, dv = c.v_head_dim;
  if (c.q_lora_rank == 0) {
    require_size(w_.wq, H * dq * D, "wq");
  } else {
    require_size(w_.wq_a, c.q_lora_rank * D, "wq_a");
    require_size(w_.q_norm, c.q_lora_rank, "q_norm");
    require_size(w_.wq_b, H * dq * c.q_lora_rank, "wq_b");
  }
  require_size(w_.wkv_a, (C + dr) * D, "wkv_a");
  require_size(w_.kv_norm, C, "kv_norm");
  require_size(w_.wkv_b, H * (dn + dv) * C, "wkv_b");
  require_size(w_.wo, D * H * dv, "wo");

  freqs_ = rope_frequencies(c);
  scale_ = softmax_scale(c);
  const int64_t slots = batch * c.max_seq_len;
  if (formulation_ == RefFormulation::Naive) {
    k_cache_.assign(slots * H * dq, 0.0);
    v_cache_.assign(slots * H * dv, 0.0);
  } else {
    cn_cache_.assign(slots * C, 0.0);
    kpe_cache_.assign(slots * dr, 0.0);
  }
}

RefMla::Projected RefMla::project(const std::vector<double>& x, const std::vector<TokenPlace>& places) const {
  const int64_t D = cfg_.dim, H = cfg_.n_heads, C = cfg_.kv_lora_rank, dr = cfg_.qk_rope_head_dim;
  const int64_t dn = cfg_.qk_nope_head_dim, dq = dn + dr, rows = static_cast<int64_t>(places.size());
  Projected p;
  // Step 1: q [tokens, H*dq], each head [dn nope, dr rope].
  if (cfg_.q_lora_rank == 0) {
    p.q = linear(x, rows, D, w_.wq, H * dq);
  } else {
    const std::vector<double> q_a = linear(x, rows, D, w_.wq_a, cfg_.q_lora_rank);
    p.q = linear(rmsnorm(q_a, rows, w_.q_norm), rows, cfg_.q_lora_rank, w_.wq_b, H * dq);
  }
  // Step 3: kv [tokens, C + dr] = [c, k_pe].
  const std::vector<double> kv = linear(x, rows, D, w_.wkv_a, C + dr);
  std::vector<double> c(rows * C);
  p.k_pe.resize(rows * dr);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < C; ++i) c[r * C + i] = kv[r * (C + dr) + i];
    for (int64_t i = 0; i < dr; ++i) p.k_pe[r * dr + i] = kv[r * (C + dr) + C + i];
  }
  // Steps 2 and 3, each token at its own position.
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t pos = places[r].position;
    for (int64_t h = 0; h < H; ++h) rope_apply(&p.q[(r * H + h) * dq + dn], dr, pos, freqs_);
    rope_apply(&p.k_pe[r * dr], dr, pos, freqs_);
  }
  // Step 4.
  p.c_n = rmsnorm(c, rows, w_.kv_norm);
  quantize_for_cache(p);
  return p;
}

void RefMla::quantize_for_cache(Projected& p) const {
  if (cfg_.cache_dtype == RefCacheDType::Exact) return;
  const int64_t C = cfg_.kv_lora_rank;
  for (double& value : p.k_pe) value = round_to_bf16(static_cast<float>(value));
  if (cfg_.cache_dtype == RefCacheDType::BF16) {
    for (double& value : p.c_n) value = round_to_bf16(static_cast<float>(value));
    return;
  }
  const int64_t rows = static_cast<int64_t>(p.c_n.size()) / C;
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<double> row = fp8_latent_row(&p.c_n[r * C], C);
    std::copy(row.begin(), row.end(), p.c_n.begin() + r * C);
  }
}

void RefMla::store_naive(const Projected& p, const std::vector<TokenPlace>& places) {
  const int64_t H = cfg_.n_heads, C = cfg_.kv_lora_rank, dr = cfg_.qk_rope_head_dim;
  const int64_t dn = cfg_.qk_nope_head_dim, dv = cfg_.v_head_dim, dq = dn + dr;
  for (size_t r = 0; r < places.size(); ++r) {
    const int64_t slot = places[r].slot * cfg_.max_seq_len + places[r].position;
    const double* cn = &p.c_n[r * C];
    for (int64_t h = 0; h < H; ++h) {
      // docs/design.md, Weights: head h's wkv_b rows are [dn rows of Wk[h], dv rows of Wv[h]].
      const double* wk = &w_.wkv_b[(h * (dn + dv)) * C];
      const double* wv = &w_.wkv_b[(h * (dn + dv) + dn) * C];
      double* k = &k_cache_[(slot * H + h) * dq];
      double* v = &v_cache_[(slot * H + h) * dv];
      for (int64_t d = 0; d < dn; ++d) k[d] = dot(&wk[d * C], cn, C);
      for (int64_t d = 0; d < dr; ++d) k[dn + d] = p.k_pe[r * dr + d];  // shared by all heads
      for (int64_t d = 0; d < dv; ++d) v[d] = dot(&wv[d * C], cn, C);
    }
  }
}

void RefMla::store_absorb(const Projected& p, const std::vector<TokenPlace>& places) {
  const int64_t C = cfg_.kv_lora_rank, dr = cfg_.qk_rope_head_dim;
  for (size_t r = 0; r < places.size(); ++r) {
    const int64_t slot = places[r].slot * cfg_.max_seq_len + places[r].position;
    for (int64_t i = 0; i < C; ++i) cn_cache_[slot * C + i] = p.c_n[r * C + i];
    for (int64_t i = 0; i < dr; ++i) kpe_cache_[slot * dr + i] = p.k_pe[r * dr + i];
  }
}

std::vector<double> RefMla::attend_naive(const Projected& p, const std::vector<TokenPlace>& places,
                                         const std::vector<double>* mask) const {
  const int64_t H = cfg_.n_heads, dq = cfg_.qk_nope_head_dim + cfg_.qk_rope_head_dim;
  const int64_t dv = cfg_.v_head_dim, rows = static_cast<int64_t>(places.size());
  std::vector<double> o(rows * H * dv, 0.0);
  std::vector<double> probs(cfg_.max_seq_len);
  for (int64_t r = 0; r < rows; ++r) {
    const TokenPlace& place = places[r];
    const int64_t first_slot = place.slot * cfg_.max_seq_len;
    const double* mask_row = place.mask_row >= 0 ? mask->data() + place.mask_row * place.end : nullptr;
    for (int64_t h = 0; h < H; ++h) {
      const double* q = &p.q[(r * H + h) * dq];
      for (int64_t t = 0; t < place.end; ++t)  // step 5, naive
        probs[t] = scale_ * dot(q, &k_cache_[((first_slot + t) * H + h) * dq], dq);
      mask_and_softmax(probs, place.position, place.end, mask_row);
      double* out = &o[(r * H + h) * dv];
      for (int64_t t = 0; t < place.end; ++t) {  // step 8, naive
        const double* v = &v_cache_[((first_slot + t) * H + h) * dv];
        for (int64_t d = 0; d < dv; ++d) out[d] += probs[t] * v[d];
      }
    }
  }
  return o;
}

std::vector<double> RefMla::attend_absorb(const Projected& p, const std::vector<TokenPlace>& places,
                                          const std::vector<double>* mask) const {
  const int64_t H = cfg_.n_heads, C = cfg_.kv_lora_rank, dr = cfg_.qk_rope_head_dim;
  const int64_t dn = cfg_.qk_nope_head_dim, dv = cfg_.v_head_dim, dq = dn + dr;
  const int64_t rows = static_cast<int64_t>(places.size());
  std::vector<double> o(rows * H * dv, 0.0);
  std::vector<double> probs(cfg_.max_seq_len), q_lat(C), o_lat(C);
  for (int64_t r = 0; r < rows; ++r) {
    const TokenPlace& place = places[r];
    const int64_t first_slot = place.slot * cfg_.max_seq_len;
    const double* mask_row = place.mask_row >= 0 ? mask->data() + place.mask_row * place.end : nullptr;
    for (int64_t h = 0; h < H; ++h) {
      const double* q_nope = &p.q[(r * H + h) * dq];
      const double* q_pe = q_nope + dn;
      const double* wk = &w_.wkv_b[(h * (dn + dv)) * C];
      const double* wv = &w_.wkv_b[(h * (dn + dv) + dn) * C];
      // Step 5, absorb: q_lat = Wk[h]^T q_nope, Wk[h] being [dn, C].
      std::fill(q_lat.begin(), q_lat.end(), 0.0);
      for (int64_t d = 0; d < dn; ++d)
        for (int64_t i = 0; i < C; ++i) q_lat[i] += wk[d * C + i] * q_nope[d];
      for (int64_t t = 0; t < place.end; ++t) {
        const int64_t slot = first_slot + t;
        probs[t] = scale_ * (dot(q_lat.data(), &cn_cache_[slot * C], C) + dot(q_pe, &kpe_cache_[slot * dr], dr));
      }
      mask_and_softmax(probs, place.position, place.end, mask_row);
      // Step 8, absorb: o_lat = sum_t p c_n[t], then o = Wv[h] o_lat.
      std::fill(o_lat.begin(), o_lat.end(), 0.0);
      for (int64_t t = 0; t < place.end; ++t) {
        const double* cn = &cn_cache_[(first_slot + t) * C];
        for (int64_t i = 0; i < C; ++i) o_lat[i] += probs[t] * cn[i];
      }
      double* out = &o[(r * H + h) * dv];
      for (int64_t d = 0; d < dv; ++d) out[d] = dot(&wv[d * C], o_lat.data(), C);
    }
  }
  return o;
}

std::vector<double> RefMla::forward_tokens(const std::vector<double>& x, const std::vector<TokenPlace>& places,
                                           const std::vector<double>* mask) {
  const int64_t tokens = static_cast<int64_t>(places.size());
  require_size(x, tokens * cfg_.dim, "x");
  const Projected p = project(x, places);
  std::vector<double> o;
  if (formulation_ == RefFormulation::Naive) {
    store_naive(p, places);
    o = attend_naive(p, places, mask);
  } else {
    store_absorb(p, places);
    o = attend_absorb(p, places, mask);
  }
  // Step 9: this slice's partial output, before the all-reduce.
  return linear(o, tokens, cfg_.n_heads * cfg_.v_head_dim, w_.wo, cfg_.dim);
}

std::vector<double> RefMla::forward(const std::vector<double>& x, int64_t seq, int64_t start_pos,
                                    const std::vector<double>* mask) {
  require(seq > 0 && start_pos >= 0, "seq must be > 0 and start_pos >= 0");
  require(start_pos + seq <= cfg_.max_seq_len, "start_pos + seq exceeds max_seq_len");
  require_size(x, batch_ * seq * cfg_.dim, "x");
  if (mask != nullptr) require_size(*mask, seq * (start_pos + seq), "mask");
  std::vector<TokenPlace> places;
  for (int64_t b = 0; b < batch_; ++b) {
    for (int64_t s = 0; s < seq; ++s) places.push_back({b, start_pos + s, start_pos + seq, mask != nullptr ? s : -1});
  }
  return forward_tokens(x, places, mask);
}

std::vector<double> RefMla::forward_ragged(const std::vector<double>& x,
                                           const std::vector<RefSequenceStep>& sequences) {
  std::vector<TokenPlace> places;
  for (const RefSequenceStep& sequence : sequences) {
    require(sequence.slot >= 0 && sequence.slot < batch_, "slot outside the batch");
    require(sequence.start_pos >= 0 && sequence.new_tokens >= 0 &&
                sequence.start_pos + sequence.new_tokens <= cfg_.max_seq_len,
            "a sequence's positions exceed max_seq_len");
    const int64_t end = sequence.start_pos + sequence.new_tokens;
    for (int64_t s = 0; s < sequence.new_tokens; ++s)
      places.push_back({sequence.slot, sequence.start_pos + s, end, -1});
  }
  require(!places.empty(), "a step with no tokens");
  return forward_tokens(x, places, nullptr);
}

std::vector<double> fp8_latent_row(const double* values, int64_t count) {
  // The finite e4m3 magnitudes, codes 0 .. 126 in increasing order.
  std::vector<double> magnitudes(127);
  for (int code = 0; code < 127; ++code) magnitudes[code] = fp8_e4m3_value(static_cast<uint8_t>(code));
  std::vector<double> out(static_cast<size_t>(count));
  for (int64_t begin = 0; begin < count; begin += 128) {
    const int64_t end = std::min(count, begin + 128);
    float max_abs = 0.0f;
    for (int64_t i = begin; i < end; ++i) max_abs = std::max(max_abs, std::fabs(static_cast<float>(values[i])));
    const float scale = max_abs > 0.0f ? max_abs / 448.0f : 1.0f;
    for (int64_t i = begin; i < end; ++i) {
      const float scaled = static_cast<float>(values[i]) / scale;
      const double target = std::fabs(static_cast<double>(scaled));
      int best = 0;
      for (int code = 1; code < 127; ++code) {
        const double distance = std::fabs(magnitudes[code] - target);
        const double best_distance = std::fabs(magnitudes[best] - target);
        if (distance < best_distance || (distance == best_distance && code % 2 == 0)) best = code;
      }
      const double magnitude = magnitudes[best] * static_cast<double>(scale);
      out[i] = scaled < 0.0f ? -magnitude : magnitude;
    }
  }
  return out;
}

}  // namespace mla::ref
