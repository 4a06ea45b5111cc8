#include "runtime/io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <utility>

#include "kernels/cpu/bf16.h"
#include "kernels/cpu/fp8.h"
#include "runtime/base/atomic_file.h"
#include "runtime/base/errors.h"

namespace mla {

// Tensor bytes go between file and memory unchanged, and safetensors is little-endian.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace {

using Json = nlohmann::json;

constexpr uint64_t kLengthFieldBytes = 8;
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// One read or write call moves at most this much; Linux caps a single transfer near 2 GiB anyway.
constexpr uint64_t kMaxTransferBytes = uint64_t{1} << 30;
constexpr const char* kMetadataKey = "__metadata__";

// Control characters in names and paths are escaped by UserError itself (one line per message).
std::string in_quotes(const std::string& text) { return "'" + text + "'"; }

[[noreturn]] void fail(const std::string& path, const std::string& problem) { throw UserError(path + ": " + problem); }

[[noreturn]] void fail_tensor(const std::string& path, const std::string& name, const std::string& problem) {
  fail(path, "tensor " + in_quotes(name) + ": " + problem);
}

// Call right after the failing system call. The arguments are built without allocating, so errno
// still holds that call's error when it is read here.
[[noreturn]] void fail_errno(const std::string& path, const char* action, const std::string& subject = {}) {
  const int error = errno;
  fail(path, action + (subject.empty() ? "" : " " + in_quotes(subject)) + ": " + std::strerror(error));
}

struct DTypeEntry {
  DType dtype;
  const char* name;
  int64_t size;
};

constexpr DTypeEntry kDTypes[] = {
    {DType::F64, "F64", 8},         {DType::F32, "F32", 4}, {DType::F16, "F16", 2},   {DType::BF16, "BF16", 2},
    {DType::F8_E4M3, "F8_E4M3", 1}, {DType::I64, "I64", 8}, {DType::I32, "I32", 4},   {DType::I16, "I16", 2},
    {DType::I8, "I8", 1},           {DType::U8, "U8", 1},   {DType::BOOL, "BOOL", 1},
};

const DTypeEntry& dtype_entry(DType dtype) {
  for (const DTypeEntry& entry : kDTypes) {
    if (entry.dtype == dtype) return entry;
  }
  throw std::logic_error("unknown DType value");
}

std::optional<DType> parse_dtype(const std::string& name) {
  for (const DTypeEntry& entry : kDTypes) {
    if (name == entry.name) return entry.dtype;
  }
  return std::nullopt;
}

// "[2, 3]"; a shape from a hostile file can have millions of entries, so long lists are cut short.
template <typename Int>
std::string bracketed(const std::vector<Int>& values) {
  constexpr size_t kMaxShown = 8;
  std::string text = "[";
  for (size_t i = 0; i < std::min(values.size(), kMaxShown); ++i) text += (i ? ", " : "") + std::to_string(values[i]);
  if (values.size() > kMaxShown) text += ", ... (" + std::to_string(values.size()) + " in all)";
  return text + "]";
}

// Bytes held by `shape` elements of `element_size` bytes; nullopt when a dimension is negative
// or the product overflows int64. Zero dimensions are left out of the overflow check, so that no
// partial product of an accepted shape (such as the column count of its 2-D view) overflows.
std::optional<int64_t> checked_byte_size(const std::vector<int64_t>& shape, int64_t element_size) {
  int64_t nonzero_product = element_size;
  bool has_zero = false;
  for (const int64_t dim : shape) {
    if (dim < 0) return std::nullopt;
    has_zero = has_zero || dim == 0;
    if (dim != 0 && __builtin_mul_overflow(nonzero_product, dim, &nonzero_product)) return std::nullopt;
  }
  return has_zero ? 0 : nonzero_product;
}

void pread_exact(int fd, const std::string& path, void* dst, uint64_t size, uint64_t offset) {
  auto* cursor = static_cast<char*>(dst);
  while (size > 0) {
    const ssize_t got = ::pread(fd, cursor, std::min(size, kMaxTransferBytes), static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) fail_errno(path, "read failed");
    if (got == 0) fail(path, "file ends at offset " + std::to_string(offset) + " (was it truncated while open?)");
    cursor += got;
    size -= static_cast<uint64_t>(got);
    offset += static_cast<uint64_t>(got);
  }
}

// --- header ------------------------------------------------------------------------------------

// nlohmann keeps one of two equal keys silently; the parser callback sees every key, so we can
// refuse duplicates at any depth (tensor names at the top, field names inside entries).
Json parse_header_json(const std::string& path, const std::string& text) {
  std::vector<std::set<std::string>> keys_of_open_objects;
  std::optional<std::string> duplicate_problem;
  const auto on_event = [&](int, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::object_start) keys_of_open_objects.emplace_back();
    if (event == Json::parse_event_t::object_end) keys_of_open_objects.pop_back();
    if (event == Json::parse_event_t::key && !duplicate_problem) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!keys_of_open_objects.back().insert(key).second) {
        const bool is_tensor_name = keys_of_open_objects.size() == 1 && key != kMetadataKey;
        duplicate_problem =
            std::string(is_tensor_name ? "duplicate tensor " : "duplicate key ") + in_quotes(key) + " in the header";
      }
    }
    return true;
  };
  // nlohmann stops at a NUL byte as if the input ended there, which would hide whatever follows.
  if (const size_t nul = text.find('\0'); nul != std::string::npos) {
    fail(path, "header is not valid JSON: NUL byte at offset " + std::to_string(nul));
  }
  Json header;
  try {
    header = Json::parse(text, on_event);
  } catch (const Json::exception& error) {
    // The message quotes the bad token, which a hostile header can make megabytes long.
    constexpr size_t kMaxShown = 300;
    const std::string detail = UserError::one_line(error.what());
    fail(path, "header is not valid JSON: " + detail.substr(0, kMaxShown) + (detail.size() > kMaxShown ? "..." : ""));
  }
  if (duplicate_problem) fail(path, *duplicate_problem);
  if (!header.is_object()) fail(path, std::string("header is a JSON ") + header.type_name() + ", not an object");
  return header;
}

