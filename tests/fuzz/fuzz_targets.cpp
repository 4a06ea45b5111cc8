// libFuzzer targets for the parsers of user data (launch/fuzz.sh builds and runs them). Each
// input must load or be refused with one clear line: a UserError whose message is non-empty, holds
// no newline, and (files) starts with the file's name. Anything else (a crash, a sanitizer report,
// another exception, a multi-line message) aborts, which libFuzzer reports as a finding.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "runtime/base/errors.h"
#include "runtime/io/checkpoint.h"
#include "runtime/io/config.h"
#include "runtime/io/safetensors.h"

namespace {

void require_one_line(const mla::UserError& error, const std::string& prefix) {
  const std::string message = error.what();
  if (message.empty() || message.find('\n') != std::string::npos || message.rfind(prefix, 0) != 0) std::abort();
}

// Reads every tensor whole and as a slice: the reader's checks must hold for any header.
[[maybe_unused]] void exercise_safetensors(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/mla_fuzz_safetensors." + std::to_string(getpid());
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  try {
    const mla::SafetensorsFile file = mla::SafetensorsFile::open(path);
    for (const std::string& name : file.names()) {
      const mla::TensorInfo& info = file.info(name);
      std::vector<unsigned char> raw(info.data_end - info.data_begin);
      file.read_raw(name, {}, raw.data());
      try {
        (void)file.read_f32(name);
        (void)file.read_f32(name, {1, -1, 1, -1});
      } catch (const mla::UserError& error) {
        require_one_line(error, path + ": ");
      }
    }
  } catch (const mla::UserError& error) {
    require_one_line(error, path + ": ");
  }
}

// YAML text, then optionally "\n---set\n" and one --set assignment per line.
[[maybe_unused]] void exercise_config(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t marker = input.find("\n---set\n");
  std::vector<std::string> overrides;
  if (marker != std::string::npos) {
    std::string rest = input.substr(marker + 8);
    for (size_t begin = 0; begin <= rest.size();) {
      const size_t end = std::min(rest.find('\n', begin), rest.size());
      if (end > begin) overrides.push_back(rest.substr(begin, end - begin));
      begin = end + 1;
    }
  }
  try {
    (void)mla::parse_config(input.substr(0, marker), "fuzz.yaml", overrides);
  } catch (const mla::UserError& error) {
    const std::string message = error.what();
    if (message.empty() || message.find('\n') != std::string::npos) std::abort();
  }
}

[[maybe_unused]] void exercise_hf_index(const uint8_t* data, size_t size) {
  try {
    (void)mla::parse_hf_index(std::string(reinterpret_cast<const char*>(data), size), "index.json");
  } catch (const mla::UserError& error) {
    require_one_line(error, "index.json: ");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
#if defined(MLA_FUZZ_SAFETENSORS)
    exercise_safetensors(data, size);
#elif defined(MLA_FUZZ_CONFIG)
    exercise_config(data, size);
#elif defined(MLA_FUZZ_HF_INDEX)
    exercise_hf_index(data, size);
#else
#error "define the target: MLA_FUZZ_SAFETENSORS, MLA_FUZZ_CONFIG or MLA_FUZZ_HF_INDEX"
#endif
  } catch (...) {
    std::abort();  // any exception other than a UserError escaped a parser
  }
  return 0;
}
