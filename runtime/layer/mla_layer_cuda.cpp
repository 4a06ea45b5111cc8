#include "runtime/layer/mla_layer_cuda.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <vector>

#include "kernels/cpu/bf16.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/attention_fast.h"
#include "kernels/cuda/attention_standard.h"
#include "kernels/cuda/bf16_convert.h"
#include "kernels/cuda/kv_cache_append.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/strided_copy.h"
#include "runtime/base/errors.h"
#include "runtime/base/units.h"
#include "runtime/layer/attention_layout.h"

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

CudaMlaLayer::CudaMlaLayer(const ModelArgs& model, const HeadShard& shard, const LayerWeights& weights,
                           const RunConfig& run, const CudaLayerLimits& limits)
    : model_(model),
      shard_(shard),
      run_(run),
      limits_(limits),
      round_bf16_(run.compute_dtype == ComputeDType::BF16),
      latent_width_(model.kv_lora_rank + model.qk_rope_head_dim) {
  if (limits.max_batch < 1 || limits.max_batch > model.max_batch_size || limits.max_step_len < 1 ||
      limits.max_kv_len < limits.max_step_len || limits.max_kv_len > model.max_seq_len) {
    throw std::invalid_argument("CudaMlaLayer: limits (batch " + std::to_string(limits.max_batch) + ", step " +
                                std::to_string(limits.max_step_len) + ", kv " + std::to_string(limits.max_kv_len) +
                                ") do not fit the model's cache");
  }
  if (run.attention != AttentionChoice::Standard) {
    const int64_t widest_score = std::max(model.qk_head_dim(), latent_width_);
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
    allocate(weights);
  } catch (...) {
    cudaStreamDestroy(stream_);
    throw;
  }
}

CudaMlaLayer::~CudaMlaLayer() {
  cudaStreamSynchronize(stream_);  // no kernel may outlive the buffers it writes
  cublas_.reset();
  cudaStreamDestroy(stream_);
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
  memory_.weights_bytes = wq_.bytes() + wq_a_.bytes() + wq_b_.bytes() + wkv_a_.bytes() + wkv_b_.bytes() + wo_.bytes() +
                          static_cast<int64_t>(q_norm_.bytes() + kv_norm_.bytes());
}

// The latent cache, zeroed, and the RoPE tables of every position it can hold.
void CudaMlaLayer::allocate_cache() {
  const ModelArgs& m = model_;
  const RopeTable table = make_rope_table(rope_params(m), m.max_seq_len);
  rope_cos_ = DeviceBuffer<float>(static_cast<int64_t>(table.cos.size()));
  rope_sin_ = DeviceBuffer<float>(static_cast<int64_t>(table.sin.size()));
  rope_cos_.upload(table.cos, stream_);
  rope_sin_.upload(table.sin, stream_);
  kv_cache_ = DeviceBuffer<float>(m.max_batch_size * m.max_seq_len * latent_width_);
  CUDA_CHECK(cudaMemsetAsync(kv_cache_.data(), 0, kv_cache_.bytes(), stream_));
  memory_.kv_cache_bytes = static_cast<int64_t>(kv_cache_.bytes() + rope_cos_.bytes() + rope_sin_.bytes());
}

