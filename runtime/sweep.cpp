#include "runtime/sweep.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <set>

#include "runtime/config_yaml.h"
#include "runtime/errors.h"

namespace mla {

const char* to_string(BenchPhase value) {
  switch (value) {
    case BenchPhase::Prefill: return "prefill";
    case BenchPhase::ChunkedPrefill: return "chunked_prefill";
    case BenchPhase::Decode: return "decode";
  }
  return "?";
}

const char* to_string(BaselineChoice value) {
  switch (value) {
    case BaselineChoice::Auto: return "auto";
    case BaselineChoice::Torch: return "torch";
    case BaselineChoice::None: return "none";
  }
  return "?";
}

int64_t BenchPoint::start_pos() const {
  switch (phase) {
    case BenchPhase::Prefill: return 0;
    case BenchPhase::ChunkedPrefill: return seq_len - chunk;
    case BenchPhase::Decode: return seq_len - 1;
  }
  return 0;
}

int64_t BenchPoint::step_len() const { return seq_len - start_pos(); }

std::string BenchPoint::label() const {
  std::string text = "world " + std::to_string(world) + " " + to_string(backend) + " " + to_string(compute_dtype) + " " +
                     to_string(phase) + " batch " + std::to_string(batch) + " seq " + std::to_string(seq_len);
  if (phase == BenchPhase::ChunkedPrefill) text += " chunk " + std::to_string(chunk);
  text += std::string(" attention ") + to_string(attention) + " formulation " + to_string(formulation);
  if (threads > 0) text += " threads " + std::to_string(threads);
  return text;
}

namespace {

// The sweep's axes as read, before crossing.
struct SweepAxes {
  std::vector<int64_t> world, batch, seq_len, chunk, threads;
  std::vector<size_t> phase, attention, formulation, compute_dtype, backend;
};

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
  bench.baseline = static_cast<BaselineChoice>(reader.get_choice("baseline", 0, {"auto", "torch", "none"}));
  bench.python = reader.get_string("python", ::access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3");
  bench.seed = static_cast<uint64_t>(reader.get_int("seed", static_cast<int64_t>(bench.seed), 0));
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
        run.fail(run.path(key), run.node(key), "is set per point by the sweep (batch, seq_len, phase, chunk); remove it");
      }
    }
  }
}

// The run keys of one point on the base document.
void set_point(YAML::Node& root, const BenchPoint& point, uint64_t seed) {
  YAML::Node run = root["run"];
  YAML::Node random;
  random["batch"] = point.batch;
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
  // The cache's batch capacity only sizes memory; max_seq_len is kept, since it decides YaRN.
  root["model"]["max_batch_size"] = point.batch;
}

Config build_point_config(const std::string& text, const std::string& source, const std::vector<std::string>& overrides,
                          const BenchPoint& point, uint64_t seed) {
  std::set<std::string> overridden;
  YAML::Node root = load_document(text, source, overrides, overridden);
  strip_to_base(root, Origin{source, &overridden});
  set_point(root, point, seed);
  return parse_config_node(root, source, overridden);
}

}  // namespace

