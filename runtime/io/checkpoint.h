// Where a layer's attention tensors live in a checkpoint, and under which names (docs/design.md,
// Weights): DeepSeek's converted files (model{r}-mp{W}.safetensors, layers.{i}.attn.*) and
// Hugging Face checkpoints (model.layers.{i}.self_attn.*, spread over the files of
// model.safetensors.index.json) map to the same internal names: wq, wq_a, q_norm, wq_b, wkv_a,
// kv_norm, wkv_b, wo.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/io/config.h"
#include "runtime/io/safetensors.h"

namespace mla {

// The distinct file names listed by a Hugging Face model.safetensors.index.json ("weight_map":
// tensor -> file), in order of first appearance. `source` names the index in messages.
std::vector<std::string> parse_hf_index(const std::string& text, const std::string& source);

// The files of weights.path that a rank reads: its safetensors files and, for a Hugging Face
// checkpoint with one, the index. A DeepSeek directory holding model{rank}-mp{world} files is
// used as already split (presplit); one holding model0-mp1 (or a single file, or a Hugging Face
// checkpoint) is unsplit and each rank reads its slices. Throws UserError naming the path.
struct CheckpointFiles {
  std::vector<std::filesystem::path> paths;
  std::filesystem::path index;  // empty when there is none
  bool presplit = false;
};
CheckpointFiles checkpoint_files(const WeightsConfig& weights, int rank, int world);

// Hugging Face indexes of the largest models are about 10 MB.
inline constexpr uint64_t kMaxIndexFileBytes = uint64_t{64} << 20;

class Checkpoint {
 public:
  // Opens the checkpoint_files() of this rank.
  static Checkpoint open(const WeightsConfig& weights, int rank, int world);

  bool presplit() const { return presplit_; }
  std::string description() const;  // "deepseek checkpoint ckpt/model0-mp1.safetensors (unsplit)"

  // The file and checkpoint name of an internal weight ("wq_b") or of its fp8 scale.
  // Returns nullptr when the checkpoint does not hold it.
  const SafetensorsFile* find_weight(const std::string& internal_name, std::string* checkpoint_name) const;
  const SafetensorsFile* find_scale(const std::string& internal_name, std::string* checkpoint_name) const;
  std::string weight_name(const std::string& internal_name) const;  // for "missing tensor" messages
  std::string location() const;                                     // the file, or the directory, for messages

 private:
  const SafetensorsFile* find(const std::string& checkpoint_name) const;

  WeightsFormat format_ = WeightsFormat::DeepSeek;
  int64_t layer_ = 0;
  bool presplit_ = false;
  std::string location_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*> file_of_tensor_;
};

}  // namespace mla
