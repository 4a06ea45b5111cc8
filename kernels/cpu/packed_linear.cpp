#include "kernels/cpu/packed_linear.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <vector>

#if MLA_HAVE_DNNL
#include <dnnl.hpp>
#endif

#include "kernels/cpu/aligned_vector.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/fp8.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/skinny_linear.h"
#include "kernels/cpu/vector_ops.h"

namespace mla {

bool have_onednn() { return MLA_HAVE_DNNL != 0; }

#if MLA_HAVE_DNNL
namespace {

using dnnl_dt = dnnl::memory::data_type;
using dnnl_tag = dnnl::memory::format_tag;

dnnl::cpu_isa onednn_isa(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::Avx2: return dnnl::cpu_isa::avx2;
    case CpuIsa::Avx512: return dnnl::cpu_isa::avx512_core;
    case CpuIsa::Avx512Bf16: return dnnl::cpu_isa::avx512_core_bf16;
    case CpuIsa::Amx: return dnnl::cpu_isa::avx512_core_amx;
    case CpuIsa::Portable: break;
  }
  return dnnl::cpu_isa::all;
}

// One engine for the process. oneDNN fixes its ISA limit at its first use, so that is where ours
// is applied.
dnnl::engine& onednn_engine() {
  static dnnl::engine engine = [] {
    dnnl::set_max_cpu_isa(onednn_isa(cpu_isa()));
    return dnnl::engine(dnnl::engine::kind::cpu, 0);
  }();
  return engine;
}

[[noreturn]] void rethrow_onednn(const char* call, int64_t out_features, int64_t in_features, const dnnl::error& e) {
  throw std::runtime_error(std::string("oneDNN ") + call + " for a linear layer [" + std::to_string(out_features) +
                           " x " + std::to_string(in_features) + "]: " + e.what());
}

}  // namespace
#endif

struct PackedLinear::Impl {
  LinearPrecision precision = LinearPrecision::FP32;
  // The bits skinny_linear streams for steps of up to kSkinnyMaxRows rows (F32: none kept): in
  // fp32 compute, those of a bf16 or fp8 weight; in bf16 compute, always the bf16 weight.
  WeightCodes streamed = WeightCodes::F32;
  AlignedVector<uint16_t> bf16_bits;
  AlignedVector<uint8_t> fp8_codes;
  std::vector<float> fp8_scales;
  int64_t scale_cols = 0;
  bool fp8_round_to_bf16 = false;
  bool gemm_ready = false;          // the GEMM operand below exists (built on first need)
  mutable std::mutex mutex;         // guards building it and the primitive cache
  AlignedVector<float> weight_f32;  // the BLAS path's operand
  // Scratch of forward, here and below: one call at a time per weight, as a layer's step calls it.
  mutable AlignedVector<char> x_dense;   // a strided or bf16 x made dense, [rows, in_features]
  mutable AlignedVector<float> y_dense;  // y before it is scattered to a strided destination or made bits

#if MLA_HAVE_DNNL
  // A primitive is specific to the number of rows (src and dst are dense); the last
  // kMaxPrimitives shapes are kept, enough for the decode and prefill steps of a run.
  static constexpr size_t kMaxPrimitives = 32;
  struct Primitive {
    int64_t rows = 0;
    bool bf16_dst = false;
    dnnl::matmul matmul;
    dnnl::matmul::primitive_desc desc;
    dnnl::memory weights;  // packed_weights, or its copy in the layout this primitive wants
  };
  bool use_onednn = false;
  // oneDNN's operand: the weight reordered into its blocked layout, or (plain_view) a view of
  // bf16_bits in the plain layout, which holds no bytes of its own.
  dnnl::memory packed_weights;
  bool plain_view = false;
  std::string onednn_impl;
  mutable std::deque<Primitive> primitives;  // a deque: references stay valid as it grows
  mutable AlignedVector<uint16_t> y_bf16;    // y as oneDNN rounds it to bf16, before it is widened

  dnnl_dt operand_type() const { return precision == LinearPrecision::BF16 ? dnnl_dt::bf16 : dnnl_dt::f32; }

