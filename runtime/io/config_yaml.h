// The strict YAML reading behind the config and sweep files (runtime/io/config.cpp, runtime/io/sweep.cpp):
// every key read once with its type and range checked, unknown keys refused, and every error
// naming the key and where it came from (file and line, or the --set that assigned it).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <vector>
#include <yaml-cpp/yaml.h>

#include "runtime/base/errors.h"
#include "runtime/io/config.h"

namespace mla {

// No schedule, cache or input is longer than this (it also keeps sums of step lengths far from
// overflowing).
constexpr int64_t kMaxSeqLen = int64_t{1} << 26;

// Where a value came from, for messages: "configs/x.yaml:12" or "--set run.threads=4".
struct Origin {
  std::string source;
  std::set<std::string>* overridden_keys = nullptr;
};

// The --set assignment a key came from: the assigned path itself, one it lies under (a key or a
// list item), or one it holds. Empty when the key came from the file.
inline std::string assigning_set(const std::set<std::string>& assigned, const std::string& key_path) {
  for (const std::string& path : assigned) {
    if (key_path == path || key_path.starts_with(path + ".") || key_path.starts_with(path + "[") ||
        path.starts_with(key_path + ".")) {
      return path;
    }
  }
  return "";
}

// Reads one YAML mapping strictly: every key must be read, once, with the right type.
class MapReader {
 public:
  MapReader(const YAML::Node& node, std::string prefix, const Origin& origin)
      : node_(node), prefix_(std::move(prefix)), origin_(origin) {
    if (node_ && !node_.IsNull() && !node_.IsMap()) fail(prefix_, node_, "expected a mapping of keys");
    if (!node_.IsMap()) return;
    for (const auto& item : node_) {
      if (!item.first.IsScalar()) fail(prefix_, item.first, "keys must be plain names");
      const std::string key = item.first.Scalar();
      if (!seen_.insert(key).second) fail(path(key), item.first, "the key appears twice");
    }
  }

  bool has(const std::string& key) const { return seen_.count(key) > 0; }

  YAML::Node node(const std::string& key) {
    used_.insert(key);
    // Absent: an undefined node, which every getter reads as "use the default".
    return node_.IsMap() && seen_.count(key) ? node_[key] : YAML::Node(YAML::NodeType::Undefined);
  }

  int64_t get_int(const std::string& key, int64_t fallback, int64_t min_value,
                  int64_t max_value = std::numeric_limits<int64_t>::max()) {
    const YAML::Node value = node(key);
    if (!value) return fallback;
    int64_t parsed = 0;
    if (!value.IsScalar() || !YAML::convert<int64_t>::decode(value, parsed)) {
      fail(path(key), value, "expected an integer, got " + show(value));
    }
    if (parsed < min_value || parsed > max_value) {
      fail(path(key), value,
           "expected an integer in [" + std::to_string(min_value) + ", " +
               (max_value == std::numeric_limits<int64_t>::max() ? std::string("inf") : std::to_string(max_value)) +
               "], got " + show(value));
    }
    return parsed;
  }

  double get_double(const std::string& key, double fallback, double min_value, bool min_exclusive) {
    const YAML::Node value = node(key);
    if (!value) return fallback;
    double parsed = 0.0;
    if (!value.IsScalar() || !YAML::convert<double>::decode(value, parsed) || !std::isfinite(parsed)) {
      fail(path(key), value, "expected a finite number, got " + show(value));
    }
    if (parsed < min_value || (min_exclusive && parsed == min_value)) {
      std::ostringstream bound;
      bound << (min_exclusive ? "> " : ">= ") << min_value;
      fail(path(key), value, "expected a number " + bound.str() + ", got " + show(value));
    }
    return parsed;
  }

  bool get_bool(const std::string& key, bool fallback) {
    const YAML::Node value = node(key);
    if (!value) return fallback;
    bool parsed = false;
    if (!value.IsScalar() || !YAML::convert<bool>::decode(value, parsed)) {
      fail(path(key), value, "expected true or false, got " + show(value));
    }
    return parsed;
  }

  std::string get_string(const std::string& key, const std::string& fallback) {
    const YAML::Node value = node(key);
    if (!value) return fallback;
    if (value.IsNull()) return "";  // `output:` or --set run.output= : explicitly nothing
    if (!value.IsScalar()) fail(path(key), value, "expected a string, got " + show(value));
    return value.Scalar();
  }

  // One of `names`; returns its index.
  size_t get_choice(const std::string& key, size_t fallback, const std::vector<std::string>& names) {
    const YAML::Node value = node(key);
    if (!value) return fallback;
    if (value.IsScalar()) {
      for (size_t i = 0; i < names.size(); ++i)
        if (value.Scalar() == names[i]) return i;
    }
    std::string allowed;
    for (const std::string& name : names) allowed += (allowed.empty() ? "" : " | ") + name;
    fail(path(key), value, "expected one of " + allowed + ", got " + show(value));
  }

  // One of value_names<Enum>() (runtime/io/config.h).
  template <typename Enum>
  Enum get_enum(const std::string& key, Enum fallback) {
    return static_cast<Enum>(get_choice(key, static_cast<size_t>(fallback), value_names<Enum>()));
  }

  // Unknown keys are errors: a typo must not silently fall back to a default.
  void finish() const {
    for (const std::string& key : seen_) {
      if (used_.count(key) == 0) {
        std::string known;
        for (const std::string& name : used_) known += (known.empty() ? "" : ", ") + name;
        fail(path(key), node_[key], "unknown key (known here: " + known + ")");
      }
    }
  }

  std::string path(const std::string& key) const { return prefix_.empty() ? key : prefix_ + "." + key; }

  // "configs/x.yaml:12: run.threads: <what>", "--set run.threads: <what>", or, for a key inside an
  // assigned value, "--set run.input: run.input.random.batch: <what>".
  [[noreturn]] void fail(const std::string& key_path, const YAML::Node& at, const std::string& what) const {
    const std::string assignment =
        origin_.overridden_keys != nullptr ? assigning_set(*origin_.overridden_keys, key_path) : "";
    if (assignment == key_path) throw UserError("--set " + key_path + ": " + what);
    std::string where = assignment.empty() ? origin_.source : "--set " + assignment;
    if (assignment.empty() && at && at.Mark().line >= 0) where += ":" + std::to_string(at.Mark().line + 1);
    throw UserError(where + ": " + key_path + ": " + what);
  }

 private:
  static std::string show(const YAML::Node& value) {
    if (value.IsScalar()) return "'" + value.Scalar() + "'";
    if (value.IsSequence()) return "a list";
    if (value.IsMap()) return "a mapping";
    return "nothing";
  }

  YAML::Node node_;
  std::string prefix_;
  const Origin& origin_;
  std::set<std::string> seen_;
  std::set<std::string> used_;
};

// Applies "section.key=value" (value parsed as YAML) to root; records the assigned path in
// `overridden` for messages. Throws UserError on a malformed assignment.
void apply_override(YAML::Node& root, const std::string& assignment, std::set<std::string>& overridden);

// The whole text of a YAML file (a regular file of at most kMaxConfigFileBytes); UserError
// "<path>: ... the <what> ..." when it cannot be read.
std::string read_yaml_file(const std::string& path, const std::string& what);

// The config of a parsed YAML document (overrides already applied; `overridden` names them).
Config parse_config_node(const YAML::Node& root, const std::string& source_name, std::set<std::string>& overridden);

}  // namespace mla