std::optional<int64_t> nonnegative_int64(const Json& value) {
  if (value.is_number_unsigned()) {
    const uint64_t number = value.get<uint64_t>();
    if (number <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return static_cast<int64_t>(number);
  } else if (value.is_number_integer() && value.get<int64_t>() >= 0) {
    return value.get<int64_t>();
  }
  return std::nullopt;
}

std::optional<std::vector<int64_t>> nonnegative_int64_array(const Json& value) {
  if (!value.is_array()) return std::nullopt;
  std::vector<int64_t> numbers;
  for (const Json& element : value) {
    const std::optional<int64_t> number = nonnegative_int64(element);
    if (!number) return std::nullopt;
    numbers.push_back(*number);
  }
  return numbers;
}

// Where the data section lies in the file, to turn relative data_offsets into absolute ones.
struct DataSection {
  uint64_t begin = 0;
  uint64_t size = 0;
};

void check_entry_fields(const std::string& path, const std::string& name, const Json& entry) {
  static const char* const kFields[] = {"dtype", "shape", "data_offsets"};
  if (!entry.is_object())
    fail_tensor(path, name, std::string("entry is a JSON ") + entry.type_name() + ", not an object");
  for (const char* field : kFields) {
    if (!entry.contains(field)) fail_tensor(path, name, std::string("missing field '") + field + "'");
  }
  for (const auto& [field, value] : entry.items()) {
    if (std::find(std::begin(kFields), std::end(kFields), field) == std::end(kFields)) {
      fail_tensor(path, name, "unexpected field " + in_quotes(field));
    }
  }
}

DType parse_dtype_field(const std::string& path, const std::string& name, const Json& value) {
  if (!value.is_string()) fail_tensor(path, name, "dtype must be a string");
  const std::optional<DType> dtype = parse_dtype(value.get<std::string>());
  if (!dtype) fail_tensor(path, name, "unknown dtype " + in_quotes(value.get<std::string>()));
  return *dtype;
}

// Returns [begin, end] relative to the data section.
std::vector<int64_t> parse_offsets_field(const std::string& path, const std::string& name, const Json& value) {
  std::optional<std::vector<int64_t>> offsets = nonnegative_int64_array(value);
  if (!offsets || offsets->size() != 2) {
    fail_tensor(path, name, "data_offsets must be an array of 2 non-negative integers");
  }
  if ((*offsets)[0] > (*offsets)[1]) {
    fail_tensor(path, name, "data_offsets " + bracketed(*offsets) + " begin after their end");
  }
  return std::move(*offsets);
}

TensorInfo parse_tensor_entry(const std::string& path, const std::string& name, const Json& entry,
                              const DataSection& data) {
  check_entry_fields(path, name, entry);
  TensorInfo info;
  info.name = name;
  info.dtype = parse_dtype_field(path, name, entry.at("dtype"));
  std::optional<std::vector<int64_t>> shape = nonnegative_int64_array(entry.at("shape"));
  if (!shape) fail_tensor(path, name, "shape must be an array of non-negative integers");
  info.shape = std::move(*shape);
  const std::vector<int64_t> offsets = parse_offsets_field(path, name, entry.at("data_offsets"));

  const std::string offsets_text = "data_offsets " + bracketed(offsets);
  const std::string shape_text = "shape " + bracketed(info.shape) + " of " + dtype_name(info.dtype);
  const int64_t held = offsets[1] - offsets[0];
  const std::optional<int64_t> needed = checked_byte_size(info.shape, dtype_size(info.dtype));
  if (!needed) fail_tensor(path, name, shape_text + " has more bytes than int64 can count");
  if (*needed != held) {
    fail_tensor(path, name,
                offsets_text + " hold " + std::to_string(held) + " bytes but " + shape_text + " needs " +
                    std::to_string(*needed));
  }
  if (static_cast<uint64_t>(offsets[1]) > data.size) {
    fail_tensor(
        path, name,
        offsets_text + " go past the end of the file (the data section holds " + std::to_string(data.size) + " bytes)");
  }
  info.data_begin = data.begin + static_cast<uint64_t>(offsets[0]);
  info.data_end = data.begin + static_cast<uint64_t>(offsets[1]);
  return info;
}

std::map<std::string, std::string> parse_metadata(const std::string& path, const Json& metadata_json) {
  if (!metadata_json.is_object())
    fail(path, std::string(kMetadataKey) + " is a JSON " + metadata_json.type_name() + ", not an object");
  std::map<std::string, std::string> metadata;
  for (const auto& [key, value] : metadata_json.items()) {
    if (!value.is_string())
      fail(path, std::string(kMetadataKey) + " value of " + in_quotes(key) + " is a JSON " + value.type_name() +
                     ", not a string");
    metadata.emplace(key, value.get<std::string>());
  }
  return metadata;
}

// Like the reference implementation, the tensors must tile the data section exactly: a gap
// would be bytes nobody accounts for, and an overlap would let two tensors alias.
void check_tiling(const std::string& path, const std::map<std::string, TensorInfo>& tensors, const DataSection& data) {
  std::vector<const TensorInfo*> by_offset;
  for (const auto& [name, info] : tensors) by_offset.push_back(&info);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return std::pair(a->data_begin, a->data_end) < std::pair(b->data_begin, b->data_end);
  });
  const auto relative = [&](const TensorInfo* t) {
    return bracketed(std::vector<uint64_t>{t->data_begin - data.begin, t->data_end - data.begin});
  };
  uint64_t covered_to = data.begin;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo* tensor : by_offset) {
    if (tensor->data_begin < covered_to) {
      fail(path, "tensors " + in_quotes(previous->name) + " and " + in_quotes(tensor->name) +
                     " overlap: data_offsets " + relative(previous) + " and " + relative(tensor));
    }
    if (tensor->data_begin > covered_to) {
      fail(path, "hole in the data section: bytes [" + std::to_string(covered_to - data.begin) + ", " +
                     std::to_string(tensor->data_begin - data.begin) + ") before tensor " + in_quotes(tensor->name) +
                     " belong to no tensor");
    }
    covered_to = tensor->data_end;
    previous = tensor;
  }
  if (covered_to != data.begin + data.size) {
    fail(path, "hole in the data section: its last " + std::to_string(data.begin + data.size - covered_to) +
                   " bytes belong to no tensor");
  }
}

