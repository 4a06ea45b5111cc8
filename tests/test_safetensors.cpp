#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "runtime/base/errors.h"
#include "runtime/io/safetensors.h"

namespace mla {
namespace {

namespace fs = std::filesystem;

// --- helpers -------------------------------------------------------------------------------------

std::string length_field(uint64_t length) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[static_cast<size_t>(i)] = static_cast<char>((length >> (8 * i)) & 0xff);
  return bytes;
}

// A safetensors file as bytes: the header JSON exactly as given (no padding added) and the data.
std::string safetensors_bytes(const std::string& header_json, const std::string& data) {
  return length_field(header_json.size()) + header_json + data;
}

template <typename T>
std::string raw_bytes(const std::vector<T>& values) {
  std::string bytes(values.size() * sizeof(T), '\0');
  if (!values.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

std::string read_whole_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::vector<uint32_t> bit_patterns(const std::vector<float>& values) {
  std::vector<uint32_t> bits;
  for (const float value : values) bits.push_back(std::bit_cast<uint32_t>(value));
  return bits;
}

std::vector<float> iota_floats(size_t count) {
  std::vector<float> values(count);
  for (size_t i = 0; i < count; ++i) values[i] = static_cast<float>(i);
  return values;
}

// Runs `action`, which must throw a one-line UserError that starts with `path` and contains
// every word in `words`.
template <typename Action>
void expect_user_error(Action action, const std::string& path, std::initializer_list<std::string> words) {
  try {
    action();
    ADD_FAILURE() << "expected a UserError mentioning " << path;
  } catch (const UserError& error) {
    const std::string message = error.what();
    EXPECT_EQ(message.rfind(path + ": ", 0), 0u) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    for (const std::string& word : words)
      EXPECT_NE(message.find(word), std::string::npos) << "no '" << word << "' in: " << message;
  }
}

class SafetensorsTest : public testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::path(testing::TempDir()) / "mla_safetensors_XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path_of(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  std::string write_file(const std::string& name, const std::string& bytes) const {
    const std::string path = path_of(name);
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }

  std::string write_safetensors(const std::string& header_json, const std::string& data) const {
    return write_file("crafted.safetensors", safetensors_bytes(header_json, data));
  }

  void expect_open_fails(const std::string& header_json, const std::string& data,
                         std::initializer_list<std::string> words) const {
    const std::string path = write_safetensors(header_json, data);
    expect_user_error([&] { SafetensorsFile::open(path); }, path, words);
  }

  std::vector<std::string> directory_entries() const {
    std::vector<std::string> entries;
    for (const auto& entry : fs::directory_iterator(dir_)) entries.push_back(entry.path().filename().string());
    std::sort(entries.begin(), entries.end());
    return entries;
  }

  std::string dir_;
};

// A 2x3 F32 tensor "w" holding 0..5 and a [4] F32 tensor "v" holding 10..13, written by hand.
constexpr const char* kTwoTensorHeader =
    R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"v":{"dtype":"F32","shape":[4],"data_offsets":[24,40]}})";
std::string two_tensor_data() { return raw_bytes(std::vector<float>{0, 1, 2, 3, 4, 5, 10, 11, 12, 13}); }

// --- round trip and writer -----------------------------------------------------------------------

TEST_F(SafetensorsTest, RoundTripIsBitExact) {
  const std::vector<float> scalar{-0.0f};
  const std::vector<float> vector{1.5f, std::numeric_limits<float>::infinity(),
                                  std::numeric_limits<float>::denorm_min(), std::bit_cast<float>(0x7fc01234u),
                                  -3.25e-20f};
  const std::vector<float> matrix = iota_floats(12);
  const std::vector<float> cube = iota_floats(24);
  const std::vector<OutputTensor> tensors{{"matrix", {3, 4}, matrix.data()},
                                          {"vector", {5}, vector.data()},
                                          {"cube", {2, 3, 4}, cube.data()},
                                          {"empty", {0, 3}, nullptr},
                                          {"scalar", {}, scalar.data()}};
  const std::map<std::string, std::string> metadata{{"format", "pt"}, {"note", "ünïcode ok"}};
  const std::string path = path_of("round_trip.safetensors");
  write_safetensors_f32(path, tensors, metadata);

  const SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.path(), path);
  EXPECT_EQ(file.names(), (std::vector<std::string>{"cube", "empty", "matrix", "scalar", "vector"}));
  EXPECT_EQ(file.metadata(), metadata);
  for (const OutputTensor& tensor : tensors) {
    const TensorInfo& info = file.info(tensor.name);
    EXPECT_EQ(info.dtype, DType::F32);
    EXPECT_EQ(info.shape, tensor.shape);
    const int64_t numel = info.numel();
    EXPECT_EQ(info.data_end - info.data_begin, static_cast<uint64_t>(numel * 4));
    const std::vector<float> expected(tensor.data, tensor.data + numel);
    EXPECT_EQ(bit_patterns(file.read_f32(tensor.name)), bit_patterns(expected)) << tensor.name;
  }
}