  // src and dst are dense: forward gathers a strided x and scatters a strided y.
  // bf16_dst: oneDNN rounds y to bf16 as it stores it (round to nearest even, as round_to_bf16),
  // which halves what the GEMM writes and saves a rounding pass over y.
  dnnl::matmul::primitive_desc describe(int64_t rows, int64_t in, int64_t out, const dnnl::memory::desc& weights,
                                        bool bf16_dst = false) const {
    const dnnl::memory::desc src({rows, in}, operand_type(), dnnl_tag::ab);
    const dnnl::memory::desc dst({rows, out}, bf16_dst ? dnnl_dt::bf16 : dnnl_dt::f32, dnnl_tag::ab);
    return dnnl::matmul::primitive_desc(dnnl::matmul::desc(src, weights, dst), onednn_engine());
  }

  const Primitive& primitive(int64_t rows, int64_t in, int64_t out, bool bf16_dst) const {
    std::lock_guard<std::mutex> lock(mutex);
    for (const Primitive& p : primitives) {
      if (p.rows == rows && p.bf16_dst == bf16_dst) return p;
    }
    Primitive created;
    created.rows = rows;
    created.bf16_dst = bf16_dst;
    try {
      // The weight was packed for oneDNN's choice at 256 rows; the choice has not depended on the
      // rows on the CPUs we have seen, but where it does, this shape gets its own copy.
      dnnl::matmul::primitive_desc pd;
      try {
        pd = describe(rows, in, out, packed_weights.get_desc(), bf16_dst);
        created.weights = packed_weights;
      } catch (const dnnl::error&) {
        pd = describe(rows, in, out, dnnl::memory::desc({in, out}, operand_type(), dnnl_tag::any), bf16_dst);
        created.weights = dnnl::memory(pd.weights_desc(), onednn_engine());
        dnnl::stream stream(onednn_engine());
        dnnl::memory source = packed_weights;  // a handle: the copy shares the buffer
        dnnl::reorder(source, created.weights).execute(stream, source, created.weights);
        stream.wait();
      }
      created.matmul = dnnl::matmul(pd);
      created.desc = pd;
    } catch (const dnnl::error& e) {
      rethrow_onednn("matmul primitive", out, in, e);
    }
    // Dropping the oldest invalidates only references to it, and none is held across steps.
    if (primitives.size() == kMaxPrimitives) primitives.pop_front();
    primitives.push_back(std::move(created));
    return primitives.back();
  }
#endif
};

PackedLinear::PackedLinear() = default;
PackedLinear::PackedLinear(PackedLinear&&) noexcept = default;
PackedLinear& PackedLinear::operator=(PackedLinear&&) noexcept = default;
PackedLinear::~PackedLinear() = default;

