#include "runtime/io/weights.h"

#include <cmath>
#include <functional>
#include <sstream>

#include "kernels/cpu/bf16.h"
#include "kernels/cpu/fp8.h"
#include "runtime/base/errors.h"
#include "runtime/base/random_values.h"
#include "runtime/io/checkpoint.h"

namespace mla {

int64_t LayerWeights::bytes() const {
  int64_t count = 0;
  for (const auto* tensor : {&wq, &wq_a, &q_norm, &wq_b, &wkv_a, &kv_norm, &wkv_b, &wo}) {
    count += static_cast<int64_t>(tensor->size());
  }
  int64_t fp8_bytes = 0;
  for (const auto& [name, weight] : fp8) {
    fp8_bytes += static_cast<int64_t>(weight.codes.size() + weight.scales.size() * sizeof(float));
  }
  return count * static_cast<int64_t>(sizeof(float)) + fp8_bytes;
}

namespace {

enum class Split { Replicated, RowsByHead, ColsByHead };

// One weight: its full shape, how ranks split it, and the slice this rank owns.
struct WeightSpec {
  std::string name;
  int64_t rows = 0;  // out_features (a norm: 1)
  int64_t cols = 0;  // in_features (a norm: its length)
  Split split = Split::Replicated;
  bool is_norm = false;
  std::vector<float> LayerWeights::*member = nullptr;
  Slice2D slice;  // of the full tensor
};

std::vector<WeightSpec> weight_specs(const ModelArgs& m, const HeadShard& shard) {
  const int64_t dq = m.qk_head_dim();
  const int64_t C = m.kv_lora_rank;
  const int64_t H = m.n_heads;
  std::vector<WeightSpec> specs;
  if (m.q_lora_rank == 0) {
    specs.push_back({"wq", H * dq, m.dim, Split::RowsByHead, false, &LayerWeights::wq, {}});
  } else {
    specs.push_back({"wq_a", m.q_lora_rank, m.dim, Split::Replicated, false, &LayerWeights::wq_a, {}});
    specs.push_back({"q_norm", 1, m.q_lora_rank, Split::Replicated, true, &LayerWeights::q_norm, {}});
    specs.push_back({"wq_b", H * dq, m.q_lora_rank, Split::RowsByHead, false, &LayerWeights::wq_b, {}});
  }
  specs.push_back({"wkv_a", C + m.qk_rope_head_dim, m.dim, Split::Replicated, false, &LayerWeights::wkv_a, {}});
  specs.push_back({"kv_norm", 1, C, Split::Replicated, true, &LayerWeights::kv_norm, {}});
  specs.push_back(
      {"wkv_b", H * (m.qk_nope_head_dim + m.v_head_dim), C, Split::RowsByHead, false, &LayerWeights::wkv_b, {}});
  specs.push_back({"wo", m.dim, H * m.v_head_dim, Split::ColsByHead, false, &LayerWeights::wo, {}});
  for (WeightSpec& spec : specs) {
    spec.slice = {0, spec.rows, 0, spec.cols};
    if (spec.split == Split::RowsByHead) {
      const int64_t per_head = spec.rows / H;
      spec.slice.row_begin = shard.head_begin * per_head;
      spec.slice.row_count = shard.n_local_heads * per_head;
    } else if (spec.split == Split::ColsByHead) {
      const int64_t per_head = spec.cols / H;
      spec.slice.col_begin = shard.head_begin * per_head;
      spec.slice.col_count = shard.n_local_heads * per_head;
    }
  }
  return specs;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

std::vector<int64_t> stored_shape(const WeightSpec& spec, bool presplit) {
  const int64_t rows = presplit ? spec.slice.row_count : spec.rows;
  const int64_t cols = presplit ? spec.slice.col_count : spec.cols;
  if (spec.is_norm) return {cols};
  return {rows, cols};
}

int64_t blocks(int64_t extent) { return (extent + kFp8BlockSize - 1) / kFp8BlockSize; }

// A split edge inside a 128 block would need a scale shared by two ranks (docs/design.md, Weights).
void check_block_edges(const WeightSpec& spec, const HeadShard& shard, const std::string& tensor_name) {
  const auto check = [&](int64_t begin, int64_t count, int64_t total, const char* axis) {
    const int64_t end = begin + count;
    if (begin % kFp8BlockSize != 0 || (end % kFp8BlockSize != 0 && end != total)) {
      throw UserError("tensor '" + tensor_name + "': rank " + std::to_string(shard.rank) + " of " +
                      std::to_string(shard.world) + " owns " + axis + " [" + std::to_string(begin) + ", " +
                      std::to_string(end) + ") of " + std::to_string(total) +
                      ", whose edges are not on a 128 block of the fp8 scales: choose a world size that splits "
                      "the heads on block edges");
    }
  };
  check(spec.slice.row_begin, spec.slice.row_count, spec.rows, "rows");
  check(spec.slice.col_begin, spec.slice.col_count, spec.cols, "columns");
}

void finish_values(std::vector<float>& values, const std::string& where, ComputeDType compute_dtype,
                   bool check_finite) {
  for (size_t i = 0; check_finite && i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      throw UserError(where + ": element " + std::to_string(i) + " of this rank's slice is not finite (" +
                      std::to_string(values[i]) + ")");
    }
  }
  if (compute_dtype == ComputeDType::BF16) round_to_bf16_inplace(values.data(), static_cast<int64_t>(values.size()));
}

// docs/design.md, Weights: code * scale, rounded to bf16 in bf16 compute and, by default, in fp32 compute
// too (weights.fp8_dequant: bf16, as DeepSeek's weight_dequant returns bf16).
bool fp8_rounds_to_bf16(ComputeDType compute_dtype, Fp8Dequant fp8_dequant) {
  return compute_dtype == ComputeDType::BF16 || fp8_dequant == Fp8Dequant::Bf16;
}

std::vector<float> dequantize(const std::vector<uint8_t>& codes, const std::vector<float>& scales, int64_t rows,
                              int64_t cols, int64_t scale_cols, bool round_to_bf16) {
  std::vector<float> values(codes.size());
  Fp8DequantParams params;
  params.weight = codes.data();
  params.scale = scales.data();
  params.out = values.data();
  params.rows = rows;
  params.cols = cols;
  params.scale_cols = scale_cols;
  params.round_to_bf16 = round_to_bf16;
  fp8_dequant_blocks(params);
  return values;
}

std::vector<float> read_checkpoint_weight(const Checkpoint& checkpoint, const WeightSpec& spec, const HeadShard& shard,
                                          ComputeDType compute_dtype, Fp8Dequant fp8_dequant, bool check_finite,
                                          std::string* storage_dtype, Fp8Weight* fp8_out) {
  std::string name;
  const SafetensorsFile* file = checkpoint.find_weight(spec.name, &name);
  if (file == nullptr) throw UserError(checkpoint.location() + ": missing tensor '" + name + "'");
  const TensorInfo& info = file->info(name);
  const std::string where = file->path() + ": tensor '" + name + "'";
  const std::vector<int64_t> expected = stored_shape(spec, checkpoint.presplit());
  if (info.shape != expected) {
    throw UserError(where + " has shape " + shape_string(info.shape) + ", expected " + shape_string(expected) +
                    " from the model section of the config");
  }
  *storage_dtype = dtype_name(info.dtype);
  const Slice2D slice = checkpoint.presplit() ? Slice2D{} : spec.slice;
  if (info.dtype != DType::F8_E4M3) {
    if (info.dtype != DType::F32 && info.dtype != DType::BF16 && info.dtype != DType::F16) {
      throw UserError(where + " has dtype " + dtype_name(info.dtype) + "; weights must be BF16, F16, F32 or F8_E4M3");
    }
    std::vector<float> values = file->read_f32(name, slice);
    finish_values(values, where, compute_dtype, check_finite);
    return values;
  }
  if (spec.is_norm) throw UserError(where + " is F8_E4M3, but norm weights are never fp8 (docs/design.md)");
  std::string scale_name;
  const SafetensorsFile* scale_file = checkpoint.find_scale(spec.name, &scale_name);
  if (scale_file == nullptr) throw UserError(where + " is fp8 but its scale '" + scale_name + "' is missing");
  const std::vector<int64_t> scale_shape = {blocks(expected[0]), blocks(expected[1])};
  if (scale_file->info(scale_name).shape != scale_shape) {
    throw UserError(scale_file->path() + ": tensor '" + scale_name + "' has shape " +
                    shape_string(scale_file->info(scale_name).shape) + ", expected " + shape_string(scale_shape) +
                    " (one scale per 128x128 block of '" + name + "')");
  }
  if (!checkpoint.presplit()) check_block_edges(spec, shard, name);
  const int64_t rows = checkpoint.presplit() ? expected[0] : spec.slice.row_count;
  const int64_t cols = checkpoint.presplit() ? expected[1] : spec.slice.col_count;
  std::vector<uint8_t> codes(static_cast<size_t>(rows * cols));
  file->read_raw(name, slice, codes.data());
  const Slice2D scale_slice{slice.row_begin / kFp8BlockSize, blocks(rows), slice.col_begin / kFp8BlockSize,
                            blocks(cols)};
  std::vector<float> scales = scale_file->read_f32(scale_name, scale_slice);
  const bool round_to_bf16 = fp8_rounds_to_bf16(compute_dtype, fp8_dequant);
  std::vector<float> values = dequantize(codes, scales, rows, cols, blocks(cols), round_to_bf16);
  finish_values(values, where, compute_dtype, check_finite);
  *storage_dtype = "F8_E4M3 (128x128 block scales)";
  *fp8_out = Fp8Weight{std::move(codes), std::move(scales), blocks(cols), round_to_bf16};
  return values;
}

// Random weights: a linear layer's values are U(-1, 1) / sqrt(in_features), norms 1 + U(-1, 1) / 4,
// rounded to bf16 (or, for fp8, quantized with a random block scale). Each value depends on the
// seed, the tensor and its index in the full tensor only (docs/design.md: the same at any world size).
std::vector<float> random_weight(const WeightsConfig& config, const WeightSpec& spec, ComputeDType compute_dtype,
                                 Fp8Weight* fp8_out) {
  const uint64_t key = random_stream_key(config.seed, spec.name);
  const int64_t rows = spec.slice.row_count;
  const int64_t cols = spec.slice.col_count;
  const auto global_index = [&](int64_t row, int64_t col) {
    return static_cast<uint64_t>((spec.slice.row_begin + row) * spec.cols + spec.slice.col_begin + col);
  };
  const float init_scale = 1.0f / std::sqrt(static_cast<float>(spec.cols));
  std::vector<float> values(static_cast<size_t>(rows * cols));
  if (spec.is_norm || config.dtype == WeightDType::BF16) {
    for (int64_t row = 0; row < rows; ++row) {
      for (int64_t col = 0; col < cols; ++col) {
        const float u = random_uniform(key, global_index(row, col));
        values[row * cols + col] = round_to_bf16(spec.is_norm ? 1.0f + 0.25f * u : u * init_scale);
      }
    }
    return values;
  }
  // fp8: codes for U(-448, 448), block scales init_scale / 448 * [0.5, 1).
  const uint64_t scale_key = random_stream_key(config.seed, spec.name + ".scale");
  const int64_t scale_cols = blocks(spec.cols);
  const int64_t local_scale_rows = blocks(rows), local_scale_cols = blocks(cols);
  std::vector<float> scales(static_cast<size_t>(local_scale_rows * local_scale_cols));
  for (int64_t r = 0; r < local_scale_rows; ++r) {
    for (int64_t c = 0; c < local_scale_cols; ++c) {
      const int64_t global_block =
          (spec.slice.row_begin / kFp8BlockSize + r) * scale_cols + spec.slice.col_begin / kFp8BlockSize + c;
      const float u = random_uniform(scale_key, static_cast<uint64_t>(global_block));
      scales[r * local_scale_cols + c] = init_scale / 448.0f * (0.75f + 0.25f * u);
    }
  }
  std::vector<uint8_t> codes(values.size());
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t col = 0; col < cols; ++col)
      codes[row * cols + col] = f32_to_fp8_e4m3(448.0f * random_uniform(key, global_index(row, col)));
  }
  const bool round_to_bf16 = fp8_rounds_to_bf16(compute_dtype, config.fp8_dequant);
  std::vector<float> dequantized = dequantize(codes, scales, rows, cols, local_scale_cols, round_to_bf16);
  *fp8_out = Fp8Weight{std::move(codes), std::move(scales), local_scale_cols, round_to_bf16};
  return dequantized;
}

}  // namespace