TEST_F(SafetensorsTest, WriterPadsHeaderToEightBytesAndIgnoresInputOrder) {
  const std::vector<float> a{1, 2, 3};
  const std::vector<float> b{4};
  write_safetensors_f32(path_of("ab.safetensors"), {{"a", {3}, a.data()}, {"b", {1}, b.data()}}, {{"k", "v"}});
  write_safetensors_f32(path_of("ba.safetensors"), {{"b", {1}, b.data()}, {"a", {3}, a.data()}}, {{"k", "v"}});
  const std::string bytes = read_whole_file(path_of("ab.safetensors"));
  EXPECT_EQ(bytes, read_whole_file(path_of("ba.safetensors")));

  uint64_t header_length = 0;
  std::memcpy(&header_length, bytes.data(), 8);
  EXPECT_EQ(header_length % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + header_length + 16);
  const SafetensorsFile file = SafetensorsFile::open(path_of("ab.safetensors"));
  EXPECT_EQ(file.info("a").data_begin, 8 + header_length);  // data follows the padded header directly
}

TEST_F(SafetensorsTest, WriterOverwritesExistingFileAtomically) {
  const std::string path = path_of("out.safetensors");
  const std::vector<float> old_values{1, 2};
  const std::vector<float> new_values{7, 8, 9};
  write_safetensors_f32(path, {{"old", {2}, old_values.data()}});
  write_safetensors_f32(path, {{"new", {3}, new_values.data()}});
  const SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.names(), std::vector<std::string>{"new"});
  EXPECT_EQ(file.read_f32("new"), new_values);
  EXPECT_EQ(directory_entries(), std::vector<std::string>{"out.safetensors"});
}

TEST_F(SafetensorsTest, WriterMakesMissingDirectoriesButNotUnderAFile) {
  const std::vector<float> values{1};
  write_safetensors_f32(path_of("made/here/out.safetensors"), {{"x", {1}, values.data()}});
  EXPECT_EQ(SafetensorsFile::open(path_of("made/here/out.safetensors")).read_f32("x"), values);
  write_file("plain", "a file");
  const std::string path = path_of("plain/out.safetensors");
  expect_user_error([&] { write_safetensors_f32(path, {{"x", {1}, values.data()}}); }, path, {"not a directory"});
  EXPECT_EQ(read_whole_file(path_of("plain")), "a file");
}

TEST_F(SafetensorsTest, WriterRefusesBadTensorsAndKeepsOldFile) {
  const std::string path = path_of("out.safetensors");
  const std::vector<float> values{1, 2};
  write_safetensors_f32(path, {{"kept", {2}, values.data()}});
  const std::string old_bytes = read_whole_file(path);

  const auto expect_refused = [&](const std::vector<OutputTensor>& tensors, std::initializer_list<std::string> words) {
    expect_user_error([&] { write_safetensors_f32(path, tensors); }, path, words);
    EXPECT_EQ(read_whole_file(path), old_bytes);
    EXPECT_EQ(directory_entries(), std::vector<std::string>{"out.safetensors"});
  };
  expect_refused({{"x", {2}, values.data()}, {"x", {1}, values.data()}}, {"duplicate", "'x'"});
  expect_refused({{"neg", {2, -1}, values.data()}}, {"'neg'", "negative"});
  expect_refused({{"null", {2}, nullptr}}, {"'null'", "null"});
  expect_refused({{"__metadata__", {1}, values.data()}}, {"__metadata__"});
  expect_refused({{"bad\xff", {1}, values.data()}}, {"UTF-8"});
}