// The GEMM operand from fp32 values: oneDNN's packed layout, or an fp32 copy for sgemm.
void PackedLinear::prepare_gemm(const float* weight) const {
  const int64_t count = out_features_ * in_features_;
#if MLA_HAVE_DNNL
  if (cpu_isa() != CpuIsa::Portable && count > 0) {
    // oneDNN has no kernel for some ISA and data type pairs (bf16 below AVX-512): it refuses the
    // primitive, or answers with reference loops. sgemm is faster than those.
    dnnl::matmul::primitive_desc pd;
    try {
      pd = impl_->describe(256, in_features_, out_features_,
                           dnnl::memory::desc({in_features_, out_features_}, impl_->operand_type(), dnnl_tag::any));
    } catch (const dnnl::error&) {
      pd = {};
    }
    const std::string impl_name = pd ? pd.impl_info_str() : "";
    if (!impl_name.empty() && impl_name.rfind("ref", 0) != 0) {
      try {
        // W [out, in] row-major is the [in, out] matrix oneDNN multiplies by, in layout "ba".
        const dnnl::memory::desc plain({in_features_, out_features_}, dnnl_dt::f32, dnnl_tag::ba);
        // In bf16 on AMX, a weight of 2048+ input features is handed to oneDNN as it is stored,
        // plain, as PyTorch hands it: its brgemm then copies blocks as it goes. The layer's bf16
        // prefill at kv 64 was faster so (17.4-17.8 against 18.9-19.5 ms, two alternating runs;
        // kv 128 and 256 within noise), and one copy of the weight serves every step: oneDNN would
        // copy all of it on each few-row call (4-row decode 5.3 ms), so those steps stream these
        // bits with skinny_linear, on AMX tiles straight from this layout (2.0 -> 1.7-1.8 ms).
        // The narrower weights (wq_b, wkv_b) were 10-20% faster prepacked, and so is every fp32 one.
        if (impl_->precision == LinearPrecision::BF16 && impl_->streamed == WeightCodes::BF16 && in_features_ >= 2048 &&
            impl_name.find("amx") != std::string::npos) {
          impl_->packed_weights =
              dnnl::memory(dnnl::memory::desc({in_features_, out_features_}, dnnl_dt::bf16, dnnl_tag::ba),
                           onednn_engine(), impl_->bf16_bits.data());
          impl_->plain_view = true;
          impl_->onednn_impl = impl_name + ", plain weight";
          impl_->use_onednn = true;
          impl_->gemm_ready = true;
          return;
        }
        impl_->packed_weights = dnnl::memory(pd.weights_desc(), onednn_engine());
        dnnl::memory source(plain, onednn_engine(), const_cast<float*>(weight));
        dnnl::stream stream(onednn_engine());
        dnnl::reorder(source, impl_->packed_weights).execute(stream, source, impl_->packed_weights);
        stream.wait();
      } catch (const dnnl::error& e) {
        rethrow_onednn("weight packing", out_features_, in_features_, e);
      }
      impl_->onednn_impl = impl_name;
      impl_->use_onednn = true;
      impl_->gemm_ready = true;
      return;
    }
  }
#endif
  impl_->weight_f32.assign(weight, weight + count);
  impl_->gemm_ready = true;
}

PackedLinear::PackedLinear(const float* weight, int64_t out_features, int64_t in_features, LinearPrecision precision,
                           const Fp8Blocks* fp8)
    : out_features_(out_features), in_features_(in_features), impl_(std::make_unique<Impl>()) {
  impl_->precision = precision;
  const int64_t count = out_features * in_features;
  if (precision == LinearPrecision::BF16 && count > 0) {
    // Its values are bf16 numbers: the bits are the weight, exactly.
    impl_->streamed = WeightCodes::BF16;
    impl_->bf16_bits.resize(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) impl_->bf16_bits[i] = f32_to_bf16_bits(weight[i]);
    return;  // the GEMM operand, as below, waits for a step with more rows
  }
  if (precision == LinearPrecision::FP32 && count > 0) {
    // fp32 compute on a weight stored in fewer bits: keep those bits for the streamed kernel.
    const int64_t scale_count = fp8 != nullptr ? ((out_features + 127) / 128) * fp8->scale_cols : 0;
    const bool fp8_exact = fp8 != nullptr && std::all_of(fp8->scales, fp8->scales + scale_count, [](float scale) {
                             return std::isfinite(scale) && std::fabs(scale) < 256.0f;  // skinny_linear's bound
                           });
    if (fp8_exact) {
      impl_->streamed = WeightCodes::FP8_E4M3;
      impl_->fp8_codes.assign(fp8->codes, fp8->codes + count);
      impl_->fp8_scales.assign(fp8->scales, fp8->scales + scale_count);
      impl_->scale_cols = fp8->scale_cols;
      impl_->fp8_round_to_bf16 = fp8->round_to_bf16;
    } else if (std::all_of(weight, weight + count,
                           [](float value) { return round_to_bf16(value) == value || std::isnan(value); })) {
      impl_->streamed = WeightCodes::BF16;
      impl_->bf16_bits.resize(static_cast<size_t>(count));
      for (int64_t i = 0; i < count; ++i) impl_->bf16_bits[i] = f32_to_bf16_bits(weight[i]);
    }
    // The GEMM operand waits for a step with more rows than the streamed kernel takes: a run that
    // only decodes never holds it.
    if (impl_->streamed != WeightCodes::F32) return;
  }
  prepare_gemm(weight);
}

