#include "runtime/io/config.h"

#include <algorithm>
#include <cctype>
#include <limits>
#include <set>
#include <sstream>
#include <yaml-cpp/yaml.h>

#include "runtime/base/errors.h"
#include "runtime/base/random_values.h"
#include "runtime/base/user_files.h"
#include "runtime/io/config_yaml.h"

namespace mla {

namespace {

void parse_model(MapReader reader, ModelArgs& model) {
  const int64_t kMaxDim = int64_t{1} << 20;
  model.dim = reader.get_int("dim", model.dim, 1, kMaxDim);
  model.n_heads = reader.get_int("n_heads", model.n_heads, 1, 1 << 16);
  model.q_lora_rank = reader.get_int("q_lora_rank", model.q_lora_rank, 0, kMaxDim);
  model.kv_lora_rank = reader.get_int("kv_lora_rank", model.kv_lora_rank, 1, kMaxDim);
  model.qk_nope_head_dim = reader.get_int("qk_nope_head_dim", model.qk_nope_head_dim, 1, kMaxDim);
  model.qk_rope_head_dim = reader.get_int("qk_rope_head_dim", model.qk_rope_head_dim, 2, kMaxDim);
  if (model.qk_rope_head_dim % 2 != 0) {
    reader.fail(reader.path("qk_rope_head_dim"), reader.node("qk_rope_head_dim"),
                "must be even: RoPE rotates pairs of values");
  }
  model.v_head_dim = reader.get_int("v_head_dim", model.v_head_dim, 1, kMaxDim);
  model.max_batch_size = reader.get_int("max_batch_size", model.max_batch_size, 1, 1 << 20);
  model.max_seq_len = reader.get_int("max_seq_len", model.max_seq_len, 1, kMaxSeqLen);
  model.original_seq_len = reader.get_int("original_seq_len", model.original_seq_len, 1, kMaxSeqLen);
  // theta > 1: YaRN divides by ln(theta).
  model.rope_theta = reader.get_double("rope_theta", model.rope_theta, 1.0, true);
  model.rope_factor = reader.get_double("rope_factor", model.rope_factor, 0.0, true);
  model.beta_fast = reader.get_double("beta_fast", model.beta_fast, 0.0, true);
  model.beta_slow = reader.get_double("beta_slow", model.beta_slow, 0.0, true);
  model.mscale = reader.get_double("mscale", model.mscale, 0.0, false);
  reader.finish();
}

void parse_weights(MapReader reader, WeightsConfig& weights) {
  weights.format = reader.get_enum("format", weights.format);
  weights.path = reader.get_string("path", weights.path);
  weights.layer = reader.get_int("layer", weights.layer, 0, 1 << 20);
  weights.dtype = reader.get_enum("dtype", WeightDType::BF16);
  weights.seed = static_cast<uint64_t>(reader.get_int("seed", 1, 0));
  weights.fp8_dequant = reader.get_enum("fp8_dequant", Fp8Dequant::Bf16);
  if (weights.format != WeightsFormat::Random && weights.path.empty()) {
    reader.fail(reader.path("path"), reader.node("path"),
                std::string("required for format ") + to_string(weights.format) +
                    " (a checkpoint directory or .safetensors file)");
  }
  if (weights.format == WeightsFormat::Random && (reader.has("path") || reader.has("layer"))) {
    const char* key = reader.has("path") ? "path" : "layer";
    reader.fail(reader.path(key), reader.node(key),
                "does not apply to format random (weights are generated from seed)");
  }
  if (weights.format != WeightsFormat::Random && (reader.has("dtype") || reader.has("seed"))) {
    reader.fail(reader.path(reader.has("dtype") ? "dtype" : "seed"),
                reader.node(reader.has("dtype") ? "dtype" : "seed"),
                "only applies to format random (a checkpoint's dtype comes from its file)");
  }
  reader.finish();
}

// requests: continuous batching, whose input is per request: a file of "x.<name>" tensors, or
// {random: {seed: S}} without batch and tokens.
void parse_input(const YAML::Node& node, const std::string& key_path, const Origin& origin, bool requests,
                 InputConfig& input) {
  if (node.IsScalar()) {
    input.path = node.Scalar();
    if (input.path.empty()) MapReader(YAML::Node(), "", origin).fail(key_path, node, "expected a file name");
    return;
  }
  MapReader reader(node, key_path, origin);
  MapReader random(reader.node("random"), reader.path("random"), origin);
  if (!reader.has("random")) {
    reader.fail(key_path, node, "expected a .safetensors file name or {random: {batch: B, tokens: T, seed: S}}");
  }
  input.random = true;
  input.batch = random.get_int("batch", 0, 1, 1 << 20);
  input.tokens = random.get_int("tokens", 0, 1, kMaxSeqLen);
  input.seed = static_cast<uint64_t>(random.get_int("seed", 0, 0));
  for (const char* shape_key : {"batch", "tokens"}) {
    if (!requests && !random.has(shape_key)) random.fail(random.path(shape_key), node, "required");
    if (requests && random.has(shape_key)) {
      random.fail(random.path(shape_key), random.node(shape_key),
                  "does not apply to run.schedule.requests (each request's prompt and generate give its tokens)");
    }
  }
  random.finish();
  reader.finish();
}

// A request's name becomes part of tensor names ("x.<name>"): letters, digits, '_' and '-'.
bool valid_request_name(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-'; });
}

// requests: [{name: a, prompt: 40, generate: 8, arrival: 0}, ...]
void parse_request_list(MapReader& reader, const Origin& origin, ScheduleConfig& schedule) {
  const YAML::Node list = reader.node("requests");
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string key = reader.path("requests") + "[" + std::to_string(i) + "]";
    MapReader item(list[i], key, origin);
    if (!list[i].IsMap()) item.fail(key, list[i], "expected {prompt: N, generate: N, arrival: N, name: NAME}");
    RequestConfig request;
    request.name = item.get_string("name", "r" + std::to_string(i));
    if (!valid_request_name(request.name)) {
      item.fail(item.path("name"), item.node("name"), "expected 1 to 64 letters, digits, '_' or '-'");
    }
    if (!item.has("prompt")) item.fail(item.path("prompt"), list[i], "required: the prompt's token count");
    request.prompt = item.get_int("prompt", 0, 1, kMaxSeqLen);
    request.generate = item.get_int("generate", 0, 0, kMaxSeqLen);
    request.arrival = item.get_int("arrival", 0, 0, int64_t{1} << 40);
    item.finish();
    for (const RequestConfig& other : schedule.requests) {
      if (other.name == request.name) item.fail(item.path("name"), item.node("name"), "names another request too");
    }
    schedule.requests.push_back(request);
  }
}

// A count from a range: `N` or `[min, max]`, drawn uniformly.
struct CountRange {
  int64_t min = 0, max = 0;
};

CountRange get_range(MapReader& reader, const std::string& key, int64_t lowest) {
  const YAML::Node node = reader.node(key);
  CountRange range;
  const auto bad = [&] {
    reader.fail(reader.path(key), node,
                "expected a count or [min, max] with " + std::to_string(lowest) +
                    " <= min <= max <= " + std::to_string(kMaxSeqLen));
  };
  if (node.IsSequence()) {
    if (node.size() != 2 || !node[0].IsScalar() || !node[1].IsScalar() ||
        !YAML::convert<int64_t>::decode(node[0], range.min) || !YAML::convert<int64_t>::decode(node[1], range.max)) {
      bad();
    }
  } else if (!node.IsScalar() || !YAML::convert<int64_t>::decode(node, range.min)) {
    bad();
  } else {
    range.max = range.min;
  }
  if (range.min < lowest || range.min > range.max || range.max > kMaxSeqLen) bad();
  return range;
}

// requests: {count: N, prompt: [min, max], generate: [min, max], arrival_every: K, seed: S}:
// request i arrives at step i * K with lengths drawn from the seed.
void parse_request_generator(MapReader& reader, const Origin& origin, ScheduleConfig& schedule) {
  MapReader spec(reader.node("requests"), reader.path("requests"), origin);
  for (const char* required : {"count", "prompt"}) {
    if (!spec.has(required)) spec.fail(spec.path(required), reader.node("requests"), "required");
  }
  const int64_t count = spec.get_int("count", 0, 1, 1 << 20);
  const CountRange prompt = get_range(spec, "prompt", 1);
  const CountRange generate = spec.has("generate") ? get_range(spec, "generate", 0) : CountRange{};
  const int64_t arrival_every = spec.get_int("arrival_every", 0, 0, 1 << 20);
  const uint64_t seed = static_cast<uint64_t>(spec.get_int("seed", 0, 0));
  spec.finish();
  const uint64_t key = random_stream_key(seed, "requests");
  const auto draw = [&](const CountRange& range, uint64_t index) {
    const double unit = 0.5 * (static_cast<double>(random_uniform(key, index)) + 1.0);  // [0, 1)
    return range.min +
           std::min(range.max - range.min, static_cast<int64_t>(unit * static_cast<double>(range.max - range.min + 1)));
  };
  for (int64_t i = 0; i < count; ++i) {
    const uint64_t index = static_cast<uint64_t>(i);
    schedule.requests.push_back(
        {"r" + std::to_string(i), draw(prompt, 2 * index), draw(generate, 2 * index + 1), i * arrival_every});
  }
}

void parse_schedule(MapReader reader, const Origin& origin, ScheduleConfig& schedule) {
  if (reader.has("requests")) {
    for (const char* other : {"chunks", "prefill", "decode_steps"}) {
      if (reader.has(other)) {
        reader.fail(reader.path(other), reader.node(other), "give either requests or chunks / prefill, not both");
      }
    }
    const YAML::Node requests = reader.node("requests");
    if (requests.IsSequence() && requests.size() > 0) {
      parse_request_list(reader, origin, schedule);
    } else if (requests.IsMap()) {
      parse_request_generator(reader, origin, schedule);
    } else {
      reader.fail(reader.path("requests"), requests,
                  "expected a non-empty list of {prompt, generate, arrival} or {count, prompt, generate, "
                  "arrival_every, seed}");
    }
  } else if (reader.has("chunks")) {
    if (reader.has("prefill") || reader.has("decode_steps")) {
      reader.fail(reader.path("chunks"), reader.node("chunks"), "give either chunks or prefill/decode_steps, not both");
    }
    const YAML::Node chunks = reader.node("chunks");
    if (!chunks.IsSequence() || chunks.size() == 0) {
      reader.fail(reader.path("chunks"), chunks, "expected a non-empty list of step lengths, e.g. [16, 16, 1, 1]");
    }
    schedule.explicit_chunks = true;
    for (size_t i = 0; i < chunks.size(); ++i) {
      int64_t length = 0;
      if (!chunks[i].IsScalar() || !YAML::convert<int64_t>::decode(chunks[i], length) || length < 1 ||
          length > kMaxSeqLen) {
        reader.fail(reader.path("chunks") + "[" + std::to_string(i) + "]", chunks[i],
                    "expected a positive integer step length");
      }
      schedule.chunks.push_back(length);
    }
  } else {
    schedule.prefill = reader.get_int("prefill", 0, 1, kMaxSeqLen);
    schedule.decode_steps = reader.get_int("decode_steps", 0, 0, kMaxSeqLen);
  }
  reader.finish();
}

// run.kv_cache: {layout: dense | paged, page_size: N, pages: N, dtype: auto | fp32 | bf16 | fp8}.
void parse_kv_cache(MapReader reader, KvCacheConfig& cache) {
  cache.layout = reader.get_enum("layout", cache.layout);
  cache.page_size = reader.get_int("page_size", cache.page_size, 1, kMaxSeqLen);
  cache.pages = reader.get_int("pages", cache.pages, 1, int64_t{1} << 30);
  cache.dtype = reader.get_enum("dtype", cache.dtype);
  if (cache.layout == KvCacheLayout::Dense) {
    for (const char* key : {"page_size", "pages"}) {
      if (reader.has(key)) reader.fail(reader.path(key), reader.node(key), "applies to layout paged only");
    }
  }
  reader.finish();
}

void parse_run(MapReader reader, const Origin& origin, RunConfig& run) {
  run.backend = reader.get_enum("backend", Backend::Cpu);
  run.compute_dtype = reader.get_enum("compute_dtype", ComputeDType::FP32);
  run.attention = reader.get_enum("attention", AttentionChoice::Auto);
  run.formulation = reader.get_enum("formulation", FormulationChoice::Auto);
  const YAML::Node max_len = reader.node("fast_path_max_len");
  run.fast_path_auto = !max_len || (max_len.IsScalar() && max_len.Scalar() == "auto");
  int64_t length = kAutoFastPathMaxLen;
  if (!run.fast_path_auto && (!max_len.IsScalar() || !YAML::convert<int64_t>::decode(max_len, length) || length < 1 ||
                              length > (int64_t{1} << 20))) {
    reader.fail(reader.path("fast_path_max_len"), max_len, "expected auto or a length in [1, 1048576]");
  }
  run.fast_path_max_len = length;
  if (!reader.has("input"))
    reader.fail(reader.path("input"), YAML::Node(), "required: a .safetensors file or {random: ...}");
  parse_schedule(MapReader(reader.node("schedule"), reader.path("schedule"), origin), origin, run.schedule);
  parse_input(reader.node("input"), reader.path("input"), origin, !run.schedule.requests.empty(), run.input);
  run.max_step_tokens = reader.get_int("max_step_tokens", run.max_step_tokens, 1, kMaxSeqLen);
  run.output = reader.get_string("output", "");
  run.mask = reader.get_string("mask", "");
  run.threads = static_cast<int>(reader.get_int("threads", 0, 0, 4096));
  run.pin_threads = reader.get_bool("pin_threads", run.pin_threads);
  run.score_chunk_bytes = reader.get_int("score_chunk_bytes", run.score_chunk_bytes, 4096);
  parse_kv_cache(MapReader(reader.node("kv_cache"), reader.path("kv_cache"), origin), run.kv_cache);
  run.check_finite = reader.get_bool("check_finite", run.check_finite);
  run.cuda_graphs = reader.get_bool("cuda_graphs", run.cuda_graphs);
  run.log = reader.get_enum("log", StepLog::Table);
  reader.finish();
}

void parse_parallel(MapReader reader, ParallelConfig& parallel) {
  parallel.communicator = reader.get_enum("communicator", parallel.communicator);
  parallel.uneven_heads = reader.get_bool("uneven_heads", parallel.uneven_heads);
  parallel.context_parallel = reader.get_int("context_parallel", parallel.context_parallel, 1, 4096);
  parallel.check_identical_output = reader.get_bool("check_identical_output", parallel.check_identical_output);
  parallel.timeout_s = reader.get_double("timeout_s", parallel.timeout_s, 0.0, false);
  reader.finish();
}

// debug: {fail: {rank: R, step: N, mode: exit | hang | nan}, hold: {step: N}, progress_file: PATH}
void parse_debug(MapReader reader, const Origin& origin, DebugConfig& debug) {
  FaultPlan& fault = debug.fail;
  if (reader.has("hold")) {
    MapReader hold(reader.node("hold"), reader.path("hold"), origin);
    if (!hold.has("step")) hold.fail(hold.path("step"), reader.node("hold"), "required: the step to hold at, from 0");
    debug.hold_step = hold.get_int("step", 0, 0);
    hold.finish();
  }
  debug.progress_file = reader.get_string("progress_file", "");
  if (reader.has("fail")) {
    MapReader fail(reader.node("fail"), reader.path("fail"), origin);
    if (!fail.has("mode")) fail.fail(fail.path("mode"), reader.node("fail"), "required: exit | hang | nan");
    // Every mode but none: a fail section that fails nothing is a mistake.
    const std::vector<std::string>& modes = value_names<FaultMode>();
    fault.mode = static_cast<FaultMode>(1 + fail.get_choice("mode", 0, {modes.begin() + 1, modes.end()}));
    fault.rank = static_cast<int>(fail.get_int("rank", 0, 0, 1 << 20));
    fault.step = fail.get_int("step", 0, 0);
    fail.finish();
  }
  reader.finish();
}

Config parse_root(const YAML::Node& root, const std::string& source_name, std::set<std::string>& overridden) {
  const Origin origin{source_name, &overridden};
  if (!root.IsMap()) {
    MapReader(YAML::Node(), "", origin)
        .fail("(top level)", root, "expected a mapping with sections model, weights, run");
  }
  MapReader top(root, "", origin);
  Config config;
  config.source = source_name;
  parse_model(MapReader(top.node("model"), "model", origin), config.model);
  parse_weights(MapReader(top.node("weights"), "weights", origin), config.weights);
  if (!top.has("run")) top.fail("run", root, "required section (input, schedule, output, ...)");
  parse_run(MapReader(top.node("run"), "run", origin), origin, config.run);
  parse_parallel(MapReader(top.node("parallel"), "parallel", origin), config.parallel);
  parse_debug(MapReader(top.node("debug"), "debug", origin), origin, config.debug);
  top.finish();
  return config;
}

}  // namespace