struct ParsedHeader {
  std::map<std::string, TensorInfo> tensors;
  std::map<std::string, std::string> metadata;
};

ParsedHeader read_header(int fd, const std::string& path, uint64_t file_size) {
  if (file_size < kLengthFieldBytes)
    fail(path, "file is " + std::to_string(file_size) + " bytes, too short for the 8-byte header length");
  uint64_t header_length = 0;
  pread_exact(fd, path, &header_length, kLengthFieldBytes, 0);
  const std::string length_text = "header length " + std::to_string(header_length);
  if (header_length == 0) fail(path, length_text + " is invalid: the header must hold at least '{}'");
  if (header_length > kMaxHeaderBytes)
    fail(path, length_text + " exceeds the limit of " + std::to_string(kMaxHeaderBytes) + " bytes");
  if (header_length > file_size - kLengthFieldBytes) {
    fail(path, length_text + " exceeds the " + std::to_string(file_size - kLengthFieldBytes) + " bytes that follow it");
  }
  std::string text(header_length, '\0');
  pread_exact(fd, path, text.data(), header_length, kLengthFieldBytes);
  const Json header = parse_header_json(path, text);

  const DataSection data{kLengthFieldBytes + header_length, file_size - kLengthFieldBytes - header_length};
  ParsedHeader parsed;
  for (const auto& [name, entry] : header.items()) {
    if (name == kMetadataKey) {
      parsed.metadata = parse_metadata(path, entry);
    } else {
      parsed.tensors.emplace(name, parse_tensor_entry(path, name, entry, data));
    }
  }
  check_tiling(path, parsed.tensors, data);
  return parsed;
}

