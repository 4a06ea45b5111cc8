// Weights: random values independent of the world size, DeepSeek and Hugging Face names mapping to
// the same weights, split and unsplit checkpoints, fp8 block scales and their edges.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "kernels/cpu/fp8.h"
#include "runtime/base/errors.h"
#include "runtime/io/safetensors.h"
#include "tests/safetensors_builder.h"
#include "tests/test_util.h"

namespace mla::test {
namespace {

ModelArgs small_model(int64_t heads, int64_t q_lora_rank) {
  return model_args(40, heads, q_lora_rank, 24, 8, 4, 6, 2, 32);
}

// Rows [begin, begin + count) of a row-major matrix with `cols` columns.
std::vector<float> rows_of(const std::vector<float>& matrix, int64_t cols, int64_t begin, int64_t count) {
  return {matrix.begin() + begin * cols, matrix.begin() + (begin + count) * cols};
}

std::vector<float> cols_of(const std::vector<float>& matrix, int64_t cols, int64_t begin, int64_t count) {
  std::vector<float> out;
  for (size_t row = 0; row < matrix.size() / cols; ++row)
    out.insert(out.end(), matrix.begin() + row * cols + begin, matrix.begin() + row * cols + begin + count);
  return out;
}

// A rank's slice of the whole layer's weights, cut by hand (docs/design.md, Weights).
void expect_is_slice(const LayerWeights& part, const LayerWeights& all, const ModelArgs& m, const HeadShard& shard) {
  const int64_t dq = m.qk_head_dim(), kv_rows = m.qk_nope_head_dim + m.v_head_dim;
  if (m.q_lora_rank == 0) {
    EXPECT_EQ(part.wq, rows_of(all.wq, m.dim, shard.head_begin * dq, shard.n_local_heads * dq));
  } else {
    EXPECT_EQ(part.wq_a, all.wq_a);
    EXPECT_EQ(part.q_norm, all.q_norm);
    EXPECT_EQ(part.wq_b, rows_of(all.wq_b, m.q_lora_rank, shard.head_begin * dq, shard.n_local_heads * dq));
  }
  EXPECT_EQ(part.wkv_a, all.wkv_a);
  EXPECT_EQ(part.kv_norm, all.kv_norm);
  EXPECT_EQ(part.wkv_b, rows_of(all.wkv_b, m.kv_lora_rank, shard.head_begin * kv_rows, shard.n_local_heads * kv_rows));
  EXPECT_EQ(part.wo, cols_of(all.wo, m.n_heads * m.v_head_dim, shard.head_begin * m.v_head_dim,
                             shard.n_local_heads * m.v_head_dim));
}

TEST(RandomWeights, EveryRankGetsTheSliceOfTheSameWeights) {
  for (int64_t q_lora_rank : {0, 16}) {
    const ModelArgs m = small_model(5, q_lora_rank);
    const WeightsConfig config = random_weights(WeightDType::BF16, 7);
    const LayerWeights all = load_layer_weights(config, m, whole(m), ComputeDType::FP32).weights;
    for (int world : {2, 3, 5}) {
      for (int rank = 0; rank < world; ++rank) {
        const HeadShard shard = shard_heads(m.n_heads, world, rank, true);
        expect_is_slice(load_layer_weights(config, m, shard, ComputeDType::FP32).weights, all, m, shard);
      }
    }
  }
}

TEST(RandomWeights, SeedChangesValuesAndFp8IsBlockQuantized) {
  const ModelArgs m = small_model(2, 16);
  const LayerWeights a =
      load_layer_weights(random_weights(WeightDType::BF16, 1), m, whole(m), ComputeDType::FP32).weights;
  const LayerWeights b =
      load_layer_weights(random_weights(WeightDType::BF16, 2), m, whole(m), ComputeDType::FP32).weights;
  EXPECT_NE(a.wkv_a, b.wkv_a);
  const LayerWeights fp8 =
      load_layer_weights(random_weights(WeightDType::FP8, 1), m, whole(m), ComputeDType::FP32).weights;
  const LayerWeights fp8_bf16 =
      load_layer_weights(random_weights(WeightDType::FP8, 1), m, whole(m), ComputeDType::BF16).weights;
  for (size_t i = 0; i < fp8.wo.size(); ++i) EXPECT_EQ(fp8_bf16.wo[i], round_to_bf16(fp8.wo[i]));
}

TEST(RandomWeights, Fp8SplitOffABlockEdgeIsRefused) {
  ModelArgs m = small_model(4, 0);  // wq rows per head: 12, so rank 1 of 2 starts at row 24
  try {
    load_layer_weights(random_weights(WeightDType::FP8, 1), m, shard_heads(4, 2, 1, false), ComputeDType::FP32);
    FAIL() << "expected a UserError";
  } catch (const UserError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("rank 1 of 2"), std::string::npos) << message;
    EXPECT_NE(message.find("128 block"), std::string::npos) << message;
  }
  // Heads whose rows and columns split on 128 blocks are accepted: dq = dn + dv = 128, 2 heads of
  // dv 64 per rank in wo.
  m.qk_nope_head_dim = 64;
  m.qk_rope_head_dim = 64;
  m.v_head_dim = 64;
  for (int rank = 0; rank < 2; ++rank) {
    EXPECT_NO_THROW(
        load_layer_weights(random_weights(WeightDType::FP8, 1), m, shard_heads(4, 2, rank, false), ComputeDType::FP32));
  }
  m.v_head_dim = 96;  // wkv_b: 160 rows per head, so rank 1 starts inside a block
  EXPECT_THROW(
      load_layer_weights(random_weights(WeightDType::FP8, 1), m, shard_heads(4, 2, 1, false), ComputeDType::FP32),
      UserError);
}

// The fixture's checkpoint renamed to Hugging Face names, split over two files with an index.
TEST(Checkpoint, HuggingFaceNamesLoadTheSameWeightsAsDeepSeekNames) {
  const std::string fixture = std::string(MLA_SOURCE_DIR) + "/tests/fixtures/deepseek_odd_dims";
  const SafetensorsFile deepseek = SafetensorsFile::open(fixture + "/model0-mp1.safetensors");
  const std::vector<std::pair<std::string, std::string>> renames = {
      {"wq_a", "q_a_proj"},          {"q_norm", "q_a_layernorm"}, {"wq_b", "q_b_proj"}, {"wkv_a", "kv_a_proj_with_mqa"},
      {"kv_norm", "kv_a_layernorm"}, {"wkv_b", "kv_b_proj"},      {"wo", "o_proj"}};
  TempDir dir;
  std::vector<RawTensor> first, second;
  std::string index = "{\"metadata\": {}, \"weight_map\": {";
  for (size_t i = 0; i < renames.size(); ++i) {
    const std::string from = "layers.0.attn." + renames[i].first + ".weight";
    const std::string to = "model.layers.0.self_attn." + renames[i].second + ".weight";
    const TensorInfo& info = deepseek.info(from);
    std::string bytes(info.data_end - info.data_begin, '\0');
    deepseek.read_raw(from, {}, bytes.data());
    (i % 2 ? second : first).push_back({to, dtype_name(info.dtype), info.shape, bytes});
    index += std::string(i ? "," : "") + "\"" + to + "\": \"part-" + std::to_string(i % 2) + ".safetensors\"";
  }
  write_bytes(dir.file("part-0.safetensors"), safetensors_bytes(first));
  write_bytes(dir.file("part-1.safetensors"), safetensors_bytes(second));
  write_bytes(dir.file("model.safetensors.index.json"), index + "}}");

  const Config config = load_config(fixture + "/config.yaml", {"weights.path=" + fixture, "run.input=unused"});
  WeightsConfig hf = config.weights;
  hf.format = WeightsFormat::HuggingFace;
  hf.path = dir.path().string();
  const LayerWeights from_deepseek =
      load_layer_weights(config.weights, config.model, whole(config.model), ComputeDType::FP32).weights;
  const LayerWeights from_hf = load_layer_weights(hf, config.model, whole(config.model), ComputeDType::FP32).weights;
  expect_is_slice(from_hf, from_deepseek, config.model, whole(config.model));
}

// DeepSeek's converted files split for the world size are used as they are, and give every rank
// the same weights as slicing the unsplit file.
TEST(Checkpoint, PresplitFilesEqualSlicesOfTheUnsplitFile) {
  const ModelArgs m = small_model(4, 16);
  const WeightsConfig random = random_weights(WeightDType::BF16, 3);
  TempDir dir;
  write_deepseek_checkpoint(dir.file("model0-mp1.safetensors"), m, random, whole(m));
  for (int rank = 0; rank < 2; ++rank) {
    write_deepseek_checkpoint(dir.file("model" + std::to_string(rank) + "-mp2.safetensors"), m, random,
                              shard_heads(4, 2, rank, false));
  }
  WeightsConfig deepseek;
  deepseek.path = dir.path().string();
  const LayerWeights all = load_layer_weights(deepseek, m, whole(m), ComputeDType::FP32).weights;
  for (int rank = 0; rank < 2; ++rank) {
    const HeadShard shard = shard_heads(4, 2, rank, false);
    expect_is_slice(load_layer_weights(deepseek, m, shard, ComputeDType::FP32).weights, all, m, shard);
  }
  // World 4: no model*-mp4 files, so each rank slices model0-mp1.
  for (int rank = 0; rank < 4; ++rank) {
    const HeadShard shard = shard_heads(4, 4, rank, false);
    expect_is_slice(load_layer_weights(deepseek, m, shard, ComputeDType::FP32).weights, all, m, shard);
  }
}

// An fp8 checkpoint with partial blocks on both axes dequantizes like the reference, under both
// weights.fp8_dequant rules: bf16 (the default, DeepSeek's) and exact.
TEST(Checkpoint, Fp8WeightsWithBlockScales) {
  const ModelArgs m = small_model(1, 0);  // every weight smaller than one 128 block
  TempDir dir;
  std::vector<RawTensor> tensors;
  struct Expected {
    std::string name;
    std::vector<uint8_t> codes;
    int64_t rows, cols;
    std::vector<float> scales;
  };
  std::vector<Expected> want;
  const auto add_fp8 = [&](const std::string& name, int64_t rows, int64_t cols, uint8_t salt) {
    std::vector<uint8_t> codes(rows * cols);
    for (size_t i = 0; i < codes.size(); ++i)
      codes[i] = static_cast<uint8_t>(((i * 37 + salt) % 0x7f) | ((i & 1) << 7));
    // A scale whose products with the codes use more than bf16's 8 significant bits.
    const std::vector<float> scales(((rows + 127) / 128) * ((cols + 127) / 128), 0.01f + 0.001f * salt);
    tensors.push_back({"layers.0.attn." + name + ".weight", "F8_E4M3", {rows, cols}, raw_bytes(codes)});
    tensors.push_back(
        {"layers.0.attn." + name + ".scale", "F32", {(rows + 127) / 128, (cols + 127) / 128}, raw_bytes(scales)});
    want.push_back({name, codes, rows, cols, scales});
  };
  add_fp8("wq", m.n_heads * m.qk_head_dim(), m.dim, 1);
  add_fp8("wkv_a", m.kv_lora_rank + m.qk_rope_head_dim, m.dim, 2);
  add_fp8("wkv_b", m.qk_nope_head_dim + m.v_head_dim, m.kv_lora_rank, 3);
  add_fp8("wo", m.dim, m.v_head_dim, 4);
  tensors.push_back(
      {"layers.0.attn.kv_norm.weight", "BF16", {m.kv_lora_rank}, bf16_bytes(std::vector<float>(m.kv_lora_rank, 1.0f))});
  write_bytes(dir.file("model0-mp1.safetensors"), safetensors_bytes(tensors));
  WeightsConfig config;
  config.path = dir.path().string();
  for (const Fp8Dequant rule : {Fp8Dequant::Bf16, Fp8Dequant::Exact}) {
    config.fp8_dequant = rule;
    const LayerWeights w = load_layer_weights(config, m, whole(m), ComputeDType::FP32).weights;
    const std::vector<const std::vector<float>*> got = {&w.wq, &w.wkv_a, &w.wkv_b, &w.wo};
    int64_t rounded_away = 0;  // values the bf16 rule changes: the two rules must differ
    for (size_t i = 0; i < want.size(); ++i) {
      const std::vector<double> exact = ref::fp8_dequant(want[i].codes, want[i].rows, want[i].cols, want[i].scales);
      const std::vector<double> expected =
          ref::fp8_dequant(want[i].codes, want[i].rows, want[i].cols, want[i].scales, rule == Fp8Dequant::Bf16);
      ASSERT_EQ(got[i]->size(), expected.size());
      for (size_t j = 0; j < expected.size(); ++j) {
        // code * scale in fp32 is the double product (exact for two floats) rounded once to fp32.
        ASSERT_EQ((*got[i])[j], static_cast<float>(expected[j]))
            << want[i].name << " element " << j << ", " << to_string(rule);
        rounded_away += expected[j] != exact[j];
      }
    }
    if (rule == Fp8Dequant::Bf16) {
      EXPECT_GT(rounded_away, 100);
    }
    // The codes are kept for decode steps, marked with the rule they are dequantized by.
    ASSERT_EQ(w.fp8.count("wkv_a"), 1u);
    EXPECT_EQ(w.fp8.at("wkv_a").round_to_bf16, rule == Fp8Dequant::Bf16);
  }
  config.fp8_dequant = Fp8Dequant::Bf16;

  // A scale of the wrong shape is refused with both tensors named.
  tensors[1].shape = {2, 1};
  tensors[1].bytes = raw_bytes(std::vector<float>{0.01f, 0.01f});
  write_bytes(dir.file("model0-mp1.safetensors"), safetensors_bytes(tensors));
  try {
    load_layer_weights(config, m, whole(m), ComputeDType::FP32);
    FAIL() << "expected a UserError";
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find("layers.0.attn.wq.scale"), std::string::npos) << error.what();
    EXPECT_NE(std::string(error.what()).find("128x128 block"), std::string::npos) << error.what();
  }
}

}  // namespace
}  // namespace mla::test