TEST_F(SafetensorsTest, WriterReportsUnwritableDestination) {
  const std::vector<float> values{1};
  const std::string path = path_of("a_directory");
  fs::create_directory(path);
  expect_user_error([&] { write_safetensors_f32(path, {{"x", {1}, values.data()}}); }, path, {"rename"});
  EXPECT_EQ(directory_entries(), std::vector<std::string>{"a_directory"});
}

// --- slices --------------------------------------------------------------------------------------

class SafetensorsSliceTest : public SafetensorsTest {
 protected:
  void SetUp() override {
    SafetensorsTest::SetUp();
    const std::vector<float> matrix = iota_floats(20);  // [4, 5]: value = 5 * row + col
    const std::vector<float> vector = iota_floats(6);
    const std::vector<float> cube = iota_floats(24);  // [2, 3, 4] viewed as [2, 12]
    path_ = path_of("slices.safetensors");
    write_safetensors_f32(path_,
                          {{"m", {4, 5}, matrix.data()}, {"v", {6}, vector.data()}, {"c", {2, 3, 4}, cube.data()}});
  }
  std::vector<float> read(const std::string& name, const Slice2D& slice) const {
    return SafetensorsFile::open(path_).read_f32(name, slice);
  }
  std::string path_;
};

TEST_F(SafetensorsSliceTest, RowRange) {
  EXPECT_EQ(read("m", {1, 2, 0, -1}), (std::vector<float>{5, 6, 7, 8, 9, 10, 11, 12, 13, 14}));
}

TEST_F(SafetensorsSliceTest, ColumnRange) {
  EXPECT_EQ(read("m", {0, -1, 3, 2}), (std::vector<float>{3, 4, 8, 9, 13, 14, 18, 19}));
}

TEST_F(SafetensorsSliceTest, RowsAndColumns) {
  EXPECT_EQ(read("m", {2, 2, 1, 3}), (std::vector<float>{11, 12, 13, 16, 17, 18}));
}

TEST_F(SafetensorsSliceTest, MinusOneCountsRunToTheEnd) {
  EXPECT_EQ(read("m", {3, -1, 2, -1}), (std::vector<float>{17, 18, 19}));
  EXPECT_EQ(read("m", {}), iota_floats(20));
}

TEST_F(SafetensorsSliceTest, EmptySlices) {
  EXPECT_TRUE(read("m", {4, -1, 0, -1}).empty());
  EXPECT_TRUE(read("m", {1, 2, 5, 0}).empty());
}

TEST_F(SafetensorsSliceTest, OneDimensionalTensorIsOneRow) {
  EXPECT_EQ(read("v", {0, 1, 2, 3}), (std::vector<float>{2, 3, 4}));
  EXPECT_EQ(read("v", {0, -1, 4, -1}), (std::vector<float>{4, 5}));
}

TEST_F(SafetensorsSliceTest, RankThreeTensorIsViewedAsTwoD) {
  EXPECT_EQ(read("c", {1, 1, 0, -1}), (std::vector<float>{12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23}));
  EXPECT_EQ(read("c", {0, 2, 10, 2}), (std::vector<float>{10, 11, 22, 23}));
}

TEST_F(SafetensorsSliceTest, ReadRawCopiesPackedBytes) {
  std::vector<float> values(4, -1.0f);
  SafetensorsFile::open(path_).read_raw("m", {1, 2, 3, 2}, values.data());
  EXPECT_EQ(values, (std::vector<float>{8, 9, 13, 14}));
}