// The step's buffers at the limits, for the formulations run.formulation allows.
void CudaMlaLayer::allocate_activations() {
  const ModelArgs& m = model_;
  const int64_t heads = shard_.n_local_heads;
  const int64_t dq = m.qk_head_dim();
  const int64_t C = m.kv_lora_rank;
  const int64_t dn = m.qk_nope_head_dim;
  const int64_t dv = m.v_head_dim;
  const int64_t tokens = limits_.max_batch * limits_.max_step_len;
  const int64_t kv_rows = limits_.max_batch * limits_.max_kv_len;
  const bool naive_possible = run_.formulation != FormulationChoice::Absorb;
  const bool absorb_possible = run_.formulation != FormulationChoice::Naive;
  if (round_bf16_) {
    x_bf16_ = DeviceBuffer<__nv_bfloat16>(tokens * m.dim);
    // The widest activation operand of any GEMM but the first two (x has its own): q_latent, q
    // (absorb), o_latent (absorb), the cache rows (naive expansion) or o.
    int64_t staging = tokens * std::max({m.q_lora_rank, heads * dq, heads * C, heads * dv});
    if (naive_possible) staging = std::max(staging, kv_rows * C);
    bf16_staging_ = DeviceBuffer<__nv_bfloat16>(staging);
  }
  if (m.q_lora_rank > 0) q_latent_ = DeviceBuffer<float>(tokens * m.q_lora_rank);
  q_ = DeviceBuffer<float>(tokens * heads * dq);
  kv_ = DeviceBuffer<float>(tokens * latent_width_);
  o_ = DeviceBuffer<float>(tokens * heads * dv);
  if (absorb_possible) {
    q_absorbed_ = DeviceBuffer<float>(tokens * heads * latent_width_);
    o_latent_ = DeviceBuffer<float>(tokens * heads * C);
  }
  if (naive_possible) {
    kv_expanded_ = DeviceBuffer<float>(kv_rows * heads * (dn + dv));
    keys_ = DeviceBuffer<float>(kv_rows * heads * dq);
  }
  memory_.activation_bytes =
      static_cast<int64_t>(x_bf16_.bytes() + bf16_staging_.bytes() + q_latent_.bytes() + q_.bytes() + kv_.bytes() +
                           o_.bytes() + q_absorbed_.bytes() + o_latent_.bytes() + kv_expanded_.bytes() + keys_.bytes());
}