// The stored bits back to the fp32 values they stand for (exactly: bf16 widened, fp8 as
// fp8_dequant_blocks computes it).
std::vector<float> PackedLinear::streamed_values() const {
  std::vector<float> values(static_cast<size_t>(out_features_ * in_features_));
  if (impl_->streamed == WeightCodes::BF16) {
    for (size_t i = 0; i < values.size(); ++i) values[i] = bf16_bits_to_f32(impl_->bf16_bits[i]);
  } else {
    Fp8DequantParams params;
    params.weight = impl_->fp8_codes.data();
    params.scale = impl_->fp8_scales.data();
    params.out = values.data();
    params.rows = out_features_;
    params.cols = in_features_;
    params.scale_cols = impl_->scale_cols;
    params.round_to_bf16 = impl_->fp8_round_to_bf16;
    fp8_dequant_blocks(params);
  }
  return values;
}

void PackedLinear::forward(const PackedLinearCall& call) const {
  if (call.rows == 0 || out_features_ == 0) return;
  if (call.x_bf16 != nullptr && impl_->precision != LinearPrecision::BF16) {
    throw std::invalid_argument("PackedLinear::forward: x_bf16 given to an fp32 linear layer");
  }
  if (call.y_bf16 != nullptr && (impl_->precision != LinearPrecision::BF16 || !call.round_to_bf16)) {
    throw std::invalid_argument(
        "PackedLinear::forward: y_bf16 asked of a linear layer whose output is not rounded to bf16");
  }
  const bool streamed = impl_->streamed != WeightCodes::F32 && call.rows <= kSkinnyMaxRows;
  if (!streamed) {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    if (!impl_->gemm_ready) prepare_gemm(streamed_values().data());
  }
#if MLA_HAVE_DNNL
  const bool onednn = !streamed && impl_->use_onednn;
#else
  const bool onednn = false;
#endif
  if (call.y_bf16 != nullptr && !onednn) {
    // oneDNN writes the bits itself; the other paths write fp32 y, whose bits are then exact.
    const int64_t out = out_features_;
    if (static_cast<int64_t>(impl_->y_dense.size()) < call.rows * out)
      impl_->y_dense.resize(static_cast<size_t>(call.rows * out));
    PackedLinearCall fp32_y = call;
    fp32_y.y_bf16 = nullptr;
    fp32_y.y = impl_->y_dense.data();
    fp32_y.y_stride = out;
    forward(fp32_y);
    for (int64_t row = 0; row < call.rows; ++row)
      bf16_values_to_bits(fp32_y.y + row * out, call.y_bf16 + row * out, out);
    return;
  }
  if (!streamed && !onednn) {  // gemm() counts its FLOPs and linear() rounds
    std::vector<float> widened;
    if (call.x_bf16 != nullptr) {
      widened.resize(static_cast<size_t>(call.rows * in_features_));
      for (size_t i = 0; i < widened.size(); ++i) widened[i] = bf16_bits_to_f32(call.x_bf16[i]);
    }
    LinearParams params;
    params.x = call.x_bf16 != nullptr ? widened.data() : call.x;
    params.x_stride = call.x_bf16 != nullptr ? in_features_ : call.x_stride;
    params.weight = impl_->weight_f32.data();
    params.y = call.y;
    params.y_stride = call.y_stride;
    params.rows = call.rows;
    params.in_features = in_features_;
    params.out_features = out_features_;
    params.round_to_bf16 = call.round_to_bf16;
    linear(params);
    return;
  }
  record_gemm_flop(2 * call.rows * out_features_ * in_features_);
  if (!streamed) {
    forward_onednn(call);  // rounds as it writes y
    return;
  }
  forward_streamed(call);
  if (call.round_to_bf16) {
    for (int64_t row = 0; row < call.rows; ++row) round_to_bf16_inplace(call.y + row * call.y_stride, out_features_);
  }
}