LoadedWeights load_layer_weights(const WeightsConfig& config, const ModelArgs& model, const HeadShard& shard,
                                 ComputeDType compute_dtype, bool check_finite) {
  LoadedWeights loaded;
  const std::vector<WeightSpec> specs = weight_specs(model, shard);
  if (config.format == WeightsFormat::Random) {
    for (const WeightSpec& spec : specs) {
      if (config.dtype == WeightDType::FP8 && !spec.is_norm) check_block_edges(spec, shard, spec.name);
      Fp8Weight fp8;
      loaded.weights.*spec.member = random_weight(config, spec, compute_dtype, &fp8);
      if (!fp8.codes.empty()) loaded.weights.fp8[spec.name] = std::move(fp8);
      loaded.weights.sources[spec.name] = "random weights, seed " + std::to_string(config.seed);
    }
    loaded.description = "random, seed " + std::to_string(config.seed);
    loaded.storage_dtype = config.dtype == WeightDType::FP8 ? "fp8 (128x128 block scales)" : "bf16";
    return loaded;
  }
  const Checkpoint checkpoint = Checkpoint::open(config, shard.rank, shard.world);
  for (const WeightSpec& spec : specs) {
    std::string storage_dtype;
    Fp8Weight fp8;
    loaded.weights.*spec.member = read_checkpoint_weight(checkpoint, spec, shard, compute_dtype, config.fp8_dequant,
                                                         check_finite, &storage_dtype, &fp8);
    if (!fp8.codes.empty()) loaded.weights.fp8[spec.name] = std::move(fp8);
    if (!spec.is_norm) loaded.storage_dtype = storage_dtype;
    std::string checkpoint_name;
    const SafetensorsFile* file = checkpoint.find_weight(spec.name, &checkpoint_name);
    loaded.weights.sources[spec.name] = file->path() + ": tensor '" + checkpoint_name + "'";
  }
  loaded.description = checkpoint.description();
  return loaded;
}

}  // namespace mla