// --- slices ------------------------------------------------------------------------------------

struct Region {
  int64_t row_begin, row_count, col_begin, col_count;
  int64_t cols;  // of the whole 2-D view: the stride between rows
};

int64_t resolve_range(const std::string& path, const TensorInfo& info, const char* axis, int64_t begin, int64_t count,
                      int64_t extent) {
  const bool begin_inside = begin >= 0 && begin <= extent;  // checked first: extent - begin must not overflow
  const int64_t resolved = !begin_inside ? -1 : count == -1 ? extent - begin : count;
  if (!begin_inside || resolved < 0 || resolved > extent - begin) {
    fail_tensor(path, info.name,
                std::string("slice of ") + axis + " begin " + std::to_string(begin) + " count " +
                    std::to_string(count) + " is outside the " + std::to_string(extent) + " " + axis +
                    " of its 2-D view");
  }
  return resolved;
}

Region resolve_slice(const std::string& path, const TensorInfo& info, const Slice2D& slice) {
  int64_t rows = 1;
  int64_t cols = 1;  // a rank-0 tensor is one value
  if (info.shape.size() == 1) cols = info.shape[0];
  if (info.shape.size() >= 2) {
    rows = info.shape[0];
    for (size_t dim = 1; dim < info.shape.size(); ++dim) cols *= info.shape[dim];
  }
  Region region{slice.row_begin, 0, slice.col_begin, 0, cols};
  region.row_count = resolve_range(path, info, "rows", slice.row_begin, slice.row_count, rows);
  region.col_count = resolve_range(path, info, "columns", slice.col_begin, slice.col_count, cols);
  return region;
}

void read_region(int fd, const std::string& path, const TensorInfo& info, const Region& region, void* dst) {
  const uint64_t element_size = static_cast<uint64_t>(dtype_size(info.dtype));
  const uint64_t row_bytes = static_cast<uint64_t>(region.cols) * element_size;
  const uint64_t segment_bytes = static_cast<uint64_t>(region.col_count) * element_size;
  const uint64_t first = info.data_begin + static_cast<uint64_t>(region.row_begin) * row_bytes +
                         static_cast<uint64_t>(region.col_begin) * element_size;
  if (segment_bytes == 0 || region.row_count == 0) return;
  if (segment_bytes == row_bytes) {  // whole rows are contiguous: one read
    pread_exact(fd, path, dst, segment_bytes * static_cast<uint64_t>(region.row_count), first);
    return;
  }
  auto* out = static_cast<char*>(dst);
  for (int64_t row = 0; row < region.row_count; ++row) {
    pread_exact(fd, path, out + static_cast<uint64_t>(row) * segment_bytes, segment_bytes,
                first + static_cast<uint64_t>(row) * row_bytes);
  }
}