void PackedLinear::forward_streamed(const PackedLinearCall& call) const {
  SkinnyLinearParams params;
  params.x = call.x;
  params.x_stride = call.x_stride;
  if (impl_->precision == LinearPrecision::BF16 && skinny_linear_bf16_products()) {
    // bf16 x for the pairwise bf16 products: the layer's bits, or x's values (bf16 numbers) as bits.
    params.x_bf16 = call.x_bf16;
    if (params.x_bf16 == nullptr) {
      const size_t bytes = static_cast<size_t>(call.rows * in_features_) * sizeof(uint16_t);
      if (impl_->x_dense.size() < bytes) impl_->x_dense.resize(bytes);
      auto* bits = reinterpret_cast<uint16_t*>(impl_->x_dense.data());
      for (int64_t row = 0; row < call.rows; ++row) {
        bf16_values_to_bits(call.x + row * call.x_stride, bits + row * in_features_, in_features_);
      }
      params.x_bf16 = bits;
    }
    params.x = nullptr;
  } else if (call.x_bf16 != nullptr) {
    // The fp32 bodies: x's bits widened into the scratch (fp32 x is passed as it is).
    const size_t count = static_cast<size_t>(call.rows * in_features_);
    if (impl_->x_dense.size() < count * sizeof(float)) impl_->x_dense.resize(count * sizeof(float));
    auto* widened = reinterpret_cast<float*>(impl_->x_dense.data());
    for (int64_t row = 0; row < call.rows; ++row) {
      bf16_bits_to_f32_copy(call.x_bf16 + row * in_features_, widened + row * in_features_, in_features_);
    }
    params.x = widened;
    params.x_stride = in_features_;
  }
  params.rows = call.rows;
  params.codes = impl_->streamed;
  params.weight = impl_->streamed == WeightCodes::BF16 ? static_cast<const void*>(impl_->bf16_bits.data())
                                                       : static_cast<const void*>(impl_->fp8_codes.data());
  params.block_scales = impl_->fp8_scales.data();
  params.scale_cols = impl_->scale_cols;
  params.round_fp8_to_bf16 = impl_->fp8_round_to_bf16;
  params.y = call.y;
  params.y_stride = call.y_stride;
  params.out_features = out_features_;
  params.in_features = in_features_;
  skinny_linear(params);
}

void PackedLinear::forward_onednn(const PackedLinearCall& call) const {
#if MLA_HAVE_DNNL
  // oneDNN 2.6's brgemm kernels read a dense src (a strided one falls back to reference loops,
  // ~100x slower), so a strided x is gathered first: rows x in floats, small next to the GEMM.
  const int64_t in = in_features_;
  const bool bf16 = impl_->precision == LinearPrecision::BF16;
  void* src_handle = const_cast<float*>(call.x);
  if (bf16 && call.x_bf16 != nullptr) {
    src_handle = const_cast<uint16_t*>(call.x_bf16);
  } else if (bf16 || call.x_stride != in) {
    const size_t bytes = static_cast<size_t>(call.rows * in) * (bf16 ? sizeof(uint16_t) : sizeof(float));
    if (impl_->x_dense.size() < bytes) impl_->x_dense.resize(bytes);
    src_handle = impl_->x_dense.data();
    const float* x = call.x;
    const int64_t x_stride = call.x_stride;
    auto* dense_f32 = reinterpret_cast<float*>(impl_->x_dense.data());
    auto* dense_bf16 = reinterpret_cast<uint16_t*>(impl_->x_dense.data());
#pragma omp parallel for schedule(static) if (call.rows * in > 65536)
    for (int64_t row = 0; row < call.rows; ++row) {
      const float* x_row = x + row * x_stride;
      if (bf16) {
        bf16_values_to_bits(x_row, dense_bf16 + row * in, in);
      } else {
        std::memcpy(dense_f32 + row * in, x_row, static_cast<size_t>(in) * sizeof(float));
      }
    }
  }
  // In bf16, oneDNN stores y rounded to bf16 in a dense scratch, widened into y after (exactly):
  // 6 bytes moved per element where an fp32 store and a rounding pass moved 12.
  const bool bf16_dst = bf16 && call.round_to_bf16;
  const int64_t out = out_features_;
  void* dst_handle = call.y;
  if (call.y_bf16 != nullptr) {
    dst_handle = call.y_bf16;  // bf16_dst: forward() allows y_bf16 only with round_to_bf16
  } else if (bf16_dst) {
    if (static_cast<int64_t>(impl_->y_bf16.size()) < call.rows * out)
      impl_->y_bf16.resize(static_cast<size_t>(call.rows * out));
    dst_handle = impl_->y_bf16.data();
  } else if (call.y_stride != out || call.round_to_bf16) {
    if (static_cast<int64_t>(impl_->y_dense.size()) < call.rows * out)
      impl_->y_dense.resize(static_cast<size_t>(call.rows * out));
    dst_handle = impl_->y_dense.data();
  }
  const Impl::Primitive& p = impl_->primitive(call.rows, in, out, bf16_dst);
  try {
    dnnl::stream stream(onednn_engine());
    dnnl::memory src(p.desc.src_desc(), onednn_engine(), src_handle);
    dnnl::memory dst(p.desc.dst_desc(), onednn_engine(), dst_handle);
    p.matmul.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, p.weights}, {DNNL_ARG_DST, dst}});
    stream.wait();
  } catch (const dnnl::error& e) {
    rethrow_onednn("matmul", out_features_, in, e);
  }
  if (dst_handle == call.y || dst_handle == call.y_bf16) return;
  // The widening (or rounding) and the scatter to a strided y in one pass, threaded and
  // vectorised: on the layer's bf16 prefill shapes, serial scalar passes around the GEMM took 13
  // of 33 ms.
  const uint16_t* y_bf16 = impl_->y_bf16.data();
  const float* y_dense = impl_->y_dense.data();
