#include "runtime/io/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "runtime/base/errors.h"
#include "runtime/base/user_files.h"

namespace mla {

namespace fs = std::filesystem;

namespace {

const std::map<std::string, std::string>& hf_module_names() {
  static const std::map<std::string, std::string> names = {{"wq", "q_proj"},
                                                           {"wq_a", "q_a_proj"},
                                                           {"q_norm", "q_a_layernorm"},
                                                           {"wq_b", "q_b_proj"},
                                                           {"wkv_a", "kv_a_proj_with_mqa"},
                                                           {"kv_norm", "kv_a_layernorm"},
                                                           {"wkv_b", "kv_b_proj"},
                                                           {"wo", "o_proj"}};
  return names;
}

std::vector<std::string> hf_files_from_index(const fs::path& index_path) {
  return parse_hf_index(read_text_file(index_path.string(), "index file", kMaxIndexFileBytes), index_path.string());
}

std::vector<std::string> safetensors_in(const fs::path& directory) {
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(directory)) {
    if (entry.is_regular_file() && entry.path().extension() == ".safetensors") files.push_back(entry.path().filename());
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

std::vector<std::string> parse_hf_index(const std::string& text, const std::string& source) {
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& error) {
    throw UserError(source + ": not valid JSON: " + error.what());
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    throw UserError(source + ": expected an object with a \"weight_map\" object");
  }
  std::vector<std::string> files;
  for (const auto& [tensor, file] : index["weight_map"].items()) {
    if (!file.is_string()) throw UserError(source + ": weight_map entry '" + tensor + "' is not a file name");
    const std::string name = file.get<std::string>();
    // Only plain names of files beside the index: nothing that leaves the checkpoint directory.
    // A NUL would cut the name short when the file is opened: another file than the one named.
    if (name.empty() || name.find('/') != std::string::npos || name.find('\0') != std::string::npos || name == "." ||
        name == "..") {
      throw UserError(source + ": weight_map entry '" + tensor + "' names '" + name + "', not a file in the directory");
    }
    if (std::find(files.begin(), files.end(), name) == files.end()) files.push_back(name);
  }
  return files;
}

CheckpointFiles checkpoint_files(const WeightsConfig& weights, int rank, int world) {
  CheckpointFiles result;
  const fs::path path(weights.path);
  std::error_code error;
  if (fs::is_regular_file(path, error)) {
    result.paths.push_back(path);
  } else if (!fs::is_directory(path, error)) {
    throw UserError(weights.path + ": weights.path is neither a .safetensors file nor a directory");
  } else if (weights.format == WeightsFormat::DeepSeek) {
    const fs::path own = path / ("model" + std::to_string(rank) + "-mp" + std::to_string(world) + ".safetensors");
    const fs::path whole = path / "model0-mp1.safetensors";
    if (fs::is_regular_file(own, error)) {
      result.paths.push_back(own);
      result.presplit = world > 1;
    } else if (fs::is_regular_file(whole, error)) {
      result.paths.push_back(whole);
    } else {
      throw UserError(weights.path + ": no " + own.filename().string() +
                      " and no model0-mp1.safetensors (DeepSeek's "
                      "converted files, split for the world size or unsplit)");
    }
  } else {
    const fs::path index = path / "model.safetensors.index.json";
    const bool indexed = fs::is_regular_file(index, error);
    const std::vector<std::string> names = indexed ? hf_files_from_index(index) : safetensors_in(path);
    if (names.empty()) throw UserError(weights.path + ": no .safetensors files in this directory");
    if (indexed) result.index = index;
    for (const std::string& name : names) result.paths.push_back(path / name);
  }
  return result;
}

Checkpoint Checkpoint::open(const WeightsConfig& weights, int rank, int world) {
  Checkpoint checkpoint;
  checkpoint.format_ = weights.format;
  checkpoint.layer_ = weights.layer;
  const CheckpointFiles files = checkpoint_files(weights, rank, world);
  checkpoint.presplit_ = files.presplit;
  const std::vector<fs::path>& paths = files.paths;
  checkpoint.location_ = paths.size() == 1 ? paths.front().string() : weights.path;
  for (const fs::path& file_path : paths) {
    checkpoint.files_.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::open(file_path.string())));
    const SafetensorsFile* file = checkpoint.files_.back().get();
    for (const std::string& name : file->names()) {
      const auto [it, inserted] = checkpoint.file_of_tensor_.emplace(name, file);
      if (!inserted) {
        throw UserError(file->path() + ": tensor '" + name + "' is also in " + it->second->path() +
                        ": which one to use is ambiguous");
      }
    }
  }
  return checkpoint;
}

std::string Checkpoint::description() const {
  return std::string(format_ == WeightsFormat::HuggingFace ? "hf" : "deepseek") + " checkpoint " + location_ +
         (presplit_ ? " (split for this world size)" : " (unsplit: this rank reads its slices)");
}

std::string Checkpoint::location() const { return location_; }

std::string Checkpoint::weight_name(const std::string& internal_name) const {
  if (format_ == WeightsFormat::HuggingFace) {
    return "model.layers." + std::to_string(layer_) + ".self_attn." + hf_module_names().at(internal_name) + ".weight";
  }
  return "layers." + std::to_string(layer_) + ".attn." + internal_name + ".weight";
}

const SafetensorsFile* Checkpoint::find(const std::string& checkpoint_name) const {
  const auto it = file_of_tensor_.find(checkpoint_name);
  return it == file_of_tensor_.end() ? nullptr : it->second;
}

const SafetensorsFile* Checkpoint::find_weight(const std::string& internal_name, std::string* checkpoint_name) const {
  *checkpoint_name = weight_name(internal_name);
  return find(*checkpoint_name);
}

const SafetensorsFile* Checkpoint::find_scale(const std::string& internal_name, std::string* checkpoint_name) const {
  std::string name = weight_name(internal_name);
  name.erase(name.size() - std::string("weight").size());
  *checkpoint_name = name + (format_ == WeightsFormat::HuggingFace ? "weight_scale_inv" : "scale");
  return find(*checkpoint_name);
}

}  // namespace mla