// "run.threads=4" -> root["run"]["threads"] = 4, the value read as YAML (numbers, lists, maps).
void apply_override(YAML::Node& root, const std::string& assignment, std::set<std::string>& overridden) {
  const size_t equals = assignment.find('=');
  if (equals == std::string::npos || equals == 0) {
    throw UserError("--set '" + assignment + "': expected section.key=value");
  }
  const std::string key_path = assignment.substr(0, equals);
  YAML::Node value;
  try {
    value = YAML::Load(assignment.substr(equals + 1));
  } catch (const YAML::Exception& error) {
    throw UserError("--set " + key_path + ": the value is not valid YAML: " + error.msg);
  }
  std::vector<std::string> keys;
  std::stringstream stream(key_path);
  for (std::string key; std::getline(stream, key, '.');) {
    if (key.empty()) throw UserError("--set '" + assignment + "': empty key in '" + key_path + "'");
    keys.push_back(key);
  }
  YAML::Node current(root);
  for (size_t i = 0; i + 1 < keys.size(); ++i) {
    YAML::Node child = current[keys[i]];
    if (!child.IsMap()) {
      child = YAML::Node(YAML::NodeType::Map);  // replaces a scalar, e.g. run.input: x.safetensors
    }
    current.reset(child);  // rebinds; `current = child` would assign into the tree
  }
  current[keys.back()] = value;
  // Only the assigned path is recorded: walking the value could follow YAML aliases forever
  // (`--set 'run.x=&a {b: *a}'`). MapReader::fail attributes keys above and below it.
  overridden.insert(key_path);
}

