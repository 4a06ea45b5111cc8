#include "runtime/layer/mla_layer_cuda.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <vector>

#include "kernels/cpu/bf16.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/attention_decode.h"
#include "kernels/cuda/attention_fast.h"
#include "kernels/cuda/attention_flash.h"
#include "kernels/cuda/attention_merge.h"
#include "kernels/cuda/attention_standard.h"
#include "kernels/cuda/bf16_convert.h"
#include "kernels/cuda/fp8_linear.h"
#include "kernels/cuda/kv_cache_append.h"
#include "kernels/cuda/paged_latent.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/strided_copy.h"
#include "runtime/base/errors.h"
#include "runtime/base/units.h"
#include "runtime/layer/attention_layout.h"
#include "runtime/layer/backend.h"

namespace mla {

namespace {

DeviceMatrix upload_matrix(const std::vector<float>& host, int64_t rows, int64_t cols, bool bf16, cudaStream_t stream) {
  DeviceMatrix matrix;
  matrix.rows = rows;
  matrix.cols = cols;
  if (host.empty()) return matrix;
  if (static_cast<int64_t>(host.size()) != rows * cols) {
    throw std::invalid_argument("CudaMlaLayer: a weight holds " + std::to_string(host.size()) + " values, expected " +
                                std::to_string(rows) + " x " + std::to_string(cols));
  }
  if (bf16) {
    // In bf16 mode the loader already rounded every weight to bf16, so this conversion is exact.
    std::vector<uint16_t> bits(host.size());
    for (size_t i = 0; i < host.size(); ++i) bits[i] = f32_to_bf16_bits(host[i]);
    matrix.bf16 = DeviceBuffer<__nv_bfloat16>(rows * cols);
    CUDA_CHECK(cudaMemcpyAsync(matrix.bf16.data(), bits.data(), bits.size() * sizeof(uint16_t), cudaMemcpyHostToDevice,
                               stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));  // `bits` goes out of scope
  } else {
    matrix.f32 = DeviceBuffer<float>(rows * cols);
    matrix.f32.upload(host, stream);
  }
  return matrix;
}

// The split-KV kernel's params for the step's sequences, their lists uploaded, over `view`.
AttentionParams ragged_latent_params(const ModelArgs& model, const RaggedIndex& index, int64_t heads, bool round_bf16,
                                     const float* q_absorbed, float* out, const PagedLatentView& view,
                                     const int64_t* sequence_lists) {
  AttentionStep step;
  step.n_heads = heads;
  step.round_to_bf16 = round_bf16;
  step.ragged = &index;
  AttentionParams p = absorb_attention_params(model, step, q_absorbed, nullptr, out);
  p.latent_pages = &view;
  const int64_t sequences = index.sequences();
  p.seq_start_pos = sequence_lists;
  p.seq_new_tokens = sequence_lists + sequences;
  p.seq_token_offset = sequence_lists + 2 * sequences;
  return p;
}

}  // namespace

std::string CudaMemoryReport::describe() const {
  return format_bytes(static_cast<double>(total())) + " (weights " + format_bytes(static_cast<double>(weights_bytes)) +
         ", kv cache " + format_bytes(static_cast<double>(kv_cache_bytes)) + ", activations " +
         format_bytes(static_cast<double>(activation_bytes)) + ", attention workspace " +
         format_bytes(static_cast<double>(attention_workspace_bytes)) + ", cuBLAS workspace " +
         format_bytes(static_cast<double>(cublas_workspace_bytes)) + ")";
}

const void* DeviceMatrix::at_row(int64_t row) const {
  if (is_bf16()) return bf16.data() + row * cols;
  return f32.data() + row * cols;
}

int64_t DeviceMatrix::bytes_read(int64_t step_rows) const {
  if (streams_fp8() && step_rows <= kFp8LinearMaxRows)
    return static_cast<int64_t>(fp8_codes.bytes() + fp8_scales.bytes());
  return static_cast<int64_t>(f32.bytes() + bf16.bytes());
}

namespace {

// A kernel choice that a variable turns off for comparison: unset or 1 on, 0 off, else refused.
// MLA_CUDA_FP8_STREAM=0 keeps every projection on cuBLAS over the bf16 copy (what streaming is
// measured against); MLA_CUDA_FLASH=0 gives the naive formulation's fast path fp32 keys and
// values and the kernel that keeps a row's scores in shared memory (attention_fast_mma).
bool kernel_switch(const char* variable) {
  const char* value = std::getenv(variable);
  if (value == nullptr || std::string(value) == "1") return true;
  if (std::string(value) == "0") return false;
  throw UserError(std::string(variable) + ": expected 0 or 1, got '" + value + "'");
}

// Whether bf16 steps on the fast path can take the flash kernels with this model's widths
// (kernels/cuda/attention_flash): naive over bf16 keys and values read in place (naive_flash_fits),
// absorb over the cache's bf16 rows read through the block tables (absorb_flash_fits).
bool naive_flash_fits(const ModelArgs& model) {
  AttentionParams probe;
  probe.round_to_bf16 = true;
  probe.score_dim = model.qk_head_dim();
  probe.value_dim = model.v_head_dim;
  return attention_flash_applies(probe);
}

bool absorb_flash_fits(const ModelArgs& model) {
  PagedLatentView rows;
  rows.dtype = LatentDType::BF16;
  rows.latent_dim = model.kv_lora_rank;
  rows.rope_dim = model.qk_rope_head_dim;
  AttentionParams probe;
  probe.round_to_bf16 = true;
  probe.latent_pages = &rows;
  probe.score_dim = rows.row_width();
  probe.score_split = model.kv_lora_rank;
  probe.value_dim = model.kv_lora_rank;
  return attention_flash_applies(probe);
}

// Sequence b's rows of a step's view: its block-table row as the view's first.
PagedLatentView sequence_pages(const PagedLatentView& view, int64_t b) {
  PagedLatentView pages = view;
  pages.block_table += b * view.block_table_stride;
  return pages;
}

// bf16 compute on an fp8 weight: its codes and scales beside the bf16 copy, for decode steps to
// stream (kernels/cuda/fp8_linear). A shape the kernel does not take keeps the bf16 copy only.
void attach_fp8_codes(DeviceMatrix& matrix, const LayerWeights& weights, const char* name, cudaStream_t stream) {
  const auto found = weights.fp8.find(name);
  if (found == weights.fp8.end() || !matrix.is_bf16() || !fp8_linear_fits(matrix.rows, matrix.cols)) return;
  const Fp8Weight& fp8 = found->second;
  const int64_t scale_rows = (matrix.rows + 127) / 128;
  if (!fp8.round_to_bf16 || static_cast<int64_t>(fp8.codes.size()) != matrix.rows * matrix.cols ||
      static_cast<int64_t>(fp8.scales.size()) != scale_rows * fp8.scale_cols || fp8.scale_cols * 128 < matrix.cols) {
    throw std::invalid_argument(std::string("CudaMlaLayer: the fp8 codes or scales of ") + name +
                                " do not match its bf16 values");
  }
  const std::vector<uint8_t> packed = fp8_linear_pack(fp8.codes.data(), matrix.rows, matrix.cols);
  matrix.fp8_codes = DeviceBuffer<uint8_t>(static_cast<int64_t>(packed.size()));
  matrix.fp8_codes.upload(packed, stream);
  matrix.fp8_scales = DeviceBuffer<float>(static_cast<int64_t>(fp8.scales.size()));
  matrix.fp8_scales.upload(fp8.scales, stream);
  matrix.fp8_scale_cols = fp8.scale_cols;
  CUDA_CHECK(cudaStreamSynchronize(stream));  // `packed` goes out of scope
}

}  // namespace

CudaMlaLayer::CudaMlaLayer(const ModelArgs& model, const HeadShard& shard, const LayerWeights& weights,
                           const RunConfig& run, const CudaLayerLimits& limits, int64_t context_shards)
    : model_(model),
      shard_(shard),
      run_(run),
      limits_(limits),
      round_bf16_(run.compute_dtype == ComputeDType::BF16),
      latent_width_(model.kv_lora_rank + model.qk_rope_head_dim),
      context_shards_(context_shards),
      // run.kv_cache.dtype auto stores the compute dtype, as on the CPU: bf16 rows in bf16 compute
      // (half the bytes a decode step reads), fp32 rows in fp32 compute.
      cache_(latent_cache_shape(model, run.kv_cache, run.compute_dtype == ComputeDType::BF16, context_shards),
             LatentCachePool::External) {
  if (limits.max_batch < 1 || limits.max_batch > model.max_batch_size || limits.max_step_len < 1 ||
      limits.max_kv_len < limits.max_step_len || limits.max_kv_len > model.max_seq_len ||
      (limits.max_step_tokens != 0 && limits.max_step_tokens < limits.max_step_len)) {
    throw std::invalid_argument("CudaMlaLayer: limits (batch " + std::to_string(limits.max_batch) + ", step " +
                                std::to_string(limits.max_step_len) + ", kv " + std::to_string(limits.max_kv_len) +
                                ", step tokens " + std::to_string(limits.max_step_tokens) +
                                ") do not fit the model's cache, or a step's tokens are fewer than a sequence's");
  }
  if (context_shards < 1) {
    throw std::invalid_argument("CudaMlaLayer: context_shards " + std::to_string(context_shards));
  }
  stream_fp8_ = kernel_switch("MLA_CUDA_FP8_STREAM");
  const bool flash = round_bf16_ && kernel_switch("MLA_CUDA_FLASH") && run.attention != AttentionChoice::Standard &&
                     context_shards == 1;
  flash_naive_ = flash && run.formulation != FormulationChoice::Absorb && naive_flash_fits(model);
  flash_absorb_ = flash && run.formulation != FormulationChoice::Naive && cache_.shape().dtype == LatentDType::BF16 &&
                  absorb_flash_fits(model);
  if (context_shards > 1) {
    check_cuda_context_split(run, context_shards);
    if (limits.mask) throw std::invalid_argument("CudaMlaLayer: an explicit mask with a cache split over a group");
    group_heads_ = context_group_heads(shard, context_shards);
    group_heads_max_ = *std::max_element(group_heads_.begin(), group_heads_.end());
  }
  // The fast-path kernels that keep a row's scores on chip bound its kv_len; the flash kernel has
  // no bound.
  int64_t widest_score = 0;
  if (run.formulation != FormulationChoice::Naive && !flash_absorb_) widest_score = latent_width_;
  if (run.formulation != FormulationChoice::Absorb && !flash_naive_) {
    widest_score = std::max(widest_score, model.qk_head_dim());
  }
  if (run.attention != AttentionChoice::Standard && context_shards == 1 && widest_score > 0) {
    const int64_t on_chip = attention_fast_max_kv_len(widest_score);
    if (std::min(run.fast_path_max_len, limits.max_kv_len) > on_chip) {
      throw UserError("run.fast_path_max_len: " + std::to_string(run.fast_path_max_len) +
                      " positions of fp32 scores do not fit this GPU's shared memory (at most " +
                      std::to_string(on_chip) + " for a score vector of " + std::to_string(widest_score) +
                      " values); lower it, or use run.attention: standard");
    }
  }
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  try {
    CUDA_CHECK(cudaEventCreate(&attention_begin_));
    CUDA_CHECK(cudaEventCreate(&attention_end_));
    allocate(weights);
  } catch (...) {
    if (attention_begin_ != nullptr) cudaEventDestroy(attention_begin_);
    if (attention_end_ != nullptr) cudaEventDestroy(attention_end_);
    cudaStreamDestroy(stream_);
    throw;
  }
}

CudaMlaLayer::~CudaMlaLayer() {
  cudaStreamSynchronize(stream_);  // no kernel may outlive the buffers it writes
  cublas_.reset();
  cudaEventDestroy(attention_begin_);
  cudaEventDestroy(attention_end_);
  cudaStreamDestroy(stream_);
}

void CudaMlaLayer::mark_attention_begin() {
  if (!time_attention_ || attention_marked_) return;
  record_event(attention_begin_);
  attention_marked_ = true;
}

void CudaMlaLayer::mark_attention_end() {
  if (time_attention_) record_event(attention_end_);
}

// In a graph being captured an event is recorded at each replay only as an external event node.
void CudaMlaLayer::record_event(cudaEvent_t event) {
  if (stream_is_capturing(stream_)) {
    CUDA_CHECK(cudaEventRecordWithFlags(event, stream_, cudaEventRecordExternal));
  } else {
    CUDA_CHECK(cudaEventRecord(event, stream_));
  }
}

double CudaMlaLayer::attention_ms() {
  if (!time_attention_ || !attention_marked_) return 0.0;
  CUDA_CHECK(cudaEventSynchronize(attention_end_));
  float ms = 0.0f;
  CUDA_CHECK(cudaEventElapsedTime(&ms, attention_begin_, attention_end_));
  return ms;
}

void CudaMlaLayer::allocate(const LayerWeights& w) {
  cublas_ = std::make_unique<CublasContext>(stream_);
  memory_.cublas_workspace_bytes = cublas_->workspace_bytes();
  upload_weights(w);
  allocate_cache();
  allocate_activations();
  allocate_scores();
  CUDA_CHECK(cudaStreamSynchronize(stream_));
}

// The weights in the compute precision (bf16 numbers in bf16 mode), and the norms' scales.
void CudaMlaLayer::upload_weights(const LayerWeights& w) {
  const ModelArgs& m = model_;
  const int64_t heads = shard_.n_local_heads;
  const int64_t dq = m.qk_head_dim();
  const int64_t C = m.kv_lora_rank;
  if (m.q_lora_rank == 0) {
    wq_ = upload_matrix(w.wq, heads * dq, m.dim, round_bf16_, stream_);
  } else {
    wq_a_ = upload_matrix(w.wq_a, m.q_lora_rank, m.dim, round_bf16_, stream_);
    wq_b_ = upload_matrix(w.wq_b, heads * dq, m.q_lora_rank, round_bf16_, stream_);
    q_norm_ = DeviceBuffer<float>(m.q_lora_rank);
    q_norm_.upload(w.q_norm, stream_);
  }
  wkv_a_ = upload_matrix(w.wkv_a, latent_width_, m.dim, round_bf16_, stream_);
  kv_norm_ = DeviceBuffer<float>(C);
  kv_norm_.upload(w.kv_norm, stream_);
  wkv_b_ = upload_matrix(w.wkv_b, heads * (m.qk_nope_head_dim + m.v_head_dim), C, round_bf16_, stream_);
  wo_ = upload_matrix(w.wo, m.dim, heads * m.v_head_dim, round_bf16_, stream_);
  if (stream_fp8_) {
    for (const auto& [matrix, name] : {std::pair<DeviceMatrix*, const char*>{&wq_, "wq"},
                                       {&wq_a_, "wq_a"},
                                       {&wq_b_, "wq_b"},
                                       {&wkv_a_, "wkv_a"},
                                       {&wo_, "wo"}}) {
      attach_fp8_codes(*matrix, w, name, stream_);
    }
  }
  memory_.weights_bytes = wq_.bytes() + wq_a_.bytes() + wq_b_.bytes() + wkv_a_.bytes() + wkv_b_.bytes() + wo_.bytes() +
                          static_cast<int64_t>(q_norm_.bytes() + kv_norm_.bytes());
}

int64_t CudaMlaLayer::weight_bytes_read(int64_t tokens) const {
  int64_t bytes = static_cast<int64_t>(q_norm_.bytes() + kv_norm_.bytes());
  for (const DeviceMatrix* matrix : {&wq_, &wq_a_, &wq_b_, &wkv_a_, &wkv_b_, &wo_}) bytes += matrix->bytes_read(tokens);
  return bytes;
}

// The latent cache's pool, zeroed, and the RoPE tables of every position it can hold.
void CudaMlaLayer::allocate_cache() {
  const ModelArgs& m = model_;
  const RopeTable table = make_rope_table(rope_params(m), m.max_seq_len);
  rope_cos_ = DeviceBuffer<float>(static_cast<int64_t>(table.cos.size()));
  rope_sin_ = DeviceBuffer<float>(static_cast<int64_t>(table.sin.size()));
  rope_cos_.upload(table.cos, stream_);
  rope_sin_.upload(table.sin, stream_);
  latent_pool_ = DeviceBuffer<uint8_t>(cache_.pool_bytes());
  CUDA_CHECK(cudaMemsetAsync(latent_pool_.data(), 0, latent_pool_.bytes(), stream_));
  memory_.kv_cache_bytes = static_cast<int64_t>(latent_pool_.bytes() + rope_cos_.bytes() + rope_sin_.bytes());
}

// Uniform steps over rows the batched kernels cannot read in place gather a group of sequences'
// rows into fp32 (attend_gathered): as many as kGatheredRowsBytes holds at max_kv_len, at least
// one: a bounded copy beside the cache, whose bytes bf16 rows halve.
int64_t CudaMlaLayer::gathered_sequences() const {
  const int64_t sequence_bytes = limits_.max_kv_len * latent_width_ * static_cast<int64_t>(sizeof(float));
  return std::clamp<int64_t>(kGatheredRowsBytes / sequence_bytes, 1, limits_.max_batch);
}

// The absorb formulation's folded queries and latent outputs take (heads x (C + dr + C)) floats a
// token: at a prefill's thousands of tokens, more than the rest of the layer. Absorb steps go
// through them a run of tokens at a time (attend_absorbed), held within run.score_chunk_bytes as
// the standard path's scores are, but never fewer than a decode step's tokens, which the split-KV
// kernel attends at once, and the whole step under a context split (its runs are the group's).
int64_t CudaMlaLayer::absorb_run_tokens() const {
  const int64_t tokens = limits_.step_tokens();
  if (context_shards_ > 1) return tokens;
  const int64_t token_bytes =
      shard_.n_local_heads * (latent_width_ + model_.kv_lora_rank) * static_cast<int64_t>(sizeof(float));
  const int64_t decode_tokens = std::min(tokens, kDecodeMaxNewTokens * limits_.max_batch);
  return std::clamp(run_.score_chunk_bytes / token_bytes, decode_tokens, tokens);
}

// The step's buffers at the limits, for the formulations run.formulation allows.
void CudaMlaLayer::allocate_activations() {
  const ModelArgs& m = model_;
  const int64_t heads = shard_.n_local_heads;
  const int64_t dq = m.qk_head_dim();
  const int64_t C = m.kv_lora_rank;
  const int64_t dn = m.qk_nope_head_dim;
  const int64_t dv = m.v_head_dim;
  const int64_t tokens = limits_.step_tokens();
  const int64_t kv_rows = limits_.max_batch * limits_.max_kv_len;
  const bool naive_possible = run_.formulation != FormulationChoice::Absorb && context_shards_ == 1;
  const bool absorb_possible = run_.formulation != FormulationChoice::Naive;
  if (round_bf16_) {
    x_bf16_ = DeviceBuffer<__nv_bfloat16>(tokens * m.dim);
    // The widest activation operand of any GEMM but the first two (x has its own): q_latent, q
    // (absorb), o_latent (absorb), the cache rows (naive expansion: whole rows, whose rope part
    // the flash kernel reads as every head's k_pe) or o.
    int64_t staging = tokens * std::max({m.q_lora_rank, heads * dq, heads * C, heads * dv});
    if (naive_possible) staging = std::max(staging, kv_rows * latent_width_);
    bf16_staging_ = DeviceBuffer<__nv_bfloat16>(staging);
  }
  if (m.q_lora_rank > 0) q_latent_ = DeviceBuffer<float>(tokens * m.q_lora_rank);
  q_ = DeviceBuffer<float>(tokens * heads * dq);
  kv_ = DeviceBuffer<float>(tokens * latent_width_);
  o_ = DeviceBuffer<float>(tokens * heads * dv);
  if (absorb_possible) {
    absorb_tokens_ = absorb_run_tokens();
    q_absorbed_ = DeviceBuffer<float>(absorb_tokens_ * heads * latent_width_);
    o_latent_ = DeviceBuffer<float>(absorb_tokens_ * heads * C);
  }
  // The naive expansion's output: bf16 for the flash kernel, which reads k_nope and v in place;
  // fp32, with the keys joined per head, for the other kernels (fp32 compute, the standard path).
  // Where a step may take either, the bf16 rows use the fp32 expansion's memory (twice their
  // size): a step takes one route.
  if (naive_possible && (!flash_naive_ || standard_path_possible())) {
    kv_expanded_ = DeviceBuffer<float>(kv_rows * heads * (dn + dv));
    keys_ = DeviceBuffer<float>(kv_rows * heads * dq);
  }
  if (naive_possible && flash_naive_) {
    if (kv_expanded_.size() == 0) kv_expanded_bf16_ = DeviceBuffer<__nv_bfloat16>(kv_rows * heads * (dn + dv));
    expanded_bf16_ =
        kv_expanded_.size() > 0 ? reinterpret_cast<__nv_bfloat16*>(kv_expanded_.data()) : kv_expanded_bf16_.data();
  }
  // A ragged step's index, and (paged or quantized rows) one sequence's rows read back as fp32.
  token_sequence_ = DeviceBuffer<int64_t>(tokens);
  token_position_ = DeviceBuffer<int64_t>(tokens);
  block_table_ = DeviceBuffer<int32_t>(limits_.max_batch * cache_.shape().pages_per_slot());
  // Not where every step reads the rows in place: absorb alone, on the flash kernel.
  if (!dense_fp32_cache() && context_shards_ == 1 && (naive_possible || !flash_absorb_ || standard_path_possible())) {
    latent_rows_ = DeviceBuffer<float>(gathered_sequences() * limits_.max_kv_len * latent_width_);
  }
  if (absorb_possible && run_.attention != AttentionChoice::Standard)
    sequence_lists_ = DeviceBuffer<int64_t>(3 * limits_.max_batch);
  if (context_shards_ > 1) {
    own_rows_ = DeviceBuffer<int64_t>(3 * tokens);
    const int64_t run_tokens = split_run_tokens();
    group_queries_ = DeviceBuffer<float>(context_shards_ * run_tokens * group_heads_max_ * latent_width_);
    if (heads < group_heads_max_) padded_queries_ = DeviceBuffer<float>(run_tokens * group_heads_max_ * latent_width_);
  }
  // Room for two steps' lists, so that a step's copies never wait for the one before.
  const int64_t list_bytes =
      (5 * tokens + 3 * limits_.max_batch) * static_cast<int64_t>(sizeof(int64_t)) + block_table_.bytes();
  uploads_ = std::make_unique<PinnedUploads>(static_cast<size_t>(std::max<int64_t>(2 * list_bytes, 64 << 10)));
  memory_.activation_bytes = static_cast<int64_t>(
      x_bf16_.bytes() + bf16_staging_.bytes() + q_latent_.bytes() + q_.bytes() + kv_.bytes() + o_.bytes() +
      q_absorbed_.bytes() + o_latent_.bytes() + kv_expanded_.bytes() + keys_.bytes() + kv_expanded_bf16_.bytes() +
      token_sequence_.bytes() + token_position_.bytes() + block_table_.bytes() + latent_rows_.bytes() +
      sequence_lists_.bytes() + own_rows_.bytes() + group_queries_.bytes() + padded_queries_.bytes());
}

// The standard path serves a step when asked to, when the step has a mask, or when its kv_len
// passes fast_path_max_len (without a context split, which attends by the split-KV kernel).
bool CudaMlaLayer::standard_path_possible() const {
  return context_shards_ == 1 &&
         (run_.attention == AttentionChoice::Standard || limits_.mask || limits_.max_kv_len > run_.fast_path_max_len);
}

// The standard path's score buffers, where a step may take that path.
void CudaMlaLayer::allocate_scores() {
  const bool absorb_possible = run_.formulation != FormulationChoice::Naive;
  if (standard_path_possible()) {
    AttentionParams widest;
    widest.n_heads = shard_.n_local_heads;
    widest.seq = limits_.max_step_len;
    widest.kv_len = limits_.max_kv_len;
    widest.round_to_bf16 = round_bf16_;
    widest.score_split = absorb_possible ? model_.kv_lora_rank : 0;
    const int64_t chunk = attention_standard_cuda_query_chunk(widest, run_.score_chunk_bytes);
    int64_t floats = attention_standard_cuda_workspace_floats(widest, chunk);
    if (absorb_possible) {
      // A decode step takes several sequences per launch: as many as the score budget allows.
      AttentionParams decode = widest;
      decode.seq = 1;
      decode.batch = limits_.max_batch;
      decode.key_head_stride = decode.value_head_stride = 0;
      const int64_t budget_per_buffer =
          run_.score_chunk_bytes / static_cast<int64_t>(sizeof(float)) / (attention_uses_split_scores(decode) ? 2 : 1);
      const int64_t sequences = attention_standard_cuda_sequences_per_call(decode, budget_per_buffer);
      floats = std::max(floats, attention_standard_cuda_workspace_floats(decode, 1, sequences));
    }
    score_buffer_floats_ = attention_uses_split_scores(widest) ? floats / 2 : floats;
    scores_ = DeviceBuffer<float>(floats);
  }
  // The decode kernel's partial outputs, where decode steps may take it (takes_decode_kernel): the
  // absorb formulation, not the standard path alone, and the model's widths within the kernel's.
  PagedLatentView widths;
  widths.latent_dim = model_.kv_lora_rank;
  widths.rope_dim = model_.qk_rope_head_dim;
  AttentionParams probe;
  probe.latent_pages = &widths;
  probe.score_dim = latent_width_;
  probe.value_dim = model_.kv_lora_rank;
  if (absorb_possible && run_.attention != AttentionChoice::Standard && attention_decode_applies(probe)) {
    decode_partial_rows_ = attention_decode_partial_rows();
    decode_workspace_ =
        DeviceBuffer<float>(attention_decode_workspace_floats(decode_partial_rows_, model_.kv_lora_rank));
  }
  if (context_shards_ > 1) {
    if (decode_workspace_.size() == 0) {
      throw UserError("parallel.context_parallel: " + std::to_string(context_shards_) +
                      " on the CUDA backend attends a rank's share of the cache with the split-KV kernel, but "
                      "this model's latent rows (kv_lora_rank " +
                      std::to_string(model_.kv_lora_rank) + " + qk_rope_head_dim " +
                      std::to_string(model_.qk_rope_head_dim) + ") pass its limits; use context_parallel: 1");
    }
    const int64_t rows = context_shards_ * split_run_tokens() * group_heads_max_;
    partial_out_ = DeviceBuffer<float>(rows * model_.kv_lora_rank);
    received_out_ = DeviceBuffer<float>(rows * model_.kv_lora_rank);
    partial_lse_ = DeviceBuffer<float>(rows);
    received_lse_ = DeviceBuffer<float>(rows);
  }
  memory_.attention_workspace_bytes =
      static_cast<int64_t>(scores_.bytes() + decode_workspace_.bytes() + partial_out_.bytes() + received_out_.bytes() +
                           partial_lse_.bytes() + received_lse_.bytes());
}

// A GEMM's activation operand a [rows, cols] (row stride `stride`): read in place in fp32 mode;
// in bf16 mode staged as a dense bf16 copy, so that the tensor cores take it.
void CudaMlaLayer::set_activation_operand(GemmCudaParams& g, const float* values, int64_t rows, int64_t cols,
                                          int64_t stride) {
  if (!round_bf16_) {
    g.a = values;
    g.lda = stride;
    return;
  }
  g.a = stage_bf16(values, rows, cols, stride);
  g.lda = cols;
  g.operands = GemmOperands::BF16;
}

const __nv_bfloat16* CudaMlaLayer::stage_bf16(const float* values, int64_t rows, int64_t cols, int64_t stride) {
  if (rows * cols > bf16_staging_.size()) {
    throw std::logic_error("CudaMlaLayer: bf16 staging buffer too small for " + std::to_string(rows) + " x " +
                           std::to_string(cols));
  }
  f32_to_bf16_cuda({values, stride, bf16_staging_.data(), rows, cols}, stream_);
  return bf16_staging_.data();
}

void CudaMlaLayer::round_rows(float* values, int64_t rows, int64_t row_stride, int64_t inner, int64_t inner_stride,
                              int64_t width) {
  StridedCopyParams round;
  round.src = round.dst = values;
  round.src_outer_stride = round.dst_outer_stride = row_stride;
  round.src_inner_stride = round.dst_inner_stride = inner_stride;
  round.outer = rows;
  round.inner = inner;
  round.width = width;
  round.round_to_bf16 = true;
  strided_copy_cuda(round, stream_);
}

// y = x W^T. bf16 mode: x (bf16 values held in fp32) is staged as bf16, the tensor cores
// accumulate in fp32, and y is rounded to bf16, as DeepSeek's bf16 F.linear does.
void CudaMlaLayer::linear(const float* x, int64_t x_stride, const DeviceMatrix& weight, int64_t rows, float* y,
                          int64_t y_stride, const __nv_bfloat16* x_staged) {
  if (weight.streams_fp8() && rows <= kFp8LinearMaxRows) {
    // A decode step: the fp8 codes streamed, dequantized in registers to the bf16 copy's values.
    Fp8LinearCudaParams p;
    p.x = x_staged != nullptr ? x_staged : stage_bf16(x, rows, weight.cols, x_stride);
    p.rows = rows;
    p.packed_codes = weight.fp8_codes.data();
    p.block_scales = weight.fp8_scales.data();
    p.scale_cols = weight.fp8_scale_cols;
    p.y = y;
    p.y_stride = y_stride;
    p.out_features = weight.rows;
    p.in_features = weight.cols;
    fp8_linear_cuda(p, stream_);
    round_rows(y, rows, y_stride, 1, 0, weight.rows);
    return;
  }
  GemmCudaParams g;
  g.transpose_b = true;
  g.m = rows;
  g.n = weight.rows;
  g.k = weight.cols;
  g.b = weight.at_row(0);
  g.ldb = weight.cols;
  g.c = y;
  g.ldc = y_stride;
  if (x_staged != nullptr && round_bf16_) {
    g.a = x_staged;
    g.lda = weight.cols;
    g.operands = GemmOperands::BF16;
  } else {
    set_activation_operand(g, x, rows, weight.cols, x_stride);
  }
  gemm_cuda(*cublas_, g);
  if (round_bf16_) round_rows(y, rows, y_stride, 1, 0, weight.rows);
}

StepReport CudaMlaLayer::forward_device(const float* x, int64_t batch, int64_t seq, int64_t start_pos,
                                        const float* mask, int64_t mask_stride, float* y_partial) {
  if (batch < 1 || batch > limits_.max_batch || seq < 1 || seq > limits_.max_step_len ||
      batch * seq > limits_.step_tokens() || start_pos < 0 || start_pos + seq > limits_.max_kv_len) {
    throw std::invalid_argument(
        "CudaMlaLayer::forward: batch " + std::to_string(batch) + ", positions [" + std::to_string(start_pos) + ", " +
        std::to_string(start_pos + seq) + ") pass the limits the layer was sized for (batch " +
        std::to_string(limits_.max_batch) + ", step " + std::to_string(limits_.max_step_len) + ", step tokens " +
        std::to_string(limits_.step_tokens()) + ", kv_len " + std::to_string(limits_.max_kv_len) + ")");
  }
  if (mask != nullptr && !limits_.mask) {
    throw std::invalid_argument("CudaMlaLayer::forward: a mask, but the layer was sized without one");
  }
  attention_marked_ = false;
  const RaggedStep step = uniform_step(batch, seq, start_pos);
  // Decode steps take the decode kernel, which reads the cache through block tables (a dense cache's
  // table is one page per slot): the route of ragged steps.
  StepReport report = plan_step_report(model_, run_, shard_.n_local_heads, batch, seq, start_pos, mask != nullptr);
  if (context_shards_ > 1 || !dense_fp32_cache() ||
      takes_decode_kernel(report.plan, seq, start_pos + seq, mask != nullptr)) {
    return run_ragged(x, step, mask, mask_stride, y_partial);
  }
  check_step_follows_cache("CudaMlaLayer", step, cache_);
  const int64_t tokens = batch * seq;
  const __nv_bfloat16* x_staged = stage_input(x, tokens);
  project_queries(x, x_staged, tokens);
  project_latent(x, x_staged, tokens, seq, start_pos, nullptr);
  kv_cache_append_cuda(
      {kv_.data(), latent_width_, dense_cache(), model_.max_seq_len, latent_width_, batch, seq, start_pos}, stream_);
  cache_.hold(step);

  attend(report.plan, batch, seq, start_pos, mask, mask_stride, report);
  const int64_t o_width = shard_.n_local_heads * model_.v_head_dim;
  linear(o_.data(), o_width, wo_, tokens, y_partial, model_.dim);
  return report;
}

void CudaMlaLayer::set_context_group(Communicator* group) {
  const int64_t world = group != nullptr ? group->world() : 1;
  if (world != context_shards_) {
    throw std::invalid_argument("CudaMlaLayer::set_context_group: a group of " + std::to_string(world) +
                                " ranks for a layer made for context_shards " + std::to_string(context_shards_));
  }
  if (group != nullptr && group->rank() != shard_.rank % context_shards_) {
    throw std::invalid_argument("CudaMlaLayer::set_context_group: rank " + std::to_string(shard_.rank) + " is rank " +
                                std::to_string(group->rank()) +
                                " of its group, but the groups are consecutive ranks of the job");
  }
  context_group_ = context_shards_ > 1 ? group : nullptr;
}

void CudaMlaLayer::fork_sequence(int64_t from_slot, int64_t to_slot) {
  const int64_t page_bytes = cache_.shape().page_bytes();
  for (const LatentCache::PageCopy& copy : cache_.fork(from_slot, to_slot)) {
    CUDA_CHECK(cudaMemcpyAsync(latent_pool_.data() + copy.dst * page_bytes, latent_pool_.data() + copy.src * page_bytes,
                               static_cast<size_t>(copy.bytes), cudaMemcpyDeviceToDevice, stream_));
  }
}

StepReport CudaMlaLayer::forward_ragged_device(const float* x, const RaggedStep& step, float* y_partial) {
  return run_ragged(x, step, nullptr, 0, y_partial);
}

// Every step over a paged or quantized cache, and every ragged step: the projections over all of
// the step's packed tokens at once, the rows appended through the block tables, then the
// attention a sequence at a time over its own rows (attend_ragged).
StepReport CudaMlaLayer::run_ragged(const float* x, const RaggedStep& step, const float* mask, int64_t mask_stride,
                                    float* y_partial) {
  attention_marked_ = false;
  if (context_shards_ > 1 && context_group_ == nullptr) {
    throw std::logic_error("CudaMlaLayer::forward: context_shards " + std::to_string(context_shards_) +
                           " but no group set (set_context_group)");
  }
  check_ragged_step("CudaMlaLayer::forward", step, model_.max_batch_size, model_.max_seq_len);
  check_step_follows_cache("CudaMlaLayer", step, cache_);
  step_index_ = ragged_index(step);
  const RaggedIndex& index = step_index_;
  const int64_t tokens = step.total_tokens();
  if (index.sequences() > limits_.max_batch || tokens > limits_.step_tokens() ||
      step.max_kv_len() > limits_.max_kv_len) {
    throw std::invalid_argument(
        "CudaMlaLayer::forward: a step of " + std::to_string(index.sequences()) + " sequences, " +
        std::to_string(tokens) + " tokens, kv_len up to " + std::to_string(step.max_kv_len()) +
        " passes the limits the layer was sized for (" + std::to_string(limits_.max_batch) + " sequences, " +
        std::to_string(limits_.step_tokens()) + " tokens, kv_len " + std::to_string(limits_.max_kv_len) + ")");
  }
  if (mask != nullptr && !is_uniform(index)) {
    throw std::invalid_argument("CudaMlaLayer::forward: a mask with a ragged step");
  }
  cache_.reserve(step);  // all pages or none: a CacheFull leaves the cache and the device untouched

  uploads_->upload(token_sequence_, index.token_sequence, stream_);
  uploads_->upload(token_position_, index.token_position, stream_);
  PagedLatentView view = cache_.view(index.slot, block_table_host_);
  uploads_->upload(block_table_, block_table_host_, stream_);
  view.pool = latent_pool_.data();
  view.block_table = block_table_.data();

  StepReport report = plan_step_report(model_, run_, shard_.n_local_heads, step, index, mask != nullptr);
  const int64_t max_new_tokens = *std::max_element(index.new_tokens.begin(), index.new_tokens.end());
  if (context_shards_ == 1 && takes_decode_kernel(report.plan, max_new_tokens, step.max_kv_len(), mask != nullptr)) {
    run_decode_step(x, index, view, y_partial, report);
    cache_.hold(step);
    return report;
  }

  const __nv_bfloat16* x_staged = stage_input(x, tokens);
  project_queries(x, x_staged, tokens);
  project_latent(x, x_staged, tokens, tokens, 0, token_position_.data());
  if (context_shards_ > 1) {
    append_own_rows(index, view);
  } else {
    append_step_rows(tokens, view);
  }
  cache_.hold(step);

  if (context_shards_ > 1) {
    if (report.plan.formulation != Formulation::Absorb || report.plan.path != AttentionPath::Fast) {
      report.plan.formulation = Formulation::Absorb;
      report.plan.path = AttentionPath::Fast;
      report.plan.reason += "; but the cache is split over a context group: absorb through the split-KV kernel";
    } else {
      report.plan.reason += "; the cache split over a context group: the split-KV kernel";
    }
    attend_split(index, view, report);
  } else if (is_uniform(index)) {
    attend_gathered(report.plan, index, view, mask, mask_stride, report);
  } else {
    attend_ragged(report.plan, index, view, mask, mask_stride, report);
  }
  const int64_t o_width = shard_.n_local_heads * model_.v_head_dim;
  linear(o_.data(), o_width, wo_, tokens, y_partial, model_.dim);
  return report;
}

void CudaMlaLayer::append_step_rows(int64_t tokens, const PagedLatentView& view) {
  PagedLatentAppendParams append;
  append.rows = kv_.data();
  append.row_stride = latent_width_;
  append.tokens = tokens;
  append.sequence = token_sequence_.data();
  append.position = token_position_.data();
  append.cache = view;
  paged_latent_append_cuda(append, stream_);
}

// bf16 mode: DeepSeek's activations are bf16 from the embedding on, so x is rounded once and read
// by both GEMMs that take it. fp32 mode: nothing (nullptr).
const __nv_bfloat16* CudaMlaLayer::stage_input(const float* x, int64_t tokens) {
  if (!round_bf16_) return nullptr;
  f32_to_bf16_cuda({x, model_.dim, x_bf16_.data(), tokens, model_.dim}, stream_);
  return x_bf16_.data();
}

// A decode-shaped step (a few new tokens per sequence) in the absorb formulation on the fast path
// takes the split-KV decode kernel, which has no length limit from shared memory: the planner
// gives such steps the fast path at any kv_len under fast_path_max_len auto. It divides each
// sequence's keys among blocks until the GPU is full, where the standard path batches sequences
// into cuBLAS GEMMs over materialized scores and reads each latent row twice (docs/cuda_backend.md,
// Decode on the GPU). Where the model's widths pass the kernel's, the fused kernel's on-chip
// limit holds again: past it, the standard path.
bool CudaMlaLayer::takes_decode_kernel(StepPlan& plan, int64_t max_new_tokens, int64_t kv_len, bool has_mask) const {
  if (plan.path != AttentionPath::Fast || plan.formulation != Formulation::Absorb || has_mask ||
      max_new_tokens > kDecodeMaxNewTokens) {
    return false;
  }
  if (decode_workspace_.size() == 0) {
    if (kv_len > run_.fast_path_max_len) {
      plan.path = AttentionPath::Standard;
      plan.reason += "; the model's latent widths pass the decode kernel's, so the standard path";
    }
    return false;
  }
  plan.reason += "; split-KV decode kernel";
  return true;
}

// docs/design.md steps 1-2: q = wq(x) or wq_b(rmsnorm(wq_a(x))).
void CudaMlaLayer::project_queries(const float* x, const __nv_bfloat16* x_staged, int64_t tokens) {
  const int64_t q_width = shard_.n_local_heads * model_.qk_head_dim();
  if (model_.q_lora_rank == 0) {
    linear(x, model_.dim, wq_, tokens, q_.data(), q_width, x_staged);
  } else {
    const int64_t rank = model_.q_lora_rank;
    linear(x, model_.dim, wq_a_, tokens, q_latent_.data(), rank, x_staged);
    rmsnorm_cuda({q_latent_.data(), rank, q_norm_.data(), q_latent_.data(), rank, tokens, rank, 1e-6f, round_bf16_},
                 stream_);
    linear(q_latent_.data(), rank, wq_b_, tokens, q_.data(), q_width);
  }
}

// docs/design.md steps 2-4: kv = wkv_a(x) -> [c_n = rmsnorm(c) | k_pe = rope(k_pe)] (the caller appends
// it to the cache); RoPE on each head's q_pe.
void CudaMlaLayer::project_latent(const float* x, const __nv_bfloat16* x_staged, int64_t tokens, int64_t seq,
                                  int64_t start_pos, const int64_t* token_positions) {
  const int64_t C = model_.kv_lora_rank;
  const int64_t dq = model_.qk_head_dim();
  linear(x, model_.dim, wkv_a_, tokens, kv_.data(), latent_width_, x_staged);
  rmsnorm_cuda({kv_.data(), latent_width_, kv_norm_.data(), kv_.data(), latent_width_, tokens, C, 1e-6f, round_bf16_},
               stream_);

  RopeCudaParams rope;
  rope.batch = tokens / seq;
  rope.seq = seq;
  rope.start_pos = start_pos;
  rope.token_positions = token_positions;
  rope.cos = rope_cos_.data();
  rope.sin = rope_sin_.data();
  rope.positions = model_.max_seq_len;
  rope.half_dim = model_.qk_rope_head_dim / 2;
  rope.round_to_bf16 = round_bf16_;
  rope.x = kv_.data() + C;
  rope.token_stride = latent_width_;
  rope_apply_cuda(rope, stream_);
  rope.x = q_.data() + model_.qk_nope_head_dim;
  rope.token_stride = shard_.n_local_heads * dq;
  rope.vecs_per_token = shard_.n_local_heads;
  rope.vec_stride = dq;
  rope_apply_cuda(rope, stream_);
}

void CudaMlaLayer::attend(const StepPlan& plan, int64_t batch, int64_t seq, int64_t start_pos, const float* mask,
                          int64_t mask_stride, StepReport& report) {
  check_formulation_buffers(plan.formulation);
  if (plan.formulation == Formulation::Absorb) {
    attend_absorbed(plan.path, 0, batch, seq, start_pos, dense_cache(), model_.max_seq_len * latent_width_, mask,
                    mask_stride, report);
    return;
  }
  attend_naive(plan.path, 0, batch, seq, start_pos, dense_cache(), model_.max_seq_len * latent_width_, mask,
               mask_stride, report);
}

// The naive formulation over `count` sequences of a uniform step, their latent rows from `latent`
// (`latent_stride` floats apart), their queries from packed token `first_token` on: the rows
// expanded into keys and values, then the attention.
void CudaMlaLayer::attend_naive(AttentionPath path, int64_t first_token, int64_t count, int64_t seq, int64_t start_pos,
                                const float* latent, int64_t latent_stride, const float* mask, int64_t mask_stride,
                                StepReport& report) {
  const int64_t heads = shard_.n_local_heads;
  const bool flash = path == AttentionPath::Fast && flash_naive_;
  if (!flash && keys_.size() == 0) {
    throw std::logic_error("CudaMlaLayer: a naive step off the flash kernel, but its fp32 keys were not sized");
  }
  expand_keys_values(latent, latent_stride, count, start_pos + seq, flash);
  const AttentionStep step{count, seq, start_pos, heads, mask, mask_stride, round_bf16_};
  AttentionParams p = naive_attention_params(model_, step, q_.data() + first_token * heads * model_.qk_head_dim(),
                                             flash ? nullptr : keys_.data(), flash ? nullptr : kv_expanded_.data(),
                                             o_.data() + first_token * heads * model_.v_head_dim);
  if (flash) {
    // k_nope and v: each head's slices of the expansion's bf16 rows (the values' strides); k_pe:
    // the rope part of the cache rows' bf16 copy, one for every head.
    const auto* expanded = reinterpret_cast<const uint16_t*>(expanded_bf16_);
    p.key_bf16 = expanded;
    p.key_batch_stride = p.value_batch_stride;
    p.key_pos_stride = p.value_pos_stride;
    p.key_head_stride = p.value_head_stride;
    p.value_bf16 = expanded + model_.qk_nope_head_dim;
    p.key_tail_bf16 = reinterpret_cast<const uint16_t*>(bf16_staging_.data()) + model_.kv_lora_rank;
    p.key_tail_from = model_.qk_nope_head_dim;
    p.key_tail_batch_stride = p.kv_len * latent_width_;
    p.key_tail_pos_stride = latent_width_;
    p.key_tail_head_stride = 0;
  }
  run_attention(path, p, report);
}

// Rows 0 .. count - 1 of `sequences` block-table rows from `first` on, as fp32 in latent_rows_ (one
// launch; bf16 and fp8 rows dequantized by the CPU's rule).
const float* CudaMlaLayer::gather_rows(const PagedLatentView& view, int64_t first, int64_t sequences, int64_t count) {
  if (latent_rows_.size() < sequences * count * latent_width_) {
    throw std::logic_error("CudaMlaLayer: rows gathered, but no buffer was sized for them");
  }
  PagedLatentGatherParams gather;
  gather.cache = view;
  gather.only_sequence = first;
  gather.sequences = sequences;
  gather.count = count;
  gather.out = latent_rows_.data();
  paged_latent_gather_cuda(gather, stream_);
  return latent_rows_.data();
}

void CudaMlaLayer::check_formulation_buffers(Formulation formulation) const {
  if (formulation == Formulation::Absorb && q_absorbed_.size() == 0) {
    throw std::logic_error("CudaMlaLayer: absorb planned but run.formulation is naive");
  }
  if (formulation == Formulation::Naive && keys_.size() == 0 && expanded_bf16_ == nullptr) {
    throw std::logic_error("CudaMlaLayer: naive planned but run.formulation is absorb");
  }
}

// The absorb formulation over `count` sequences of a uniform step, their latent rows from `latent`
// (`latent_stride` floats apart), their queries from packed token `first_token` on. The folded
// queries and latent outputs are held for absorb_tokens_ tokens at a time: whole sequences where
// one fits, else pieces of one sequence's queries, each attending over the keys up to its own last
// position (the step's rows are all in the cache already; the causal rule and the mask's rows
// follow the piece's first position).
void CudaMlaLayer::attend_absorbed(AttentionPath path, int64_t first_token, int64_t count, int64_t seq,
                                   int64_t start_pos, const float* latent, int64_t latent_stride, const float* mask,
                                   int64_t mask_stride, StepReport& report, const PagedLatentView* pages) {
  const int64_t heads = shard_.n_local_heads;
  const auto attend_run = [&](int64_t first_sequence, int64_t sequences, int64_t first_query, int64_t queries) {
    const int64_t run_first = first_token + first_sequence * seq + first_query;
    absorb_queries(run_first, sequences * queries);
    const AttentionStep step{sequences,
                             queries,
                             start_pos + first_query,
                             heads,
                             mask != nullptr ? mask + first_query * mask_stride : nullptr,
                             mask_stride,
                             round_bf16_};
    AttentionParams p =
        absorb_attention_params(model_, step, q_absorbed_.data(),
                                pages != nullptr ? nullptr : latent + first_sequence * latent_stride, o_latent_.data());
    p.key_batch_stride = p.value_batch_stride = latent_stride;
    PagedLatentView run_pages;
    if (pages != nullptr) {
      run_pages = sequence_pages(*pages, first_sequence);
      p.latent_pages = &run_pages;
    }
    run_attention(path, p, report);
    absorb_outputs(run_first, sequences * queries);
  };
  if (seq <= absorb_tokens_) {
    const int64_t per_run = absorb_tokens_ / seq;
    for (int64_t b = 0; b < count; b += per_run) attend_run(b, std::min(per_run, count - b), 0, seq);
    return;
  }
  for (int64_t b = 0; b < count; ++b) {
    for (int64_t a = 0; a < seq; a += absorb_tokens_) attend_run(b, 1, a, std::min(absorb_tokens_, seq - a));
  }
}

// A sequence at a time, each over its own cache rows: in place in a dense fp32 cache, else read
// through its block table into one fp32 buffer (bf16 and fp8 rows dequantized by the same rule as
// the CPU's paged_latent_rows). The kernels are the uniform step's, at batch 1; the projections
// around them still take the whole step at once, and the absorb folds a run of consecutive
// sequences whose tokens fit absorb_tokens_ at once (a longer one in pieces, attend_absorbed).
void CudaMlaLayer::attend_ragged(const StepPlan& plan, const RaggedIndex& index, const PagedLatentView& view,
                                 const float* mask, int64_t mask_stride, StepReport& report) {
  const int64_t heads = shard_.n_local_heads;
  const bool absorb = plan.formulation == Formulation::Absorb;
  check_formulation_buffers(plan.formulation);
  // The flash kernel reads an absorb step's bf16 rows in place through the sequence's pages.
  const bool in_place = absorb && plan.path == AttentionPath::Fast && flash_absorb_;
  const auto rows_of = [&](int64_t b) -> const float* {
    if (in_place) return nullptr;
    if (dense_fp32_cache()) return dense_cache() + index.slot[b] * model_.max_seq_len * latent_width_;
    return gather_rows(view, b, 1, index.start_pos[b] + index.new_tokens[b]);
  };
  for (int64_t b = 0; b < index.sequences();) {
    const int64_t kv_len = index.start_pos[b] + index.new_tokens[b];
    const int64_t first_token = index.token_offset[b];
    if (!absorb) {
      attend_naive(plan.path, first_token, 1, index.new_tokens[b], index.start_pos[b], rows_of(b),
                   kv_len * latent_width_, mask, mask_stride, report);
      ++b;
      continue;
    }
    if (index.new_tokens[b] > absorb_tokens_) {
      const PagedLatentView pages = sequence_pages(view, b);
      attend_absorbed(plan.path, first_token, 1, index.new_tokens[b], index.start_pos[b], rows_of(b),
                      kv_len * latent_width_, mask, mask_stride, report, in_place ? &pages : nullptr);
      ++b;
      continue;
    }
    int64_t end = b, run_tokens = 0;
    while (end < index.sequences() && run_tokens + index.new_tokens[end] <= absorb_tokens_) {
      run_tokens += index.new_tokens[end++];
    }
    absorb_queries(first_token, run_tokens);
    for (; b < end; ++b) {
      const int64_t offset = index.token_offset[b] - first_token;
      const AttentionStep sequence{1, index.new_tokens[b], index.start_pos[b], heads, mask, mask_stride, round_bf16_};
      AttentionParams p = absorb_attention_params(model_, sequence, q_absorbed_.data() + offset * heads * latent_width_,
                                                  rows_of(b), o_latent_.data() + offset * heads * model_.kv_lora_rank);
      const PagedLatentView pages = sequence_pages(view, b);
      if (in_place) p.latent_pages = &pages;
      run_attention(plan.path, p, report);
    }
    absorb_outputs(first_token, run_tokens);
  }
}

// A uniform step (every sequence at the same positions) over rows the batched kernels cannot read
// in place (a paged layout, bf16 or fp8 rows): a group of sequences at a time, their rows gathered
// into one fp32 buffer by one launch (dequantized by the CPU's rule), and the uniform step's
// kernels over the group, as the dense fp32 cache's route runs them over the whole batch.
void CudaMlaLayer::attend_gathered(const StepPlan& plan, const RaggedIndex& index, const PagedLatentView& view,
                                   const float* mask, int64_t mask_stride, StepReport& report) {
  const int64_t batch = index.sequences();
  const int64_t seq = index.new_tokens[0];
  const int64_t start_pos = index.start_pos[0];
  const int64_t kv_len = start_pos + seq;
  check_formulation_buffers(plan.formulation);
  if (plan.formulation == Formulation::Absorb && plan.path == AttentionPath::Fast && flash_absorb_) {
    // The flash kernel reads the bf16 rows in place: no gather, every sequence at once.
    attend_absorbed(plan.path, 0, batch, seq, start_pos, nullptr, 0, mask, mask_stride, report, &view);
    return;
  }
  const int64_t group = std::max<int64_t>(1, latent_rows_.size() / (kv_len * latent_width_));
  for (int64_t first = 0; first < batch; first += group) {
    const int64_t count = std::min(group, batch - first);
    const float* latent = gather_rows(view, first, count, kv_len);
    if (plan.formulation == Formulation::Absorb) {
      attend_absorbed(plan.path, first * seq, count, seq, start_pos, latent, kv_len * latent_width_, mask, mask_stride,
                      report);
    } else {
      attend_naive(plan.path, first * seq, count, seq, start_pos, latent, kv_len * latent_width_, mask, mask_stride,
                   report);
    }
  }
}

void CudaMlaLayer::upload_sequence_lists(const RaggedIndex& index) {
  // A member, so that its allocation serves every step (uploads_ copies it before returning).
  std::vector<int64_t>& lists = sequence_lists_host_;
  lists.assign(index.start_pos.begin(), index.start_pos.end());
  lists.insert(lists.end(), index.new_tokens.begin(), index.new_tokens.end());
  lists.insert(lists.end(), index.token_offset.begin(), index.token_offset.end());
  uploads_->upload(sequence_lists_, lists, stream_);
}

// A decode-shaped step: its lists go to the device first, then its launches, from the input's bf16
// copy to the output projection, are queued one by one, or captured into a graph and replayed
// (run.cuda_graphs; decode_graphs.h says which and when). The keys' split is sized for the kv_len
// bucket either way, so that both give the same bits.
void CudaMlaLayer::run_decode_step(const float* x, const RaggedIndex& index, const PagedLatentView& view,
                                   float* y_partial, StepReport& report) {
  const int64_t tokens = static_cast<int64_t>(index.token_position.size());
  upload_sequence_lists(index);
  const AttentionParams p = ragged_latent_params(model_, index, shard_.n_local_heads, round_bf16_, q_absorbed_.data(),
                                                 o_latent_.data(), view, sequence_lists_.data());
  AttentionParams bucketed = p;
  bucketed.kv_len = decode_kv_bucket(p.kv_len);
  const AttentionDecodeSplit split = attention_decode_split(bucketed, tokens, decode_partial_rows_);
  if (split.splits > 1) {
    report.attention_workspace_bytes =
        std::max(report.attention_workspace_bytes,
                 attention_decode_workspace_floats(split.splits * tokens * shard_.n_local_heads, model_.kv_lora_rank) *
                     static_cast<int64_t>(sizeof(float)));
  }
  const auto enqueue = [&] { enqueue_decode_step(x, tokens, p, split, y_partial); };
  if (!run_.cuda_graphs || decode_graphs_failed_) {
    enqueue();
    return;
  }
  const DecodeGraphKey key{index.sequences(), tokens, p.seq, bucketed.kv_len, x, y_partial, time_attention_};
  switch (decode_graphs_.action(key)) {
    case DecodeGraphAction::Eager: enqueue(); return;
    case DecodeGraphAction::Replay: decode_graphs_.graph(key).launch(stream_); break;
    case DecodeGraphAction::Capture:
      try {
        decode_graphs_.insert(key, StreamGraph::capture(stream_, enqueue)).launch(stream_);
      } catch (const CudaError& error) {
        // A driver that cannot capture one of the step's calls: this rank's decode steps launch one
        // by one from now on (the same bits), and the step runs so. A fault of the device itself
        // fails again right here, and is thrown from there.
        std::fprintf(
            stderr,
            "rank %d: run.cuda_graphs: a decode step could not be captured (%s); decode steps launch without a graph\n",
            shard_.rank, error.what());
        decode_graphs_failed_ = true;
        decode_graphs_.clear();
        enqueue();
        return;
      }
      break;
  }
  ++decode_graph_replays_;
  report.graph_replayed = true;
  attention_marked_ = time_attention_;  // the graph records the attention events
}

// Everything a decode graph holds: the lists, the block table and the step's input are in device
// memory already, and every argument here is the same for every step of a DecodeGraphKey.
void CudaMlaLayer::enqueue_decode_step(const float* x, int64_t tokens, const AttentionParams& p,
                                       const AttentionDecodeSplit& split, float* y_partial) {
  const __nv_bfloat16* x_staged = stage_input(x, tokens);
  project_queries(x, x_staged, tokens);
  project_latent(x, x_staged, tokens, tokens, 0, token_position_.data());
  append_step_rows(tokens, *p.latent_pages);
  absorb_queries(0, tokens);
  mark_attention_begin();
  attention_decode_cuda(p, tokens, split, decode_workspace_.data(), decode_partial_rows_, stream_);
  mark_attention_end();
  absorb_outputs(0, tokens);
  const int64_t o_width = shard_.n_local_heads * model_.v_head_dim;
  linear(o_.data(), o_width, wo_, tokens, y_partial, model_.dim);
}

// Position t of a sequence goes to the group's rank t % shards, at its row t / shards: the append
// kernel takes this rank's tokens' rows of kv_ in place.
void CudaMlaLayer::append_own_rows(const RaggedIndex& index, const PagedLatentView& view) {
  const ShardRows own = shard_rows_of_step(index, context_shards_, context_group_->rank());
  if (own.count() == 0) return;
  std::vector<int64_t>& lists = own_rows_host_;  // a member: one allocation for every step
  lists.assign(own.token.begin(), own.token.end());
  lists.insert(lists.end(), own.sequence.begin(), own.sequence.end());
  lists.insert(lists.end(), own.row.begin(), own.row.end());
  uploads_->upload(own_rows_, lists, stream_);
  PagedLatentAppendParams append;
  append.rows = kv_.data();
  append.row_stride = latent_width_;
  append.tokens = own.count();
  append.row_index = own_rows_.data();
  append.sequence = own_rows_.data() + own.count();
  append.position = own_rows_.data() + 2 * own.count();
  append.cache = view;
  paged_latent_append_cuda(append, stream_);
}

// The most tokens of a step that go through the group's gather and exchange at once
// (context_run_tokens within run.score_chunk_bytes, as the CPU layer), and no more than a step has.
int64_t CudaMlaLayer::split_run_tokens() const {
  return std::min(limits_.step_tokens(), context_run_tokens(context_shards_, group_heads_max_, latent_width_,
                                                            model_.kv_lora_rank, run_.score_chunk_bytes));
}

// docs/design.md, The latent cache split across ranks, steps 2-4, a run of the step's tokens at a
// time (split_run_tokens): the group's absorbed queries gathered; for the queries of each rank of
// the group, the attention over this rank's rows with the log-sum-exps (a row that sees none of
// them yet: output 0, lse -inf); the parts exchanged so that each rank holds its own heads' part
// from every rank; attention_merge_cuda folds them into the softmax over all of a sequence's
// positions. Queries, outputs and log-sum-exps travel in blocks of group_heads_max_ heads, a rank's
// own first.
void CudaMlaLayer::attend_split(const RaggedIndex& index, const PagedLatentView& view, StepReport& report) {
  const int64_t tokens = static_cast<int64_t>(index.token_position.size());
  const int64_t heads = shard_.n_local_heads;
  const int64_t C = model_.kv_lora_rank;
  const int64_t shards = context_shards_;
  const int64_t shard = context_group_->rank();
  absorb_queries(0, tokens);
  mark_attention_begin();
  for (const TokenRun& run : token_runs(index, split_run_tokens())) {
    const int64_t block_rows = run.tokens * group_heads_max_;
    const int64_t query_count = block_rows * latent_width_;
    const int64_t part = block_rows * C;
    // Collectives end every run (they wait for the stream), so the lists' host copy is free again.
    upload_sequence_lists(run.index);
    PagedLatentView run_view = view;  // the run's sequences are the step's from first_sequence on
    run_view.block_table += run.first_sequence * run_view.block_table_stride;
    const float* own_queries = q_absorbed_.data() + run.first_token * heads * latent_width_;
    if (heads < group_heads_max_) {
      StridedCopyParams pad;  // [tokens, heads, C + dr] into [tokens, group_heads_max_, C + dr]
      pad.src = own_queries;
      pad.src_outer_stride = heads * latent_width_;
      pad.dst = padded_queries_.data();
      pad.dst_outer_stride = group_heads_max_ * latent_width_;
      pad.outer = run.tokens;
      pad.width = heads * latent_width_;
      strided_copy_cuda(pad, stream_);
      own_queries = padded_queries_.data();
    }
    context_group_->allgather(own_queries, query_count, group_queries_.data());
    int64_t rows_held = 0;  // the most rows of a sequence this rank holds: the kernel's kv_len
    for (int64_t b = 0; b < run.index.sequences(); ++b) {
      rows_held = std::max(rows_held, shard_rows(run.index.start_pos[b] + run.index.new_tokens[b], shards, shard));
    }
    for (int64_t source = 0; source < shards; ++source) {  // the heads of the group's rank `source`
      AttentionParams p = ragged_latent_params(model_, run.index, group_heads_[source], round_bf16_,
                                               group_queries_.data() + source * query_count,
                                               partial_out_.data() + source * part, run_view, sequence_lists_.data());
      p.q_token_stride = group_heads_max_ * latent_width_;  // the gathered blocks' layout
      p.kv_shards = shards;
      p.kv_shard = shard;
      p.kv_len = rows_held;
      p.lse = partial_lse_.data() + source * block_rows;
      const AttentionDecodeSplit split = attention_decode_split(p, run.tokens, decode_partial_rows_);
      attention_decode_cuda(p, run.tokens, split, decode_workspace_.data(), decode_partial_rows_, stream_);
    }
    context_group_->alltoall(partial_out_.data(), part, received_out_.data());
    context_group_->alltoall(partial_lse_.data(), block_rows, received_lse_.data());
    AttentionMergeParams merge;
    merge.out = received_out_.data();
    merge.lse = received_lse_.data();
    merge.parts = shards;
    merge.rows = run.tokens * heads;
    merge.part_rows = block_rows;
    merge.dim = C;
    merge.merged = o_latent_.data() + run.first_token * heads * C;
    merge.round_to_bf16 = round_bf16_;
    attention_merge_cuda(merge, stream_);
    report.attention_workspace_bytes = std::max(report.attention_workspace_bytes,
                                                2 * shards * (part + block_rows) * static_cast<int64_t>(sizeof(float)));
    report.context_bytes += (shards - 1) * (query_count + part + block_rows) * static_cast<int64_t>(sizeof(float));
  }
  mark_attention_end();
  absorb_outputs(0, tokens);
}

void CudaMlaLayer::run_attention(AttentionPath path, const AttentionParams& p, StepReport& report) {
  mark_attention_begin();
  if (path == AttentionPath::Fast) {
    attention_fast_cuda(p, stream_);  // scores stay in shared memory: no workspace
    mark_attention_end();
    return;
  }
  if (scores_.size() == 0) throw std::logic_error("CudaMlaLayer: standard path planned but no score buffer sized");
  const int64_t chunk = attention_standard_cuda_query_chunk(
      p, score_buffer_floats_ * static_cast<int64_t>(sizeof(float)) * (attention_uses_split_scores(p) ? 2 : 1));
  const int64_t sequences = attention_standard_cuda_sequences_per_call(p, score_buffer_floats_);
  attention_standard_cuda(*cublas_, p, chunk, scores_.data(),
                          attention_uses_split_scores(p) ? scores_.data() + score_buffer_floats_ : nullptr, sequences);
  mark_attention_end();
  report.attention_workspace_bytes =
      std::max(report.attention_workspace_bytes,
               attention_standard_cuda_workspace_floats(p, chunk, sequences) * static_cast<int64_t>(sizeof(float)));
}

// docs/design.md step 5, absorb: q_lat[h] = Wk[h]^T q_nope[h] (one batched GEMM over heads), next to q_pe[h].
void CudaMlaLayer::absorb_queries(int64_t first_token, int64_t tokens) {
  if (tokens > absorb_tokens_) {
    throw std::logic_error("CudaMlaLayer: " + std::to_string(tokens) + " tokens folded at once, the buffers hold " +
                           std::to_string(absorb_tokens_));
  }
  const int64_t heads = shard_.n_local_heads;
  const int64_t C = model_.kv_lora_rank;
  const int64_t dn = model_.qk_nope_head_dim;
  const int64_t dq = model_.qk_head_dim();
  const int64_t head_rows = dn + model_.v_head_dim;
  GemmCudaParams g;
  g.m = tokens;
  g.n = C;
  g.k = dn;
  const float* q = q_.data() + first_token * heads * dq;
  set_activation_operand(g, q, tokens, heads * dq, heads * dq);
  g.stride_a = dq;
  g.b = wkv_b_.at_row(0);  // Wk[h]: rows h * head_rows .. + dn, [dn, C]
  g.ldb = C;
  g.stride_b = head_rows * C;
  g.c = q_absorbed_.data();
  g.ldc = heads * latent_width_;
  g.stride_c = latent_width_;
  g.batch = heads;
  gemm_cuda(*cublas_, g);
  if (round_bf16_) round_rows(q_absorbed_.data(), tokens, heads * latent_width_, heads, latent_width_, C);

  StridedCopyParams q_pe;
  q_pe.src = q + dn;
  q_pe.src_outer_stride = heads * dq;
  q_pe.src_inner_stride = dq;
  q_pe.dst = q_absorbed_.data() + C;
  q_pe.dst_outer_stride = heads * latent_width_;
  q_pe.dst_inner_stride = latent_width_;
  q_pe.outer = tokens;
  q_pe.inner = heads;
  q_pe.width = model_.qk_rope_head_dim;
  strided_copy_cuda(q_pe, stream_);
}

// docs/design.md step 8, absorb: o[h] = Wv[h] o_lat[h].
void CudaMlaLayer::absorb_outputs(int64_t first_token, int64_t tokens) {
  const int64_t heads = shard_.n_local_heads;
  const int64_t C = model_.kv_lora_rank;
  const int64_t dv = model_.v_head_dim;
  const int64_t head_rows = model_.qk_nope_head_dim + dv;
  GemmCudaParams g;
  g.transpose_b = true;
  g.m = tokens;
  g.n = dv;
  g.k = C;
  set_activation_operand(g, o_latent_.data(), tokens, heads * C, heads * C);
  g.stride_a = C;
  g.b = wkv_b_.at_row(model_.qk_nope_head_dim);  // Wv[h]: [dv, C]
  g.ldb = C;
  g.stride_b = head_rows * C;
  float* o = o_.data() + first_token * heads * dv;
  g.c = o;
  g.ldc = heads * dv;
  g.stride_c = dv;
  g.batch = heads;
  gemm_cuda(*cublas_, g);
  if (round_bf16_) round_rows(o, tokens, heads * dv, 1, 0, heads * dv);
}

// docs/design.md step 5, naive, from the one latent cache (as the CPU layer): [k_nope | v] = wkv_b c_n
// for every cached position, and k = [k_nope | k_pe] per head. One GEMM and one copy per part
// for the whole batch: per-sequence launches cost more than the work at decode-sized steps.
void CudaMlaLayer::expand_keys_values(const float* latent, int64_t batch_stride, int64_t batch, int64_t kv_len,
                                      bool bf16_keys) {
  const int64_t heads = shard_.n_local_heads;
  const int64_t C = model_.kv_lora_rank;
  const int64_t dn = model_.qk_nope_head_dim;
  const int64_t dq = model_.qk_head_dim();
  const int64_t head_rows = dn + model_.v_head_dim;
  const int64_t kv_width = heads * head_rows;
  GemmCudaParams g;
  g.transpose_b = true;
  g.n = kv_width;
  g.k = C;
  g.b = wkv_b_.at_row(0);
  g.ldb = C;
  g.c = kv_expanded_.data();
  g.ldc = kv_width;
  if (round_bf16_) {
    // The cache rows are bf16 numbers: every sequence's first kv_len rows gathered into one
    // dense bf16 operand, c_n for the GEMM, and whole rows for the flash kernel (their rope part
    // is its k_pe).
    const int64_t staged_cols = bf16_keys ? latent_width_ : C;
    if (batch * kv_len * staged_cols > bf16_staging_.size()) {
      throw std::logic_error("CudaMlaLayer: bf16 staging buffer too small for the expansion");
    }
    f32_to_bf16_cuda({latent, latent_width_, bf16_staging_.data(), batch * kv_len, staged_cols, kv_len, batch_stride},
                     stream_);
    g.m = batch * kv_len;
    g.a = bf16_staging_.data();
    g.lda = staged_cols;
    g.operands = GemmOperands::BF16;
  } else {
    g.m = kv_len;
    g.a = latent;
    g.lda = latent_width_;
    g.stride_a = batch_stride;
    g.stride_c = kv_len * kv_width;
    g.batch = batch;
  }
  if (bf16_keys) {
    // The flash kernel reads the product in place: rounded to bf16 by the GEMM, no joined keys.
    g.c = nullptr;
    g.c_bf16 = reinterpret_cast<uint16_t*>(expanded_bf16_);
    gemm_cuda(*cublas_, g);
    return;
  }
  gemm_cuda(*cublas_, g);
  if (round_bf16_) round_rows(kv_expanded_.data(), batch * kv_len, kv_width, 1, 0, kv_width);

  StridedCopyParams k_pe;  // the one rope key of each position, repeated for every head
  k_pe.src = latent + C;
  k_pe.src_batch_stride = batch_stride;
  k_pe.src_outer_stride = latent_width_;
  k_pe.src_inner_stride = 0;
  k_pe.dst = keys_.data() + dn;
  k_pe.dst_batch_stride = kv_len * heads * dq;
  k_pe.dst_outer_stride = heads * dq;
  k_pe.dst_inner_stride = dq;
  k_pe.batch = batch;
  k_pe.outer = kv_len;
  k_pe.inner = heads;
  k_pe.width = model_.qk_rope_head_dim;
  strided_copy_cuda(k_pe, stream_);
  StridedCopyParams k_nope;
  k_nope.src = kv_expanded_.data();
  k_nope.src_outer_stride = kv_width;
  k_nope.src_inner_stride = head_rows;
  k_nope.dst = keys_.data();
  k_nope.dst_outer_stride = heads * dq;
  k_nope.dst_inner_stride = dq;
  k_nope.outer = batch * kv_len;
  k_nope.inner = heads;
  k_nope.width = dn;
  strided_copy_cuda(k_nope, stream_);
}

}  // namespace mla