TEST_F(SafetensorsSliceTest, RefusesSlicesOutsideTheTensor) {
  const SafetensorsFile file = SafetensorsFile::open(path_);
  const auto expect_refused = [&](const std::string& name, const Slice2D& slice, const std::string& axis) {
    expect_user_error([&] { file.read_f32(name, slice); }, path_, {"'" + name + "'", axis});
    std::vector<float> sink(64);
    expect_user_error([&] { file.read_raw(name, slice, sink.data()); }, path_, {"'" + name + "'", axis});
  };
  expect_refused("m", {5, -1, 0, -1}, "rows");
  expect_refused("m", {2, 3, 0, -1}, "rows");
  expect_refused("m", {-1, 1, 0, -1}, "rows");
  expect_refused("m", {0, -1, 0, 6}, "columns");
  expect_refused("m", {0, -1, 4, 2}, "columns");
  expect_refused("m", {0, -1, 0, -2}, "columns");
  expect_refused("m", {std::numeric_limits<int64_t>::min(), -1, 0, -1}, "rows");
  expect_refused("m", {1, std::numeric_limits<int64_t>::max(), 0, -1}, "rows");
  expect_refused("v", {0, 2, 0, -1}, "rows");
  expect_refused("c", {0, -1, 0, 13}, "columns");
}

TEST_F(SafetensorsSliceTest, RefusesMissingTensor) {
  const SafetensorsFile file = SafetensorsFile::open(path_);
  EXPECT_FALSE(file.has("nope"));
  EXPECT_TRUE(file.has("m"));
  expect_user_error([&] { file.info("nope"); }, path_, {"no tensor 'nope'"});
  expect_user_error([&] { file.read_f32("nope"); }, path_, {"no tensor 'nope'"});
}

// --- hand-crafted files: conversions -------------------------------------------------------------

TEST_F(SafetensorsTest, ConvertsBF16) {
  const std::vector<uint16_t> codes{0x3f80, 0xc020, 0x7f80, 0x0001, 0x4049, 0x8000};
  const std::string path =
      write_safetensors(R"({"b":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]}})", raw_bytes(codes));
  const SafetensorsFile file = SafetensorsFile::open(path);
  const std::vector<float> expected{1.0f, -2.5f, INFINITY, std::ldexp(1.0f, -133), 3.140625f, -0.0f};
  EXPECT_EQ(bit_patterns(file.read_f32("b")), bit_patterns(expected));
  EXPECT_EQ(file.read_f32("b", {1, 1, 1, 2}), (std::vector<float>{3.140625f, -0.0f}));
}

TEST_F(SafetensorsTest, ConvertsF16) {
  const std::vector<uint16_t> codes{0x3c00, 0xc000, 0x0001, 0x7bff, 0xfc00};
  const std::string path =
      write_safetensors(R"({"h":{"dtype":"F16","shape":[5],"data_offsets":[0,10]}})", raw_bytes(codes));
  const std::vector<float> expected{1.0f, -2.0f, std::ldexp(1.0f, -24), 65504.0f, -INFINITY};
  EXPECT_EQ(SafetensorsFile::open(path).read_f32("h"), expected);
}

TEST_F(SafetensorsTest, ConvertsF8E4M3) {
  const std::vector<uint8_t> codes{0x38, 0x7e, 0x01, 0xb8, 0x7f, 0x00};
  const std::string path =
      write_safetensors(R"({"q":{"dtype":"F8_E4M3","shape":[3,2],"data_offsets":[0,6]}})", raw_bytes(codes));
  const std::vector<float> values = SafetensorsFile::open(path).read_f32("q");
  ASSERT_EQ(values.size(), 6u);
  EXPECT_EQ(values[0], 1.0f);
  EXPECT_EQ(values[1], 448.0f);
  EXPECT_EQ(values[2], std::ldexp(1.0f, -9));
  EXPECT_EQ(values[3], -1.0f);
  EXPECT_TRUE(std::isnan(values[4]));
  EXPECT_EQ(values[5], 0.0f);
  EXPECT_EQ(SafetensorsFile::open(path).read_f32("q", {1, 1, 1, 1}), (std::vector<float>{-1.0f}));
}

TEST_F(SafetensorsTest, ConvertsF64) {
  const std::vector<double> values{1.5, -1e300, 1e-50, 3.0, 0.1};
  const std::string path =
      write_safetensors(R"({"d":{"dtype":"F64","shape":[5],"data_offsets":[0,40]}})", raw_bytes(values));
  const std::vector<float> expected{1.5f, -INFINITY, 0.0f, 3.0f, 0.1f};
  EXPECT_EQ(SafetensorsFile::open(path).read_f32("d"), expected);
}

