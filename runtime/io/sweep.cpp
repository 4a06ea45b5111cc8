#include "runtime/io/sweep.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <set>

#include "runtime/base/errors.h"
#include "runtime/base/random_values.h"
#include "runtime/io/config_yaml.h"

namespace mla {

template <>
const std::vector<std::string>& value_names<BenchPhase>() {
  static const std::vector<std::string> names = {"prefill", "chunked_prefill", "decode", "ragged_decode", "mixed"};
  return names;
}
template <>
const std::vector<std::string>& value_names<BaselineChoice>() {
  static const std::vector<std::string> names = {"auto", "torch", "none"};
  return names;
}

const char* to_string(BenchPhase value) { return value_name(value); }
template <>
const std::vector<std::string>& value_names<KvDistribution>() {
  static const std::vector<std::string> names = {"uniform", "longtail"};
  return names;
}
const char* to_string(KvDistribution value) { return value_name(value); }
const char* to_string(BaselineChoice value) { return value_name(value); }
template <>
const std::vector<std::string>& value_names<TorchVariant>() {
  static const std::vector<std::string> names = {"eager", "compile", "graph"};
  return names;
}
const char* to_string(TorchVariant value) { return value_name(value); }
template <>
const std::vector<std::string>& value_names<BenchFill>() {
  static const std::vector<std::string> names = {"compute", "fork"};
  return names;
}
const char* to_string(BenchFill value) { return value_name(value); }

int64_t BenchPoint::start_pos() const {
  switch (phase) {
    case BenchPhase::Prefill: return 0;
    case BenchPhase::ChunkedPrefill: return seq_len - chunk;
    case BenchPhase::Decode: return seq_len - 1;
    case BenchPhase::RaggedDecode: return seq_len - 1;
    case BenchPhase::Mixed: return seq_len - chunk;
  }
  return 0;
}

std::vector<BenchPoint::Sequence> BenchPoint::sequences(uint64_t seed) const {
  std::vector<Sequence> out(static_cast<size_t>(batch), Sequence{start_pos(), step_len()});
  if (phase == BenchPhase::Mixed) {
    for (size_t b = 1; b < out.size(); ++b) out[b] = {seq_len - 1, 1};
  } else if (phase == BenchPhase::RaggedDecode) {
    const uint64_t key = random_stream_key(seed, "ragged_decode kv lengths");
    for (size_t b = 1; b < out.size(); ++b) {  // sequence 0 keeps the longest, seq_len
      const double unit = 0.5 * (static_cast<double>(random_uniform(key, b)) + 1.0);  // [0, 1)
      const double drawn = kv_distribution == KvDistribution::Uniform
                               ? 1.0 + unit * static_cast<double>(seq_len)
                               : 1.0 - std::log1p(-unit) * static_cast<double>(seq_len) / 8.0;
      const int64_t kv_len = std::clamp<int64_t>(static_cast<int64_t>(drawn), 1, seq_len);
      out[b] = {kv_len - 1, 1};
    }
  }
  return out;
}

int64_t BenchPoint::step_len() const { return seq_len - start_pos(); }

std::string BenchPoint::label() const {
  std::string text = "world " + std::to_string(world) + " " + to_string(backend) + " " + to_string(compute_dtype) +
                     " " + to_string(phase) + " batch " + std::to_string(batch) + " seq " + std::to_string(seq_len);
  if (phase == BenchPhase::ChunkedPrefill || phase == BenchPhase::Mixed) text += " chunk " + std::to_string(chunk);
  if (phase == BenchPhase::RaggedDecode) text += std::string(" kv ") + to_string(kv_distribution);
  text += std::string(" attention ") + to_string(attention) + " formulation " + to_string(formulation);
  if (threads > 0) text += " threads " + std::to_string(threads);
  if (context_parallel > 1) text += " context_parallel " + std::to_string(context_parallel);
  return text;
}

namespace {

// The sweep's axes as read, before crossing.
struct SweepAxes {
  std::vector<int64_t> world, batch, seq_len, chunk, threads, context_parallel;
  std::vector<size_t> phase, attention, formulation, compute_dtype, backend, kv_distribution;
};

// More points than this is a sweep that cannot have been meant (and would take days).
constexpr double kMaxSweepPoints = 100000;

bool has_phase(const SweepAxes& axes, BenchPhase phase) {
  return std::find(axes.phase.begin(), axes.phase.end(), static_cast<size_t>(phase)) != axes.phase.end();
}

// The phases whose points take a chunk length.
bool takes_chunk(BenchPhase phase) { return phase == BenchPhase::ChunkedPrefill || phase == BenchPhase::Mixed; }

bool has_chunked_phase(const SweepAxes& axes) {
  return has_phase(axes, BenchPhase::ChunkedPrefill) || has_phase(axes, BenchPhase::Mixed);
}

// A list, or a scalar standing for a list of one.
std::vector<YAML::Node> items(MapReader& reader, const std::string& key) {
  const YAML::Node node = reader.node(key);
  if (!node) return {};
  if (node.IsScalar()) return {node};
  if (!node.IsSequence() || node.size() == 0) {
    reader.fail(reader.path(key), node, "expected a value or a non-empty list of values");
  }
  std::vector<YAML::Node> list;
  for (const YAML::Node& item : node) list.push_back(item);
  return list;
}

std::vector<int64_t> int_list(MapReader& reader, const std::string& key, int64_t min_value, int64_t max_value,
                              std::vector<int64_t> fallback) {
  const std::vector<YAML::Node> nodes = items(reader, key);
  if (nodes.empty()) return fallback;
  std::vector<int64_t> values;
  for (size_t i = 0; i < nodes.size(); ++i) {
    int64_t value = 0;
    if (!nodes[i].IsScalar() || !YAML::convert<int64_t>::decode(nodes[i], value) || value < min_value ||
        value > max_value) {
      reader.fail(reader.path(key) + "[" + std::to_string(i) + "]", nodes[i],
                  "expected an integer in [" + std::to_string(min_value) + ", " + std::to_string(max_value) + "]");
    }
    values.push_back(value);
  }
  return values;
}

std::vector<size_t> choice_list(MapReader& reader, const std::string& key, const std::vector<std::string>& names,
                                std::vector<size_t> fallback) {
  const std::vector<YAML::Node> nodes = items(reader, key);
  if (nodes.empty()) return fallback;
  std::vector<size_t> values;
  for (size_t i = 0; i < nodes.size(); ++i) {
    size_t found = names.size();
    for (size_t n = 0; n < names.size(); ++n) {
      if (nodes[i].IsScalar() && nodes[i].Scalar() == names[n]) found = n;
    }
    if (found == names.size()) {
      std::string allowed;
      for (const std::string& name : names) allowed += (allowed.empty() ? "" : " | ") + name;
      reader.fail(reader.path(key) + "[" + std::to_string(i) + "]", nodes[i], "expected one of " + allowed);
    }
    values.push_back(found);
  }
  return values;
}

void parse_bench(MapReader reader, const std::string& name, BenchSettings& bench) {
  bench.warmup = reader.get_int("warmup", bench.warmup, 0, 1 << 20);
  bench.min_reps = reader.get_int("min_reps", bench.min_reps, 1, 1 << 20);
  bench.max_reps = reader.get_int("max_reps", std::max(bench.max_reps, bench.min_reps), bench.min_reps, 1 << 24);
  bench.max_seconds = reader.get_double("max_seconds", bench.max_seconds, 0.0, true);
  bench.csv = reader.get_string("csv", "results/" + name + ".csv");
  bench.jsonl = reader.get_string("jsonl", "results/" + name + ".jsonl");
  bench.baseline = reader.get_enum("baseline", BaselineChoice::Auto);
  bench.python = reader.get_string("python", ::access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3");
  bench.torch_variants.clear();
  for (const size_t index : choice_list(reader, "torch_variants", value_names<TorchVariant>(), {0})) {
    const auto variant = static_cast<TorchVariant>(index);
    if (std::find(bench.torch_variants.begin(), bench.torch_variants.end(), variant) != bench.torch_variants.end()) {
      reader.fail(reader.path("torch_variants"), reader.node("torch_variants"),
                  std::string("lists ") + to_string(variant) + " twice");
    }
    bench.torch_variants.push_back(variant);
  }
  bench.seed = static_cast<uint64_t>(reader.get_int("seed", static_cast<int64_t>(bench.seed), 0));
  bench.fill = reader.get_enum("fill", BenchFill::Compute);
  if (bench.csv.empty() || bench.jsonl.empty()) {
    const char* key = bench.csv.empty() ? "csv" : "jsonl";
    reader.fail(reader.path(key), reader.node(key), "expected a file name");
  }
  reader.finish();
}

// The document with overrides applied, or a UserError naming the file, line or --set.
YAML::Node load_document(const std::string& text, const std::string& source, const std::vector<std::string>& overrides,
                         std::set<std::string>& overridden) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& error) {
    throw UserError(source + ":" + std::to_string(error.mark.line + 1) + ": not valid YAML: " + error.msg);
  }
  if (!root.IsMap()) {
    MapReader(YAML::Node(), "", Origin{source, &overridden})
        .fail("(top level)", root, "expected a mapping with sections model, weights, run, sweep, bench");
  }
  for (const std::string& assignment : overrides) {
    try {
      apply_override(root, assignment, overridden);
    } catch (const YAML::Exception& error) {
      throw UserError("--set '" + assignment + "': " + error.msg);
    }
  }
  return root;
}

// The base config's document: the sweep's own sections removed, and the run keys that each point
// sets refused when the file sets them (they would be silently replaced).
void strip_to_base(YAML::Node& root, const Origin& origin) {
  root.remove("sweep");
  root.remove("bench");
  if (root["run"] && root["run"].IsMap()) {
    MapReader run(root["run"], "run", origin);
    for (const char* key : {"input", "schedule", "output", "mask"}) {
      if (run.has(key)) {
        run.fail(run.path(key), run.node(key),
                 "is set per point by the sweep (batch, seq_len, phase, chunk); remove it");
      }
    }
  }
}

// The run keys of one point on the base document.
void set_point(YAML::Node& root, const BenchPoint& point, uint64_t seed, BenchFill fill) {
  YAML::Node run = root["run"];
  YAML::Node random;
  // A forked fill's sequences all take sequence 0's tokens: one sequence's input, however large the batch.
  random["batch"] = fills_by_fork(point, fill) ? 1 : point.batch;
  random["tokens"] = point.seq_len;
  random["seed"] = seed;
  run["input"]["random"] = random;
  YAML::Node chunks(YAML::NodeType::Sequence);
  if (point.start_pos() > 0) chunks.push_back(point.start_pos());
  chunks.push_back(point.step_len());
  run["schedule"]["chunks"] = chunks;
  run["backend"] = to_string(point.backend);
  run["compute_dtype"] = to_string(point.compute_dtype);
  run["attention"] = to_string(point.attention);
  run["formulation"] = to_string(point.formulation);
  run["threads"] = point.threads;
  root["parallel"]["context_parallel"] = point.context_parallel;
  // The cache's batch capacity only sizes memory; max_seq_len is kept, since it decides YaRN.
  root["model"]["max_batch_size"] = point.batch;
}

Config build_point_config(const std::string& text, const std::string& source, const std::vector<std::string>& overrides,
                          const BenchPoint& point, uint64_t seed, BenchFill fill) {
  std::set<std::string> overridden;
  YAML::Node root = load_document(text, source, overrides, overridden);
  strip_to_base(root, Origin{source, &overridden});
  set_point(root, point, seed, fill);
  return parse_config_node(root, source, overridden);
}

// The sweep: section's lists, each defaulting to the base config's value.
SweepAxes read_axes(MapReader& reader, const YAML::Node& section, const Config& base) {
  const RunConfig& run = base.run;
  SweepAxes axes;
  axes.world = int_list(reader, "world", 1, 1 << 16, {1});
  axes.backend = choice_list(reader, "backend", value_names<Backend>(), {static_cast<size_t>(run.backend)});
  axes.compute_dtype =
      choice_list(reader, "compute_dtype", value_names<ComputeDType>(), {static_cast<size_t>(run.compute_dtype)});
  axes.threads = int_list(reader, "threads", 0, 4096, {run.threads});
  axes.context_parallel = int_list(reader, "context_parallel", 1, 4096, {base.parallel.context_parallel});
  axes.phase = choice_list(reader, "phase", value_names<BenchPhase>(), {0});
  axes.batch = int_list(reader, "batch", 1, 1 << 20, {1});
  if (!reader.has("seq_len")) reader.fail("sweep.seq_len", section, "required: the kv lengths to measure");
  axes.seq_len = int_list(reader, "seq_len", 1, base.model.max_seq_len, {});
  const bool chunked = has_chunked_phase(axes);
  if (chunked && !reader.has("chunk")) {
    reader.fail("sweep.chunk", section, "required with phase chunked_prefill or mixed: the chunk lengths");
  }
  if (!chunked && reader.has("chunk")) {
    reader.fail("sweep.chunk", reader.node("chunk"), "only applies to phase chunked_prefill or mixed");
  }
  axes.chunk = int_list(reader, "chunk", 1, kMaxSeqLen, {0});
  const bool ragged_decode = has_phase(axes, BenchPhase::RaggedDecode);
  if (!ragged_decode && reader.has("kv_distribution")) {
    reader.fail("sweep.kv_distribution", reader.node("kv_distribution"), "only applies to phase ragged_decode");
  }
  axes.kv_distribution = choice_list(reader, "kv_distribution", value_names<KvDistribution>(), {0});
  axes.attention =
      choice_list(reader, "attention", value_names<AttentionChoice>(), {static_cast<size_t>(run.attention)});
  axes.formulation =
      choice_list(reader, "formulation", value_names<FormulationChoice>(), {static_cast<size_t>(run.formulation)});
  reader.finish();
  return axes;
}

// The combinations no point could run: a world that does not split the heads, a decode step with
// nothing cached, a chunk longer than its sequence.
void check_axes(MapReader& reader, const SweepAxes& axes, const Config& base) {
  const int64_t n_heads = base.model.n_heads;
  for (const int64_t group : axes.context_parallel) {
    if (group == 1) continue;
    for (const int64_t world : axes.world) {
      if (world % group != 0) {
        reader.fail("sweep.context_parallel", reader.node("context_parallel"),
                    "groups of " + std::to_string(group) + " at world " + std::to_string(world) +
                        ": the groups must divide the world");
      }
    }
    // The CUDA layer attends a split cache with the split-KV kernel, in the absorb formulation.
    const auto has = [](const std::vector<size_t>& axis, size_t value) {
      return std::find(axis.begin(), axis.end(), value) != axis.end();
    };
    if (has(axes.backend, static_cast<size_t>(Backend::Cuda)) &&
        (has(axes.formulation, static_cast<size_t>(FormulationChoice::Naive)) ||
         has(axes.attention, static_cast<size_t>(AttentionChoice::Standard)))) {
      reader.fail("sweep.context_parallel", reader.node("context_parallel"),
                  "groups of " + std::to_string(group) +
                      " on the CUDA backend take the absorb formulation through the split-KV kernel; sweep "
                      "formulation naive or attention standard with backend: cpu, or apart");
    }
  }
  for (int64_t world : axes.world) {
    if (n_heads % world != 0 && !base.parallel.uneven_heads) {
      reader.fail("sweep.world", reader.node("world"),
                  std::to_string(world) + " does not divide model.n_heads " + std::to_string(n_heads) +
                      " (set parallel.uneven_heads: true to allow it)");
    }
    if (world > n_heads) {
      reader.fail("sweep.world", reader.node("world"),
                  std::to_string(world) + " ranks for model.n_heads " + std::to_string(n_heads) +
                      ": a rank would have no head");
    }
  }
  const bool decode = has_phase(axes, BenchPhase::Decode) || has_phase(axes, BenchPhase::RaggedDecode);
  for (int64_t seq_len : axes.seq_len) {
    if (decode && seq_len < 2) {
      reader.fail("sweep.seq_len", reader.node("seq_len"),
                  "phase decode needs seq_len >= 2 (one cached token at least)");
    }
    for (int64_t chunk : axes.chunk) {
      if (has_chunked_phase(axes) && chunk > seq_len) {
        reader.fail("sweep.chunk", reader.node("chunk"),
                    "chunk " + std::to_string(chunk) + " is longer than seq_len " + std::to_string(seq_len));
      }
    }
  }
}

// Every combination of the axes, the first axis (world) varying slowest: the order of the rows.
// The chunk axis applies to chunked_prefill and mixed points only (the others have chunk 0), the
// kv_distribution axis to ragged_decode points only.
std::vector<BenchPoint> cross_axes(const SweepAxes& axes, const std::string& source_name) {
  double count = static_cast<double>(axes.world.size() * axes.backend.size() * axes.compute_dtype.size() *
                                     axes.threads.size() * axes.context_parallel.size() * axes.batch.size() *
                                     axes.seq_len.size() * axes.attention.size() * axes.formulation.size());
  double per_phase = 0;
  for (const size_t phase : axes.phase) {
    const BenchPhase value = static_cast<BenchPhase>(phase);
    per_phase += takes_chunk(value)                  ? static_cast<double>(axes.chunk.size())
                 : value == BenchPhase::RaggedDecode ? static_cast<double>(axes.kv_distribution.size())
                                                     : 1.0;
  }
  count *= per_phase;
  if (count > kMaxSweepPoints) {
    throw UserError(source_name + ": sweep: " + std::to_string(static_cast<int64_t>(count)) +
                    " points; split it into smaller sweeps");
  }
  std::vector<BenchPoint> points(1);
  // Replaces every point by one copy per value that values_of(point) gives, set by set(copy, value).
  const auto cross = [&points](const auto& values_of, const auto& set) {
    std::vector<BenchPoint> crossed;
    for (const BenchPoint& point : points) {
      for (const auto value : values_of(point)) {
        crossed.push_back(point);
        set(crossed.back(), value);
      }
    }
    points = std::move(crossed);
  };
  const auto every = [](const auto& values) {
    return [&values](const BenchPoint&) -> const auto& { return values; };
  };
  const std::vector<int64_t> no_chunk = {0};
  const std::vector<size_t> no_distribution = {0};
  cross(every(axes.world), [](BenchPoint& p, int64_t v) { p.world = static_cast<int>(v); });
  cross(every(axes.backend), [](BenchPoint& p, size_t v) { p.backend = static_cast<Backend>(v); });
  cross(every(axes.compute_dtype), [](BenchPoint& p, size_t v) { p.compute_dtype = static_cast<ComputeDType>(v); });
  cross(every(axes.threads), [](BenchPoint& p, int64_t v) { p.threads = static_cast<int>(v); });
  cross(every(axes.context_parallel), [](BenchPoint& p, int64_t v) { p.context_parallel = v; });
  cross(every(axes.phase), [](BenchPoint& p, size_t v) { p.phase = static_cast<BenchPhase>(v); });
  cross(every(axes.batch), [](BenchPoint& p, int64_t v) { p.batch = v; });
  cross(every(axes.seq_len), [](BenchPoint& p, int64_t v) { p.seq_len = v; });
  cross(
      [&](const BenchPoint& p) -> const std::vector<int64_t>& { return takes_chunk(p.phase) ? axes.chunk : no_chunk; },
      [](BenchPoint& p, int64_t v) { p.chunk = v; });
  cross(
      [&](const BenchPoint& p) -> const std::vector<size_t>& {
        return p.phase == BenchPhase::RaggedDecode ? axes.kv_distribution : no_distribution;
      },
      [](BenchPoint& p, size_t v) { p.kv_distribution = static_cast<KvDistribution>(v); });
  cross(every(axes.attention), [](BenchPoint& p, size_t v) { p.attention = static_cast<AttentionChoice>(v); });
  cross(every(axes.formulation), [](BenchPoint& p, size_t v) { p.formulation = static_cast<FormulationChoice>(v); });
  return points;
}

}  // namespace

