// A strict safetensors reader and an atomic writer.
//
// Format: 8-byte little-endian header length N, N bytes of JSON (an object: tensor name ->
// {"dtype", "shape", "data_offsets": [begin, end]}, plus an optional "__metadata__" object of
// strings), then the data section. Offsets are relative to the data section.
//
// The reader checks everything before any tensor is used: the header length against the file
// size, the JSON (no duplicate names), known dtypes, non-negative shapes whose byte size does not
// overflow and equals end - begin, offsets inside the file, tensors that neither overlap nor leave
// holes. Every failure is a UserError naming the file (and the tensor, where there is one).
// Tensor data is read with pread, only the bytes asked for, so a rank can read its slice of a
// large tensor without loading the rest.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "runtime/base/atomic_file.h"

namespace mla {

enum class DType { F64, F32, F16, BF16, F8_E4M3, I64, I32, I16, I8, U8, BOOL };

const char* dtype_name(DType dtype);  // the safetensors spelling: "F32", "BF16", "F8_E4M3", ...
int64_t dtype_size(DType dtype);

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t data_begin = 0;  // absolute offset of the first byte in the file
  uint64_t data_end = 0;    // absolute offset one past the last byte
  int64_t numel() const;
};

// A rectangle of a tensor viewed as 2-D [rows, cols]: a 1-D tensor is one row; a tensor of rank
// > 2 is [shape[0], product of the rest].
struct Slice2D {
  int64_t row_begin = 0;
  int64_t row_count = -1;  // -1: all rows from row_begin
  int64_t col_begin = 0;
  int64_t col_count = -1;  // -1: all columns from col_begin
};

class SafetensorsFile {
 public:
  // Opens and validates the header. Throws UserError naming the file on any problem.
  static SafetensorsFile open(const std::string& path);

  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  bool has(const std::string& name) const;
  // Throws UserError "<file>: no tensor '<name>'" when absent.
  const TensorInfo& info(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Copies the raw bytes of a slice, row by row, into dst (row_count * col_count * dtype_size
  // bytes, densely packed). Throws UserError if the slice is outside the tensor.
  void read_raw(const std::string& name, const Slice2D& slice, void* dst) const;

  // Reads a slice converted to f32. F64, F32, F16 and BF16 convert by value; F8_E4M3 converts
  // each code to its value (block scales are the caller's business). Other dtypes: UserError.
  std::vector<float> read_f32(const std::string& name, const Slice2D& slice = {}) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  int fd_ = -1;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

struct OutputTensor {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;  // f32, numel(shape) values
};

// Writes f32 tensors to `path` atomically: a temporary file in the same directory, fsync, rename.
// On any failure the temporary is removed, `path` is untouched, and a UserError names the file.
void write_safetensors_f32(const std::string& path, const std::vector<OutputTensor>& tensors,
                           const std::map<std::string, std::string>& metadata = {});
// The same into `file`, whose commit() is left to the caller (mla_run renames only once every
// rank has agreed that the run succeeded).
void write_safetensors_f32(AtomicFile& file, const std::vector<OutputTensor>& tensors,
                           const std::map<std::string, std::string>& metadata = {});

}  // namespace mla