// A double beyond float's range is undefined behaviour to cast; IEEE rounding sends anything from
// FLT_MAX plus half an ulp upward to infinity, so do that explicitly.
float double_to_float(double value) {
  constexpr double kRoundsToInfinity = 0x1.ffffffp127;
  if (std::fabs(value) >= kRoundsToInfinity) return std::signbit(value) ? -INFINITY : INFINITY;
  return static_cast<float>(value);
}

template <typename Bits, typename Convert>
void convert_each(const std::vector<unsigned char>& raw, std::vector<float>& values, Convert convert) {
  for (size_t i = 0; i < values.size(); ++i) {
    Bits bits;
    std::memcpy(&bits, raw.data() + i * sizeof(Bits), sizeof(Bits));
    values[i] = convert(bits);
  }
}

void convert_to_f32(DType dtype, const std::vector<unsigned char>& raw, std::vector<float>& values) {
  switch (dtype) {
    case DType::F64: return convert_each<double>(raw, values, double_to_float);
    case DType::F16: return convert_each<uint16_t>(raw, values, f16_bits_to_f32);
    case DType::BF16: return convert_each<uint16_t>(raw, values, bf16_bits_to_f32);
    case DType::F8_E4M3: return convert_each<uint8_t>(raw, values, fp8_e4m3_to_f32);
    default: throw std::logic_error("convert_to_f32: dtype not convertible");
  }
}

bool converts_to_f32(DType dtype) {
  return dtype == DType::F64 || dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16 ||
         dtype == DType::F8_E4M3;
}

}  // namespace

const char* dtype_name(DType dtype) { return dtype_entry(dtype).name; }
int64_t dtype_size(DType dtype) { return dtype_entry(dtype).size; }

int64_t TensorInfo::numel() const {
  int64_t count = 1;
  for (const int64_t dim : shape) count *= dim;
  return count;
}

// --- SafetensorsFile ---------------------------------------------------------------------------

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile file;  // its destructor closes the fd if validation throws
  file.path_ = path;
  // O_NONBLOCK: a FIFO is refused below instead of waited on (regular files ignore the flag).
  file.fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (file.fd_ < 0) fail_errno(path, "cannot open");
  struct stat status {};
  if (::fstat(file.fd_, &status) != 0) fail_errno(path, "cannot stat");
  if (!S_ISREG(status.st_mode)) fail(path, "not a regular file");
  ParsedHeader header = read_header(file.fd_, path, static_cast<uint64_t>(status.st_size));
  file.tensors_ = std::move(header.tensors);
  file.metadata_ = std::move(header.metadata);
  return file;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : path_(std::move(other.path_)),
      fd_(std::exchange(other.fd_, -1)),
      tensors_(std::move(other.tensors_)),
      metadata_(std::move(other.metadata_)) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    tensors_ = std::move(other.tensors_);
    metadata_ = std::move(other.metadata_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() {
  if (fd_ >= 0) ::close(fd_);
}

bool SafetensorsFile::has(const std::string& name) const { return tensors_.count(name) != 0; }

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  const auto found = tensors_.find(name);
  if (found == tensors_.end()) fail(path_, "no tensor " + in_quotes(name));
  return found->second;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> result;
  for (const auto& [name, info] : tensors_) result.push_back(name);
  return result;  // std::map iterates in sorted order
}

void SafetensorsFile::read_raw(const std::string& name, const Slice2D& slice, void* dst) const {
  const TensorInfo& tensor = info(name);
  read_region(fd_, path_, tensor, resolve_slice(path_, tensor, slice), dst);
}