Config parse_config_node(const YAML::Node& root, const std::string& source_name, std::set<std::string>& overridden) {
  try {
    return parse_root(root, source_name, overridden);
  } catch (const YAML::Exception& error) {
    throw UserError(source_name + ": " + error.msg);
  }
}

std::vector<std::pair<std::string, std::string>> config_entries(const Config& c) {
  const auto text = [](auto value) {
    std::ostringstream out;
    out.precision(17);
    out << value;
    return out.str();
  };
  std::string chunks;
  for (int64_t chunk : c.run.schedule.chunks) chunks += (chunks.empty() ? "" : ",") + std::to_string(chunk);
  std::string requests;
  for (const RequestConfig& request : c.run.schedule.requests) {
    requests += " " + request.name + ":" + std::to_string(request.prompt) + "+" + std::to_string(request.generate) +
                "@" + std::to_string(request.arrival);
  }
  const ModelArgs& m = c.model;
  const RunConfig& r = c.run;
  return {{"model.dim", text(m.dim)},
          {"model.n_heads", text(m.n_heads)},
          {"model.q_lora_rank", text(m.q_lora_rank)},
          {"model.kv_lora_rank", text(m.kv_lora_rank)},
          {"model.qk_nope_head_dim", text(m.qk_nope_head_dim)},
          {"model.qk_rope_head_dim", text(m.qk_rope_head_dim)},
          {"model.v_head_dim", text(m.v_head_dim)},
          {"model.max_batch_size", text(m.max_batch_size)},
          {"model.max_seq_len", text(m.max_seq_len)},
          {"model.original_seq_len", text(m.original_seq_len)},
          {"model.rope_theta", text(m.rope_theta)},
          {"model.rope_factor", text(m.rope_factor)},
          {"model.beta_fast", text(m.beta_fast)},
          {"model.beta_slow", text(m.beta_slow)},
          {"model.mscale", text(m.mscale)},
          {"weights.format", to_string(c.weights.format)},
          {"weights.path", c.weights.path},
          {"weights.layer", text(c.weights.layer)},
          {"weights.dtype", to_string(c.weights.dtype)},
          {"weights.seed", text(c.weights.seed)},
          {"weights.fp8_dequant", to_string(c.weights.fp8_dequant)},
          {"run.backend", to_string(r.backend)},
          {"run.compute_dtype", to_string(r.compute_dtype)},
          {"run.attention", to_string(r.attention)},
          {"run.formulation", to_string(r.formulation)},
          {"run.fast_path_max_len", text(r.fast_path_max_len)},
          {"run.input",
           r.input.random ? "random " + text(r.input.batch) + "x" + text(r.input.tokens) + " seed " + text(r.input.seed)
                          : r.input.path},
          {"run.schedule", !requests.empty()            ? "requests" + requests
                           : r.schedule.explicit_chunks ? "chunks " + chunks
                                                        : "prefill " + text(r.schedule.prefill) + " decode_steps " +
                                                              text(r.schedule.decode_steps)},
          {"run.max_step_tokens", text(r.max_step_tokens)},
          {"run.output", r.output},
          {"run.mask", r.mask},
          {"run.score_chunk_bytes", text(r.score_chunk_bytes)},
          {"run.kv_cache", std::string(to_string(r.kv_cache.layout)) + " page_size " + text(r.kv_cache.page_size) +
                               " pages " + text(r.kv_cache.pages) + " dtype " + to_string(r.kv_cache.dtype)},
          {"parallel.communicator", to_string(c.parallel.communicator)},
          {"parallel.uneven_heads", text(c.parallel.uneven_heads)},
          {"parallel.context_parallel", text(c.parallel.context_parallel)},
          {"run.check_finite", text(c.run.check_finite)},
          {"run.cuda_graphs", text(c.run.cuda_graphs)},
          {"run.log", to_string(c.run.log)},
          {"parallel.check_identical_output", text(c.parallel.check_identical_output)},
          {"parallel.timeout_s", text(c.parallel.timeout_s)},
          {"debug.fail", std::string(to_string(c.debug.fail.mode)) + " rank " + text(c.debug.fail.rank) + " step " +
                             text(c.debug.fail.step)},
          {"debug.hold", text(c.debug.hold_step)},
          {"debug.progress_file", c.debug.progress_file}};
}

Config parse_config(const std::string& yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& error) {
    throw UserError(source_name + ":" + std::to_string(error.mark.line + 1) + ": not valid YAML: " + error.msg);
  }
  if (!root || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  std::set<std::string> overridden;
  for (const std::string& assignment : overrides) {
    if (!root.IsMap()) break;  // parse_root reports the top level
    try {
      apply_override(root, assignment, overridden);
    } catch (const YAML::Exception& error) {
      throw UserError("--set '" + assignment + "': " + error.msg);
    }
  }
  return parse_config_node(root, source_name, overridden);
}

std::string read_yaml_file(const std::string& path, const std::string& what) {
  return read_text_file(path, what, kMaxConfigFileBytes);
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  return parse_config(read_yaml_file(path, "config file"), path, overrides);
}

std::string config_text(const Config& config) {
  std::string text;
  for (const auto& [key, value] : config_entries(config)) text += key + "=" + value + "\n";
  return text;
}

}  // namespace mla