Sweep parse_sweep(const std::string& yaml_text, const std::string& source_name, const std::vector<std::string>& overrides) {
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
  {
    YAML::Node base = load_document(yaml_text, source_name, overrides, overridden);
    strip_to_base(base, origin);
    base["run"]["input"]["random"]["batch"] = 1;
    base["run"]["input"]["random"]["tokens"] = 1;
    sweep.base = parse_config_node(base, source_name, overridden);
  }
  const RunConfig& run = sweep.base.run;
  const ModelArgs& model = sweep.base.model;

  MapReader reader(top.node("sweep"), "sweep", origin);
  SweepAxes axes;
  axes.world = int_list(reader, "world", 1, 1 << 16, {1});
  axes.backend = choice_list(reader, "backend", {"cpu", "cuda", "auto"}, {static_cast<size_t>(run.backend)});
  axes.compute_dtype = choice_list(reader, "compute_dtype", {"fp32", "bf16"}, {static_cast<size_t>(run.compute_dtype)});
  axes.threads = int_list(reader, "threads", 0, 4096, {run.threads});
  axes.phase = choice_list(reader, "phase", {"prefill", "chunked_prefill", "decode"}, {0});
  axes.batch = int_list(reader, "batch", 1, 1 << 20, {1});
  if (!reader.has("seq_len")) reader.fail("sweep.seq_len", top.node("sweep"), "required: the kv lengths to measure");
  axes.seq_len = int_list(reader, "seq_len", 1, model.max_seq_len, {});
  const bool chunked = std::find(axes.phase.begin(), axes.phase.end(), 1) != axes.phase.end();
  if (chunked && !reader.has("chunk")) {
    reader.fail("sweep.chunk", top.node("sweep"), "required with phase chunked_prefill: the chunk lengths");
  }
  if (!chunked && reader.has("chunk")) {
    reader.fail("sweep.chunk", reader.node("chunk"), "only applies to phase chunked_prefill");
  }
  axes.chunk = int_list(reader, "chunk", 1, kMaxSeqLen, {0});
  axes.attention = choice_list(reader, "attention", {"auto", "fast", "standard"}, {static_cast<size_t>(run.attention)});
  axes.formulation = choice_list(reader, "formulation", {"auto", "naive", "absorb"}, {static_cast<size_t>(run.formulation)});
  reader.finish();
  for (const char* section : {"model", "weights", "run", "parallel", "debug"}) top.node(section);  // read above
  top.finish();

  for (int64_t world : axes.world) {
    if (model.n_heads % world != 0 && !sweep.base.parallel.uneven_heads) {
      reader.fail("sweep.world", reader.node("world"),
                  std::to_string(world) + " does not divide model.n_heads " + std::to_string(model.n_heads) +
                      " (set parallel.uneven_heads: true to allow it)");
    }
    if (world > model.n_heads) {
      reader.fail("sweep.world", reader.node("world"),
                  std::to_string(world) + " ranks for model.n_heads " + std::to_string(model.n_heads) + ": a rank would have no head");
    }
  }
  for (int64_t seq_len : axes.seq_len) {
    for (size_t phase : axes.phase) {
      if (phase == static_cast<size_t>(BenchPhase::Decode) && seq_len < 2) {
        reader.fail("sweep.seq_len", reader.node("seq_len"), "phase decode needs seq_len >= 2 (one cached token at least)");
      }
    }
    for (int64_t chunk : axes.chunk) {
      if (chunked && chunk > seq_len) {
        reader.fail("sweep.chunk", reader.node("chunk"),
                    "chunk " + std::to_string(chunk) + " is longer than seq_len " + std::to_string(seq_len));
      }
    }
  }

  for (int64_t world : axes.world)
    for (size_t backend : axes.backend)
      for (size_t dtype : axes.compute_dtype)
        for (int64_t threads : axes.threads)
          for (size_t phase : axes.phase)
            for (int64_t batch : axes.batch)
              for (int64_t seq_len : axes.seq_len)
                for (int64_t chunk : (phase == 1 ? axes.chunk : std::vector<int64_t>{0}))
                  for (size_t attention : axes.attention)
                    for (size_t formulation : axes.formulation) {
                      BenchPoint point;
                      point.world = static_cast<int>(world);
                      point.backend = static_cast<Backend>(backend);
                      point.compute_dtype = static_cast<ComputeDType>(dtype);
                      point.threads = static_cast<int>(threads);
                      point.phase = static_cast<BenchPhase>(phase);
                      point.batch = batch;
                      point.seq_len = seq_len;
                      point.chunk = chunk;
                      point.attention = static_cast<AttentionChoice>(attention);
                      point.formulation = static_cast<FormulationChoice>(formulation);
                      sweep.points.push_back(point);
                    }
  if (sweep.points.size() > 100000) {
    throw UserError(source_name + ": sweep: " + std::to_string(sweep.points.size()) + " points; split it into smaller sweeps");
  }
  // Every point's config must load before anything runs.
  for (const BenchPoint& point : sweep.points) point_config(sweep, point);
  return sweep;
}

Sweep load_sweep(const std::string& path, const std::vector<std::string>& overrides) {
  return parse_sweep(read_yaml_file(path, "sweep file"), path, overrides);
}

Config point_config(const Sweep& sweep, const BenchPoint& point) {
  return build_point_config(sweep.text, sweep.source, sweep.overrides, point, sweep.bench.seed);
}

}  // namespace mla