std::vector<float> SafetensorsFile::read_f32(const std::string& name, const Slice2D& slice) const {
  const TensorInfo& tensor = info(name);
  if (!converts_to_f32(tensor.dtype)) {
    fail_tensor(path_, name,
                std::string("dtype ") + dtype_name(tensor.dtype) +
                    " cannot be read as f32 (only F64, F32, F16, BF16 and F8_E4M3 can)");
  }
  const Region region = resolve_slice(path_, tensor, slice);
  std::vector<float> values(static_cast<size_t>(region.row_count * region.col_count));
  if (tensor.dtype == DType::F32) {
    read_region(fd_, path_, tensor, region, values.data());
    return values;
  }
  std::vector<unsigned char> raw(values.size() * static_cast<size_t>(dtype_size(tensor.dtype)));
  read_region(fd_, path_, tensor, region, raw.data());
  convert_to_f32(tensor.dtype, raw, values);
  return values;
}

// --- writer ------------------------------------------------------------------------------------

namespace {

struct PlannedTensor {
  const OutputTensor* tensor;
  int64_t bytes;
};

// Validates the tensors and orders them by name, which fixes both header and data layout.
std::vector<PlannedTensor> plan_output(const std::string& path, const std::vector<OutputTensor>& tensors) {
  std::vector<PlannedTensor> plan;
  std::set<std::string> seen;
  for (const OutputTensor& tensor : tensors) {
    if (tensor.name.empty() || tensor.name == kMetadataKey)
      fail(path, "tensor name " + in_quotes(tensor.name) + " is reserved or empty");
    if (!seen.insert(tensor.name).second) fail(path, "duplicate tensor " + in_quotes(tensor.name));
    const std::optional<int64_t> bytes = checked_byte_size(tensor.shape, dtype_size(DType::F32));
    if (!bytes)
      fail_tensor(path, tensor.name,
                  "shape " + bracketed(tensor.shape) + " has a negative dimension or too many bytes");
    if (*bytes > 0 && tensor.data == nullptr) fail_tensor(path, tensor.name, "data is null");
    plan.push_back({&tensor, *bytes});
  }
  std::sort(plan.begin(), plan.end(),
            [](const PlannedTensor& a, const PlannedTensor& b) { return a.tensor->name < b.tensor->name; });
  return plan;
}

std::string build_header(const std::string& path, const std::vector<PlannedTensor>& plan,
                         const std::map<std::string, std::string>& metadata) {
  Json header = Json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  int64_t offset = 0;
  for (const PlannedTensor& planned : plan) {
    Json entry = Json::object();
    entry["dtype"] = dtype_name(DType::F32);
    entry["shape"] = planned.tensor->shape;
    entry["data_offsets"] = Json::array({offset, offset + planned.bytes});
    header[planned.tensor->name] = std::move(entry);
    offset += planned.bytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const Json::exception&) {
    fail(path, "tensor names and metadata must be valid UTF-8");
  }
  // The reference implementation pads with spaces so that the data section starts 8-aligned.
  text.append((kLengthFieldBytes - text.size() % kLengthFieldBytes) % kLengthFieldBytes, ' ');
  return text;
}

}  // namespace

namespace {

// The header and the data of an output, checked and laid out before any file is made.
struct PreparedOutput {
  std::vector<PlannedTensor> plan;
  std::string header;
};

PreparedOutput prepare_output(const std::string& path, const std::vector<OutputTensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  PreparedOutput prepared;
  prepared.plan = plan_output(path, tensors);
  prepared.header = build_header(path, prepared.plan, metadata);
  return prepared;
}

void write_prepared(AtomicFile& file, const PreparedOutput& prepared) {
  const uint64_t header_length = prepared.header.size();
  file.write(&header_length, sizeof(header_length));
  file.write(prepared.header.data(), prepared.header.size());
  for (const PlannedTensor& planned : prepared.plan) {
    file.write(planned.tensor->data, static_cast<uint64_t>(planned.bytes));
  }
}

}  // namespace

void write_safetensors_f32(AtomicFile& file, const std::vector<OutputTensor>& tensors,
                           const std::map<std::string, std::string>& metadata) {
  write_prepared(file, prepare_output(file.destination(), tensors, metadata));
}

void write_safetensors_f32(const std::string& path, const std::vector<OutputTensor>& tensors,
                           const std::map<std::string, std::string>& metadata) {
  const PreparedOutput prepared = prepare_output(path, tensors, metadata);
  AtomicFile file(path);
  write_prepared(file, prepared);
  file.commit();
}

}  // namespace mla