#pragma omp parallel for schedule(static) if (call.rows * out > 65536)
  for (int64_t row = 0; row < call.rows; ++row) {
    float* y_row = call.y + row * call.y_stride;
    if (bf16_dst) {
      bf16_bits_to_f32_copy(y_bf16 + row * out, y_row, out);
    } else if (call.round_to_bf16) {
      round_to_bf16_copy(y_dense + row * out, y_row, out);
    } else {
      std::memcpy(y_row, y_dense + row * out, static_cast<size_t>(out) * sizeof(float));
    }
  }
#else
  (void)call;  // forward() takes this path only when oneDNN is linked
#endif
}

int64_t PackedLinear::bytes() const {
  if (impl_ == nullptr) return 0;
  int64_t bytes = streamed_bytes();
#if MLA_HAVE_DNNL
  if (impl_->use_onednn && !impl_->plain_view)
    bytes += static_cast<int64_t>(impl_->packed_weights.get_desc().get_size());
#endif
  return bytes + static_cast<int64_t>(impl_->weight_f32.size() * sizeof(float));
}

int64_t PackedLinear::bytes_read(int64_t rows) const {
  if (impl_ == nullptr) return 0;
  if (impl_->streamed != WeightCodes::F32 && rows <= kSkinnyMaxRows) return streamed_bytes();
  const int64_t element = impl_->precision == LinearPrecision::BF16 ? 2 : 4;
  return bytes() - streamed_bytes() > 0 ? bytes() - streamed_bytes() : out_features_ * in_features_ * element;
}

int64_t PackedLinear::streamed_bytes() const {
  if (impl_ == nullptr) return 0;
  return static_cast<int64_t>(impl_->bf16_bits.size() * sizeof(uint16_t) + impl_->fp8_codes.size() +
                              impl_->fp8_scales.size() * sizeof(float));
}

std::string PackedLinear::implementation() const {
  if (impl_ == nullptr) return "none";
  const char* precision = impl_->precision == LinearPrecision::BF16 ? "bf16" : "fp32";
  std::string streamed;
  if (impl_->streamed != WeightCodes::F32) {
    streamed = std::string("; up to ") + std::to_string(kSkinnyMaxRows) +
               " rows: " + (impl_->streamed == WeightCodes::BF16 ? "bf16" : "fp8") + " weights streamed (" +
               cpu_isa_name(cpu_isa()) + ")";
  }
#if MLA_HAVE_DNNL
  // Without a GEMM operand yet, name what prepare_gemm will choose.
  if (impl_->use_onednn || (!impl_->gemm_ready && cpu_isa() != CpuIsa::Portable)) {
    return "oneDNN " + (impl_->use_onednn ? impl_->onednn_impl : std::string("matmul")) + ", " + precision + streamed;
  }
#endif
  return blas_description().substr(0, blas_description().find(' ')) + " sgemm, " + precision + streamed;
}

}  // namespace mla