// The standard path's score buffers, where a step may take that path.
void CudaMlaLayer::allocate_scores() {
  const bool absorb_possible = run_.formulation != FormulationChoice::Naive;
  // The standard path serves a step when asked to, when the step has a mask, or when its kv_len
  // passes fast_path_max_len: only then are score buffers needed.
  const bool standard_possible =
      run_.attention == AttentionChoice::Standard || limits_.mask || limits_.max_kv_len > run_.fast_path_max_len;
  // `auto` may also send a decode step to the standard path (decode_prefers_standard).
  const bool decode_standard_possible = run_.attention == AttentionChoice::Auto && absorb_possible;
  if (standard_possible || decode_standard_possible) {
    AttentionParams widest;
    widest.n_heads = shard_.n_local_heads;
    widest.seq = limits_.max_step_len;
    widest.kv_len = limits_.max_kv_len;
    widest.round_to_bf16 = round_bf16_;
    widest.score_split = absorb_possible ? model_.kv_lora_rank : 0;
    const int64_t chunk = attention_standard_cuda_query_chunk(widest, run_.score_chunk_bytes);
    int64_t floats = standard_possible ? attention_standard_cuda_workspace_floats(widest, chunk) : 0;
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
  memory_.attention_workspace_bytes = static_cast<int64_t>(scores_.bytes());
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
  if (rows * cols > bf16_staging_.size()) {
    throw std::logic_error("CudaMlaLayer: bf16 staging buffer too small for " + std::to_string(rows) + " x " +
                           std::to_string(cols));
  }
  f32_to_bf16_cuda({values, stride, bf16_staging_.data(), rows, cols}, stream_);
  g.a = bf16_staging_.data();
  g.lda = cols;
  g.operands = GemmOperands::BF16;
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
  if (batch < 1 || batch > limits_.max_batch || seq < 1 || seq > limits_.max_step_len || start_pos < 0 ||
      start_pos + seq > limits_.max_kv_len) {
    throw std::invalid_argument("CudaMlaLayer::forward: batch " + std::to_string(batch) + ", positions [" +
                                std::to_string(start_pos) + ", " + std::to_string(start_pos + seq) +
                                ") pass the limits the layer was sized for (batch " +
                                std::to_string(limits_.max_batch) + ", step " + std::to_string(limits_.max_step_len) +
                                ", kv_len " + std::to_string(limits_.max_kv_len) + ")");
  }
  check_step_follows_cache("CudaMlaLayer", batch, start_pos, cached_len_, cached_batch_);
  if (mask != nullptr && !limits_.mask) {
    throw std::invalid_argument("CudaMlaLayer::forward: a mask, but the layer was sized without one");
  }
  const int64_t tokens = batch * seq;
  const __nv_bfloat16* x_staged = nullptr;
  if (round_bf16_) {
    // DeepSeek's activations are bf16 from the embedding on: rounded once, read by two GEMMs.
    f32_to_bf16_cuda({x, model_.dim, x_bf16_.data(), tokens, model_.dim}, stream_);
    x_staged = x_bf16_.data();
  }
  project_queries(x, x_staged, tokens);
  project_latent(x, x_staged, batch, seq, start_pos);
  cached_len_ = start_pos + seq;
  cached_batch_ = start_pos == 0 ? batch : cached_batch_;

  StepReport report = plan_step_report(model_, run_, shard_.n_local_heads, batch, seq, start_pos, mask != nullptr);
  if (run_.attention == AttentionChoice::Auto && decode_prefers_standard(report.plan, seq)) {
    report.plan.path = AttentionPath::Standard;
    report.plan.reason +=
        "; on the GPU a decode step takes the standard path, which batches the sequences into "
        "cuBLAS GEMMs (the fast kernel measured slower for decode)";
  }
  attend(report.plan, batch, seq, start_pos, mask, mask_stride, report);
  const int64_t o_width = shard_.n_local_heads * model_.v_head_dim;
  linear(o_.data(), o_width, wo_, tokens, y_partial, model_.dim);
  return report;
}

// The fast kernel gives a decode step over the shared cache one block per sequence (its 16-row
// tile holds the heads), and each block walks the whole cache through its stages; the standard
// path batches the sequences into cuBLAS GEMMs that spread over the GPU, and measured faster at
// every batch tried (docs/cuda_backend.md, "Measured on an H100"). So `auto` sends GPU decode
// steps to the standard path until the fast kernel splits a sequence's work over more blocks.
bool CudaMlaLayer::decode_prefers_standard(const StepPlan& plan, int64_t seq) const {
  return plan.path == AttentionPath::Fast && plan.formulation == Formulation::Absorb && seq == 1 && scores_.size() > 0;
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

// docs/design.md steps 2-4: kv = wkv_a(x) -> [c_n = rmsnorm(c) | k_pe = rope(k_pe)] into the cache; RoPE
// on each head's q_pe.
void CudaMlaLayer::project_latent(const float* x, const __nv_bfloat16* x_staged, int64_t batch, int64_t seq,
                                  int64_t start_pos) {
  const int64_t tokens = batch * seq;
  const int64_t C = model_.kv_lora_rank;
  const int64_t dq = model_.qk_head_dim();
  linear(x, model_.dim, wkv_a_, tokens, kv_.data(), latent_width_, x_staged);
  rmsnorm_cuda({kv_.data(), latent_width_, kv_norm_.data(), kv_.data(), latent_width_, tokens, C, 1e-6f, round_bf16_},
               stream_);

  RopeCudaParams rope;
  rope.batch = batch;
  rope.seq = seq;
  rope.start_pos = start_pos;
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

  kv_cache_append_cuda(
      {kv_.data(), latent_width_, kv_cache_.data(), model_.max_seq_len, latent_width_, batch, seq, start_pos}, stream_);
}

void CudaMlaLayer::attend(const StepPlan& plan, int64_t batch, int64_t seq, int64_t start_pos, const float* mask,
                          int64_t mask_stride, StepReport& report) {
  const int64_t tokens = batch * seq;
  const int64_t heads = shard_.n_local_heads;
  const AttentionStep step{batch, seq, start_pos, heads, mask, mask_stride, round_bf16_};
  AttentionParams p;
  if (plan.formulation == Formulation::Absorb) {
    if (q_absorbed_.size() == 0) throw std::logic_error("CudaMlaLayer: absorb planned but run.formulation is naive");
    absorb_queries(tokens);
    p = absorb_attention_params(model_, step, q_absorbed_.data(), kv_cache_.data(), o_latent_.data());
  } else {
    if (keys_.size() == 0) throw std::logic_error("CudaMlaLayer: naive planned but run.formulation is absorb");
    expand_keys_values(batch, start_pos + seq);
    p = naive_attention_params(model_, step, q_.data(), keys_.data(), kv_expanded_.data(), o_.data());
  }
  if (plan.path == AttentionPath::Fast) {
    attention_fast_cuda(p, stream_);
    report.attention_workspace_bytes = 0;  // scores stay in shared memory
  } else {
    if (scores_.size() == 0) throw std::logic_error("CudaMlaLayer: standard path planned but no score buffer sized");
    const int64_t chunk = attention_standard_cuda_query_chunk(
        p, score_buffer_floats_ * static_cast<int64_t>(sizeof(float)) * (attention_uses_split_scores(p) ? 2 : 1));
    const int64_t sequences = attention_standard_cuda_sequences_per_call(p, score_buffer_floats_);
    attention_standard_cuda(*cublas_, p, chunk, scores_.data(),
                            attention_uses_split_scores(p) ? scores_.data() + score_buffer_floats_ : nullptr,
                            sequences);
    report.attention_workspace_bytes =
        attention_standard_cuda_workspace_floats(p, chunk, sequences) * static_cast<int64_t>(sizeof(float));
  }
  if (plan.formulation == Formulation::Absorb) absorb_outputs(tokens);
}

// docs/design.md step 5, absorb: q_lat[h] = Wk[h]^T q_nope[h] (one batched GEMM over heads), next to q_pe[h].
void CudaMlaLayer::absorb_queries(int64_t tokens) {
  const int64_t heads = shard_.n_local_heads;
  const int64_t C = model_.kv_lora_rank;
  const int64_t dn = model_.qk_nope_head_dim;
  const int64_t dq = model_.qk_head_dim();
  const int64_t head_rows = dn + model_.v_head_dim;
  GemmCudaParams g;
  g.m = tokens;
  g.n = C;
  g.k = dn;
  set_activation_operand(g, q_.data(), tokens, heads * dq, heads * dq);
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
  q_pe.src = q_.data() + dn;
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
void CudaMlaLayer::absorb_outputs(int64_t tokens) {
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
  g.c = o_.data();
  g.ldc = heads * dv;
  g.stride_c = dv;
  g.batch = heads;
  gemm_cuda(*cublas_, g);
  if (round_bf16_) round_rows(o_.data(), tokens, heads * dv, 1, 0, heads * dv);
}

// docs/design.md step 5, naive, from the one latent cache (as the CPU layer): [k_nope | v] = wkv_b c_n
// for every cached position, and k = [k_nope | k_pe] per head. One GEMM and one copy per part
// for the whole batch: per-sequence launches cost more than the work at decode-sized steps.
void CudaMlaLayer::expand_keys_values(int64_t batch, int64_t kv_len) {
  const int64_t heads = shard_.n_local_heads;
  const int64_t C = model_.kv_lora_rank;
  const int64_t dn = model_.qk_nope_head_dim;
  const int64_t dq = model_.qk_head_dim();
  const int64_t head_rows = dn + model_.v_head_dim;
  const int64_t kv_width = heads * head_rows;
  const int64_t cache_batch_stride = model_.max_seq_len * latent_width_;
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
    // dense bf16 operand.
    if (batch * kv_len * C > bf16_staging_.size()) {
      throw std::logic_error("CudaMlaLayer: bf16 staging buffer too small for the expansion");
    }
    f32_to_bf16_cuda(
        {kv_cache_.data(), latent_width_, bf16_staging_.data(), batch * kv_len, C, kv_len, cache_batch_stride},
        stream_);
    g.m = batch * kv_len;
    g.a = bf16_staging_.data();
    g.lda = C;
    g.operands = GemmOperands::BF16;
  } else {
    g.m = kv_len;
    g.a = kv_cache_.data();
    g.lda = latent_width_;
    g.stride_a = cache_batch_stride;
    g.stride_c = kv_len * kv_width;
    g.batch = batch;
  }
  gemm_cuda(*cublas_, g);
  if (round_bf16_) round_rows(kv_expanded_.data(), batch * kv_len, kv_width, 1, 0, kv_width);

  StridedCopyParams k_pe;  // the one rope key of each position, repeated for every head
  k_pe.src = kv_cache_.data() + C;
  k_pe.src_batch_stride = cache_batch_stride;
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