TEST_F(SafetensorsTest, ReadsIntegersRawButRefusesThemAsF32) {
  const std::vector<int32_t> values{-1, 2, 3, -4};
  const std::string path =
      write_safetensors(R"({"i":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}})", raw_bytes(values));
  const SafetensorsFile file = SafetensorsFile::open(path);
  std::vector<int32_t> column(2);
  file.read_raw("i", {0, -1, 1, 1}, column.data());
  EXPECT_EQ(column, (std::vector<int32_t>{2, -4}));
  expect_user_error([&] { file.read_f32("i"); }, path, {"'i'", "I32"});
}

TEST(SafetensorsDType, NamesAndSizes) {
  const std::vector<std::tuple<DType, std::string, int64_t>> table{
      {DType::F64, "F64", 8},         {DType::F32, "F32", 4}, {DType::F16, "F16", 2},  {DType::BF16, "BF16", 2},
      {DType::F8_E4M3, "F8_E4M3", 1}, {DType::I64, "I64", 8}, {DType::I32, "I32", 4},  {DType::I16, "I16", 2},
      {DType::I8, "I8", 1},           {DType::U8, "U8", 1},   {DType::BOOL, "BOOL", 1}};
  for (const auto& [dtype, name, size] : table) {
    EXPECT_EQ(dtype_name(dtype), name);
    EXPECT_EQ(dtype_size(dtype), size);
  }
  EXPECT_EQ((TensorInfo{"t", DType::F32, {2, 3, 4}, 0, 0}.numel()), 24);
  EXPECT_EQ((TensorInfo{"t", DType::F32, {}, 0, 0}.numel()), 1);
}

// --- hand-crafted files: accepted ----------------------------------------------------------------

TEST_F(SafetensorsTest, AcceptsSpacePaddedHeaderAndReportsAbsoluteOffsets) {
  const std::string header = std::string(kTwoTensorHeader) + "      ";
  const std::string path = write_safetensors(header, two_tensor_data());
  const SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.names(), (std::vector<std::string>{"v", "w"}));
  EXPECT_EQ(file.info("v").data_begin, 8 + header.size() + 24);
  EXPECT_EQ(file.info("v").data_end, 8 + header.size() + 40);
  EXPECT_EQ(file.read_f32("v"), (std::vector<float>{10, 11, 12, 13}));
  EXPECT_TRUE(file.metadata().empty());
}

TEST_F(SafetensorsTest, AcceptsEmptyDataSectionWithZeroSizeTensors) {
  const std::string path = write_safetensors(
      R"({"a":{"dtype":"F32","shape":[0,4],"data_offsets":[0,0]},"b":{"dtype":"BF16","shape":[0],"data_offsets":[0,0]}})",
      "");
  const SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.info("a").numel(), 0);
  EXPECT_TRUE(file.read_f32("a").empty());
  EXPECT_TRUE(file.read_f32("b").empty());
}

TEST_F(SafetensorsTest, AcceptsEmptyHeaderObject) {
  EXPECT_TRUE(SafetensorsFile::open(write_safetensors("{}", "")).names().empty());
}

TEST_F(SafetensorsTest, MoveTransfersTheOpenFile) {
  const std::string path = write_safetensors(kTwoTensorHeader, two_tensor_data());
  SafetensorsFile original = SafetensorsFile::open(path);
  SafetensorsFile moved(std::move(original));
  EXPECT_EQ(moved.read_f32("v"), (std::vector<float>{10, 11, 12, 13}));
  SafetensorsFile assigned = SafetensorsFile::open(write_file("other.safetensors", safetensors_bytes("{}", "")));
  assigned = std::move(moved);
  EXPECT_EQ(assigned.path(), path);
  EXPECT_EQ(assigned.read_f32("w", {1, 1, 0, 2}), (std::vector<float>{3, 4}));
}

// --- hand-crafted files: refused -----------------------------------------------------------------

TEST_F(SafetensorsTest, RefusesMissingFile) {
  const std::string path = path_of("absent.safetensors");
  expect_user_error([&] { SafetensorsFile::open(path); }, path, {"No such file"});
}

TEST_F(SafetensorsTest, RefusesDirectory) {
  expect_user_error([&] { SafetensorsFile::open(dir_); }, dir_, {"not a regular file"});
}

