// The safetensors reader/writer: every dtype, Python-identical files, and strict checks of untrusted input.

#include <filesystem>
#include <fstream>

#include "support/vectors.h"

namespace peft_test::safetensors_test {
namespace {

namespace fs = std::filesystem;

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

fs::path temp_dir() {
  const fs::path dir = fs::temp_directory_path() / ("peft_safetensors_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir;
}

// A file from a header (JSON text) and a data section.
std::string file_with(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

std::string error_of(const std::string& bytes) {
  try {
    peft::safetensors::load_bytes(bytes);
  } catch (const peft::FileFormatError& e) {
    return e.what();
  }
  return "<accepted>";
}

std::string file_error_of(const fs::path& file, bool mmap) {
  try {
    peft::safetensors::load_file(file.string(), {mmap});
  } catch (const peft::FileFormatError& e) {
    return e.what();
  }
  return "<accepted>";
}

TEST(Safetensors, EveryDtypeRoundTrips) {
  peft::StateDict sd;
  sd.insert("f64", torch::randn({2, 3}, torch::kDouble));
  sd.insert("f32", torch::randn({4}));
  sd.insert("f16", torch::randn({3, 1}).to(torch::kHalf));
  sd.insert("bf16", torch::randn({5}).to(torch::kBFloat16));
  sd.insert("i64", torch::arange(6, torch::kLong).view({2, 3}));
  sd.insert("i32", torch::arange(4, torch::kInt));
  sd.insert("i16", torch::arange(4, torch::kShort));
  sd.insert("i8", torch::arange(-2, 2, torch::kChar));
  sd.insert("u8", torch::arange(4, torch::kByte));
  sd.insert("bool", torch::tensor({true, false, true}));
  sd.insert("scalar", torch::tensor(3.5));
  sd.insert("empty", torch::zeros({0, 4}));
  const fs::path file = temp_dir() / "all.safetensors";
  peft::safetensors::save_file(sd, file.string(), {{"format", "pt"}, {"note", "ünïcode"}});
  for (bool mmap : {true, false}) {
    const peft::StateDict back = peft::safetensors::load_file(file.string(), {mmap});
    ASSERT_EQ(back.size(), sd.size());
    for (const auto& item : sd) {
      const at::Tensor& t = back[item.key()];
      EXPECT_EQ(t.scalar_type(), item.value().scalar_type()) << item.key();
      EXPECT_TRUE(torch::equal(t, item.value())) << item.key();
    }
  }
  const auto metadata = peft::safetensors::load_metadata(file.string());
  EXPECT_EQ(metadata.at("note"), "ünïcode");
}

TEST(Safetensors, RewritesPythonFilesByteForByte) {
  // Reading then writing every file of the vectors gives the same bytes Python wrote.
  size_t files = 0;
  for (const auto& entry : fs::recursive_directory_iterator(vectors_dir())) {
    if (entry.path().extension() != ".safetensors") continue;
    const std::string original = read_bytes(entry.path());
    peft::safetensors::Metadata metadata;
    const peft::StateDict sd = peft::safetensors::load_bytes(original, &metadata);
    EXPECT_EQ(peft::safetensors::save_bytes(sd, metadata), original) << entry.path();
    ++files;
  }
  EXPECT_GT(files, 100u);
}

TEST(Safetensors, MappedTensorsShareTheFileAndNeverWriteIt) {
  peft::StateDict sd;
  sd.insert("w", torch::ones({256}));
  const fs::path file = temp_dir() / "mapped.safetensors";
  peft::safetensors::save_file(sd, file.string());
  const std::string bytes = read_bytes(file);
  {
    peft::StateDict loaded = peft::safetensors::load_file(file.string());
    loaded["w"].add_(1.0);  // copy-on-write: private to this process
    EXPECT_TRUE(torch::equal(loaded["w"], torch::full({256}, 2.0)));
  }
  EXPECT_EQ(read_bytes(file), bytes);
  // The tensors keep the mapping alive after the StateDict is gone.
  at::Tensor kept = peft::safetensors::load_file(file.string())["w"];
  EXPECT_TRUE(torch::equal(kept, torch::ones({256})));
}

TEST(Safetensors, SaveIsAtomicAndLeavesNoTemporaryFiles) {
  const fs::path dir = temp_dir() / "atomic";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path file = dir / "a.safetensors";
  peft::StateDict first, second;
  first.insert("x", torch::zeros({4}));
  second.insert("x", torch::ones({8}));
  peft::safetensors::save_file(first, file.string());
  peft::safetensors::save_file(second, file.string());
  EXPECT_TRUE(torch::equal(peft::safetensors::load_file(file.string())["x"], torch::ones({8})));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
  EXPECT_THROW(peft::safetensors::save_file(first, (dir / "missing" / "b.safetensors").string()), peft::FileFormatError);
}

TEST(Safetensors, RejectsMalformedFiles) {
  const std::string ok_header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string data(8, '\0');
  ASSERT_EQ(error_of(file_with(ok_header, data)), "<accepted>");
  const std::vector<std::pair<std::string, std::string>> cases{
      {std::string("abc"), "too short"},
      {file_with(ok_header, data).substr(0, 20), "exceeds the file size"},
      {[] { std::string s(8, '\0'); uint64_t n = 200'000'000; std::memcpy(s.data(), &n, 8); return s; }(), "exceeds the limit"},
      {file_with("[1,2]", ""), "does not start with '{'"},
      {file_with("{not json", ""), "not valid JSON"},
      {file_with(R"({"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", data), "unknown dtype 'F33'"},
      {file_with(R"({"a":{"dtype":"U16","shape":[4],"data_offsets":[0,8]}})", data), "LibTorch 1.13 does not support"},
      {file_with(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data), "need 12"},
      {file_with(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", data), "data section of 8 bytes"},
      {file_with(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", data), "belong to no tensor"},
      {file_with(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data), "gap before tensor 'a'"},
      {file_with(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data), "overlaps"},
      {file_with(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", data), "begin > end"},
      {file_with(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data), "non-negative"},
      {file_with(R"({"a":{"dtype":"F32","shape":[2]}})", data), "data_offsets"},
      {file_with(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", data), "no string dtype"},
      {file_with(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}})", data), "unknown field 'extra'"},
      {file_with(R"({"__metadata__":{"k":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", data), "must be a string"},
      {file_with(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})", data), "more than 2^64"},
      {file_with(R"({"a":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})", std::string("\x01\x02", 2)), "other than 0 or 1"},
  };
  // Every reader sees the same checks: bytes in memory, a mapped file, and a file read without mmap.
  const fs::path file = temp_dir() / "malformed.safetensors";
  for (const auto& [bytes, expected] : cases) {
    std::ofstream(file, std::ios::binary | std::ios::trunc) << bytes;
    for (const auto& [reader, message] : {std::pair<const char*, std::string>{"bytes", error_of(bytes)},
                                          {"mmap", file_error_of(file, true)},
                                          {"read", file_error_of(file, false)}}) {
      EXPECT_NE(message.find(expected), std::string::npos) << reader << ": expected '" << expected << "', got: " << message;
    }
  }
}

TEST(Safetensors, NamesTheFileInErrors) {
  const fs::path file = temp_dir() / "bad.safetensors";
  std::ofstream(file, std::ios::binary) << "not a safetensors file at all";
  try {
    peft::safetensors::load_file(file.string());
    FAIL();
  } catch (const peft::FileFormatError& e) {
    EXPECT_NE(std::string(e.what()).find(file.string()), std::string::npos) << e.what();
  }
  EXPECT_THROW(peft::safetensors::load_file((temp_dir() / "does_not_exist").string()), peft::FileFormatError);
  EXPECT_THROW(peft::safetensors::load_file(temp_dir().string()), peft::FileFormatError);
}

TEST(Safetensors, RefusesToSaveWhatItCannotRepresent) {
  peft::StateDict meta;
  meta.insert("m", torch::empty({2}, torch::TensorOptions().device(torch::kMeta)));
  EXPECT_THROW(peft::safetensors::save_bytes(meta), peft::FileFormatError);
  peft::StateDict complex;
  complex.insert("c", torch::zeros({2}, torch::kComplexFloat));
  EXPECT_THROW(peft::safetensors::save_bytes(complex), peft::FileFormatError);
  peft::StateDict views;
  views.insert("t", torch::arange(6, torch::kFloat).view({2, 3}).t());  // non-contiguous: saved as its values
  EXPECT_TRUE(torch::equal(peft::safetensors::load_bytes(peft::safetensors::save_bytes(views))["t"], views["t"]));
}

}  // namespace
}  // namespace peft_test::safetensors_test