Sweep parse_sweep(const std::string& yaml_text, const std::string& source_name,
                  const std::vector<std::string>& overrides) {
  Sweep sweep;
  sweep.source = source_name;
  sweep.name = std::filesystem::path(source_name).stem().string();
  sweep.text = yaml_text;
  sweep.overrides = overrides;
  std::set<std::string> overridden;
  YAML::Node root = load_document(yaml_text, source_name, overrides, overridden);
  const Origin origin{source_name, &overridden};
  MapReader top(root, "", origin);
  if (!top.has("sweep")) top.fail("sweep", root, "required section: the lists to cross (seq_len, batch, phase, ...)");
  parse_bench(MapReader(top.node("bench"), "bench", origin), sweep.name, sweep.bench);

  // The base config, validated once with the file's line numbers.
  YAML::Node base = load_document(yaml_text, source_name, overrides, overridden);
  strip_to_base(base, origin);
  base["run"]["input"]["random"]["batch"] = 1;
  base["run"]["input"]["random"]["tokens"] = 1;
  sweep.base = parse_config_node(base, source_name, overridden);

  MapReader reader(top.node("sweep"), "sweep", origin);
  const SweepAxes axes = read_axes(reader, top.node("sweep"), sweep.base);
  for (const char* section : {"model", "weights", "run", "parallel", "debug"}) top.node(section);  // read above
  top.finish();
  check_axes(reader, axes, sweep.base);
  sweep.points = cross_axes(axes, source_name);
  // Every point's config must load before anything runs.
  for (const BenchPoint& point : sweep.points) point_config(sweep, point);
  return sweep;
}

Sweep load_sweep(const std::string& path, const std::vector<std::string>& overrides) {
  return parse_sweep(read_yaml_file(path, "sweep file"), path, overrides);
}

Config point_config(const Sweep& sweep, const BenchPoint& point) {
  return build_point_config(sweep.text, sweep.source, sweep.overrides, point, sweep.bench.seed, sweep.bench.fill);
}

bool fills_by_fork(const BenchPoint& point, BenchFill fill) {
  return fill == BenchFill::Fork && point.batch > 1 &&
         (point.phase == BenchPhase::Decode || point.phase == BenchPhase::ChunkedPrefill);
}

}  // namespace mla