TEST_F(SafetensorsTest, RefusesTruncatedFile) {
  const std::string path = write_file("short.safetensors", std::string(5, '\0'));
  expect_user_error([&] { SafetensorsFile::open(path); }, path, {"5 bytes", "too short"});
}

TEST_F(SafetensorsTest, RefusesZeroHeaderLength) {
  const std::string path = write_file("zero.safetensors", length_field(0) + "{}");
  expect_user_error([&] { SafetensorsFile::open(path); }, path, {"header length 0"});
}

TEST_F(SafetensorsTest, RefusesHeaderLengthPastEndOfFile) {
  const std::string path = write_file("long.safetensors", length_field(100) + "{}");
  expect_user_error([&] { SafetensorsFile::open(path); }, path, {"header length 100", "exceeds"});
}

TEST_F(SafetensorsTest, RefusesAbsurdHeaderLength) {
  for (const uint64_t length : {uint64_t{100'000'001}, uint64_t{1} << 63, ~uint64_t{0}}) {
    const std::string path = write_file("huge.safetensors", length_field(length) + "{}");
    expect_user_error([&] { SafetensorsFile::open(path); }, path, {"header length " + std::to_string(length), "limit"});
  }
}

TEST_F(SafetensorsTest, RefusesInvalidJson) {
  expect_open_fails(R"({"w": {"dtype": "F32", )", "", {"not valid JSON"});
  expect_open_fails(std::string("{}\0\0\0\0\0\0", 8), "", {"not valid JSON", "NUL"});  // only spaces may pad
  expect_open_fails(std::string("{}\0{\"hidden\": 1}", 15), "", {"not valid JSON", "NUL"});
  expect_open_fails("{\"w\xff\": 1}", "", {"not valid JSON"});
  expect_open_fails(R"({} // comment)", "", {"not valid JSON"});
}

TEST_F(SafetensorsTest, RefusesHeaderThatIsNotAnObject) {
  expect_open_fails("[1, 2]", "", {"array", "not an object"});
  expect_open_fails("\"text\"", "", {"string", "not an object"});
}

TEST_F(SafetensorsTest, RefusesDuplicateTensorName) {
  expect_open_fails(
      R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
      std::string(8, '\0'), {"duplicate tensor 'w'"});
}

TEST_F(SafetensorsTest, RefusesDuplicateFieldInEntry) {
  expect_open_fails(R"({"w":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0'),
                    {"duplicate key 'dtype'"});
}

TEST_F(SafetensorsTest, RefusesEntryThatIsNotAnObject) {
  expect_open_fails(R"({"w": [1, 2]})", "", {"tensor 'w'", "not an object"});
}

TEST_F(SafetensorsTest, RefusesMissingField) {
  expect_open_fails(R"({"w":{"dtype":"F32","shape":[1]}})", std::string(4, '\0'),
                    {"tensor 'w'", "missing", "data_offsets"});
}

TEST_F(SafetensorsTest, RefusesExtraField) {
  expect_open_fails(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":0}})", std::string(4, '\0'),
                    {"tensor 'w'", "unexpected field 'extra'"});
}

TEST_F(SafetensorsTest, RefusesUnknownDtype) {
  expect_open_fails(R"({"w":{"dtype":"F4","shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0'),
                    {"tensor 'w'", "unknown dtype 'F4'"});
  expect_open_fails(R"({"w":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0'),
                    {"tensor 'w'", "dtype"});
}

TEST_F(SafetensorsTest, RefusesDtypeThatIsNotAString) {
  expect_open_fails(R"({"w":{"dtype":32,"shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0'),
                    {"tensor 'w'", "dtype"});
}

TEST_F(SafetensorsTest, RefusesNegativeShape) {
  expect_open_fails(R"({"w":{"dtype":"F32","shape":[-1,2],"data_offsets":[0,4]}})", std::string(4, '\0'),
                    {"tensor 'w'", "shape"});
}

TEST_F(SafetensorsTest, RefusesNonIntegerShape) {
  for (const std::string shape : {"[2.5]", "[\"2\"]", "[1e2]", "4", "null", "[[1]]", "[18446744073709551615]"}) {
    expect_open_fails(R"({"w":{"dtype":"F32","shape":)" + shape + R"(,"data_offsets":[0,4]}})", std::string(4, '\0'),
                      {"tensor 'w'", "shape"});
  }
}

TEST_F(SafetensorsTest, RefusesDeeplyNestedJsonWithoutCrashing) {
  const std::string nested = std::string(100000, '[') + std::string(100000, ']');
  expect_open_fails(R"({"w":{"dtype":"F32","shape":)" + nested + R"(,"data_offsets":[0,4]}})", std::string(4, '\0'),
                    {"tensor 'w'", "shape"});
}

TEST_F(SafetensorsTest, RefusesByteSizeOverflow) {
  expect_open_fails(R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,4]}})",
                    std::string(4, '\0'), {"tensor 'w'", "int64"});
  expect_open_fails(R"({"w":{"dtype":"F32","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}})", "",
                    {"tensor 'w'", "int64"});
}

TEST_F(SafetensorsTest, RefusesWrongByteCountWithFullMessage) {
  const std::string path = write_safetensors(
      R"({"layers.0.attn.wo.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,12]}})", std::string(12, '\0'));
  try {
    SafetensorsFile::open(path);
    FAIL() << "expected a UserError";
  } catch (const UserError& error) {
    EXPECT_EQ(
        std::string(error.what()),
        path +
            ": tensor 'layers.0.attn.wo.weight': data_offsets [0, 12] hold 12 bytes but shape [2, 3] of F32 needs 24");
  }
}

TEST_F(SafetensorsTest, RefusesOffsetsPastEndOfFile) {
  expect_open_fails(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", std::string(4, '\0'),
                    {"tensor 'w'", "past the end"});
}

TEST_F(SafetensorsTest, RefusesOverlappingTensors) {
  expect_open_fails(
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
      std::string(12, '\0'), {"'a'", "'b'", "overlap"});
  expect_open_fails(
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
      std::string(8, '\0'), {"'a'", "'z'", "overlap"});
}

TEST_F(SafetensorsTest, RefusesHoleBetweenTensors) {
  expect_open_fails(
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
      std::string(12, '\0'), {"hole", "[4, 8)", "'b'"});
}

TEST_F(SafetensorsTest, RefusesTrailingBytesAfterTheLastTensor) {
  expect_open_fails(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", std::string(8, '\0'),
                    {"hole", "4 bytes"});
  expect_open_fails("{}", std::string(1, '\0'), {"hole"});
}

TEST_F(SafetensorsTest, RefusesMetadataThatIsNotAnObjectOfStrings) {
  expect_open_fails(R"({"__metadata__":"text"})", "", {"__metadata__", "not an object"});
  expect_open_fails(R"({"__metadata__":{"format":"pt","step":3}})", "", {"__metadata__", "'step'", "not a string"});
}

TEST_F(SafetensorsTest, ReadsMetadataStrings) {
  const SafetensorsFile file = SafetensorsFile::open(write_safetensors(R"({"__metadata__":{"format":"pt"}})", ""));
  EXPECT_EQ(file.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  EXPECT_TRUE(file.names().empty());
}

TEST_F(SafetensorsTest, RefusesDataOffsetsOfWrongLength) {
  expect_open_fails(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", std::string(4, '\0'),
                    {"tensor 'w'", "data_offsets"});
  expect_open_fails(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", std::string(4, '\0'),
                    {"tensor 'w'", "data_offsets"});
}

TEST_F(SafetensorsTest, RefusesDataOffsetsBeginAfterEnd) {
  expect_open_fails(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", std::string(8, '\0'),
                    {"tensor 'w'", "data_offsets [8, 4]", "begin"});
}

TEST_F(SafetensorsTest, RefusesNegativeOrFractionalDataOffsets) {
  expect_open_fails(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", std::string(4, '\0'),
                    {"tensor 'w'", "data_offsets"});
  expect_open_fails(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4.0]}})", std::string(4, '\0'),
                    {"tensor 'w'", "data_offsets"});
}

TEST_F(SafetensorsTest, EscapesControlCharactersInMessages) {
  expect_open_fails("{\"a\\nb\": 1}", "", {"tensor 'a\\x0ab'", "not an object"});
}

}  // namespace
}  // namespace mla
