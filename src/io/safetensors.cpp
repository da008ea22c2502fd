#include <peft/safetensors.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <nlohmann/json.hpp>

#include <peft/error.h>

#include "io/atomic_file.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian; add byte swapping");

namespace peft::safetensors {
namespace {

using ordered_json = nlohmann::ordered_json;

// The Python package rejects headers above 100 MB; so do we, before allocating anything for them.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DType {
  const char* name;
  c10::ScalarType type;
  size_t size;
  int order;  // position in the Rust crate's Dtype enum: files list larger ranks first
};

constexpr DType kDTypes[] = {
    {"BOOL", at::kBool, 1, 0},  {"U8", at::kByte, 1, 4},    {"I8", at::kChar, 1, 5},
    {"I16", at::kShort, 2, 9},  {"F16", at::kHalf, 2, 11},  {"BF16", at::kBFloat16, 2, 12},
    {"I32", at::kInt, 4, 13},   {"F32", at::kFloat, 4, 15}, {"F64", at::kDouble, 8, 16},
    {"I64", at::kLong, 8, 17},
};
// Valid in the format but without a LibTorch 1.13 dtype.
constexpr const char* kKnownUnsupported[] = {"U16", "U32", "U64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4",
                                             "F6_E2M3", "F6_E3M2", "C64"};

const DType* dtype_by_name(const std::string& name) {
  for (const DType& d : kDTypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

const DType& dtype_of(c10::ScalarType type, const std::string& key) {
  for (const DType& d : kDTypes) {
    if (d.type == type) return d;
  }
  throw FileFormatError("safetensors: tensor '" + key + "' has dtype " + std::string(c10::toString(type)) +
                        ", which the format cannot store");
}

struct Entry {
  std::string name;
  const DType* dtype;
  std::vector<int64_t> shape;
  uint64_t begin;
  uint64_t end;
};

struct Header {
  std::vector<Entry> entries;  // in data order
  Metadata metadata;
  uint64_t data_start;
};

[[noreturn]] void bad(const std::string& source, const std::string& what) {
  throw FileFormatError("safetensors file '" + source + "': " + what);
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

uint64_t checked_u64(const ordered_json& v, const std::string& source, const std::string& what) {
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0)) {
    bad(source, what + " must be a non-negative integer, got " + v.dump(-1, ' ', false, ordered_json::error_handler_t::replace));
  }
  return v.get<uint64_t>();
}

Header parse_header(const uint8_t* data, uint64_t file_size, const std::string& source) {
  if (file_size < 8) bad(source, "only " + std::to_string(file_size) + " bytes, too short for the 8-byte header length");
  const uint64_t header_size = read_u64_le(data);
  if (header_size > kMaxHeaderBytes) {
    bad(source, "header length " + std::to_string(header_size) + " exceeds the limit of " +
                    std::to_string(kMaxHeaderBytes) + " bytes");
  }
  if (header_size > file_size - 8) {
    bad(source, "header length " + std::to_string(header_size) + " exceeds the file size (" +
                    std::to_string(file_size) + " bytes)");
  }
  const char* text = reinterpret_cast<const char*>(data + 8);
  if (header_size == 0 || text[0] != '{') bad(source, "the header does not start with '{'");
  ordered_json header;
  try {
    header = ordered_json::parse(text, text + header_size);
  } catch (const ordered_json::exception& e) {
    bad(source, std::string("the header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) bad(source, "the header is not a JSON object");

  Header out;
  out.data_start = 8 + header_size;
  const uint64_t data_size = file_size - out.data_start;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& key = it.key();
    const ordered_json& value = it.value();
    if (key == "__metadata__") {
      if (!value.is_object()) bad(source, "__metadata__ must be an object of strings");
      for (auto m = value.begin(); m != value.end(); ++m) {
        if (!m.value().is_string()) bad(source, "__metadata__['" + m.key() + "'] must be a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!value.is_object()) bad(source, "entry '" + key + "' must be an object");
    for (auto f = value.begin(); f != value.end(); ++f) {
      if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets") {
        bad(source, "entry '" + key + "' has an unknown field '" + f.key() + "'");
      }
    }
    if (!value.contains("dtype") || !value["dtype"].is_string()) bad(source, "entry '" + key + "' has no string dtype");
    const std::string dtype_name = value["dtype"].get<std::string>();
    Entry entry{key, dtype_by_name(dtype_name), {}, 0, 0};
    if (!entry.dtype) {
      for (const char* known : kKnownUnsupported) {
        if (dtype_name == known) {
          bad(source, "tensor '" + key + "' has dtype " + dtype_name + ", which LibTorch 1.13 does not support");
        }
      }
      bad(source, "tensor '" + key + "' has an unknown dtype '" + dtype_name + "'");
    }
    if (!value.contains("shape") || !value["shape"].is_array()) bad(source, "tensor '" + key + "' has no shape list");
    uint64_t numel = 1;
    bool overflow = false;
    for (const auto& dim : value["shape"]) {
      const uint64_t d = checked_u64(dim, source, "a dimension of '" + key + "'");
      if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) bad(source, "tensor '" + key + "' has a dimension too large");
      overflow = overflow || (d != 0 && numel > std::numeric_limits<uint64_t>::max() / d);
      numel = overflow ? 0 : numel * d;
      entry.shape.push_back(static_cast<int64_t>(d));
    }
    if (!value.contains("data_offsets") || !value["data_offsets"].is_array() || value["data_offsets"].size() != 2) {
      bad(source, "tensor '" + key + "' needs data_offsets [begin, end]");
    }
    entry.begin = checked_u64(value["data_offsets"][0], source, "data_offsets of '" + key + "'");
    entry.end = checked_u64(value["data_offsets"][1], source, "data_offsets of '" + key + "'");
    if (entry.begin > entry.end) bad(source, "tensor '" + key + "' has data_offsets with begin > end");
    if (entry.end > data_size) {
      bad(source, "tensor '" + key + "' ends at byte " + std::to_string(entry.end) + " of a data section of " +
                      std::to_string(data_size) + " bytes");
    }
    if (overflow || numel > std::numeric_limits<uint64_t>::max() / entry.dtype->size ||
        numel * entry.dtype->size != entry.end - entry.begin) {
      bad(source, "tensor '" + key + "' spans " + std::to_string(entry.end - entry.begin) +
                      " bytes but its shape and dtype need " +
                      (overflow ? std::string("more than 2^64") : std::to_string(numel * entry.dtype->size)));
    }
    out.entries.push_back(std::move(entry));
  }
  std::sort(out.entries.begin(), out.entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected = 0;
  for (const Entry& e : out.entries) {
    if (e.begin != expected) {
      bad(source, e.begin < expected ? "tensor '" + e.name + "' overlaps the previous tensor"
                                     : "the data section has a gap before tensor '" + e.name + "'");
    }
    expected = e.end;
  }
  if (expected != data_size) {
    bad(source, "the data section has " + std::to_string(data_size - expected) + " bytes that belong to no tensor");
  }
  return out;
}

// `bytes` holds the tensor's data (e.end - e.begin bytes).
void check_bools(const Entry& e, const uint8_t* bytes, const std::string& source) {
  if (e.dtype->type != at::kBool) return;
  for (uint64_t i = 0; i < e.end - e.begin; ++i) {
    if (bytes[i] > 1) bad(source, "BOOL tensor '" + e.name + "' holds a byte other than 0 or 1");
  }
}

at::Tensor copy_out(const Entry& e, const uint8_t* data) {
  at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.dtype->type));
  if (e.end > e.begin) std::memcpy(t.data_ptr(), data + e.begin, e.end - e.begin);
  return t;
}

struct Mapping {
  void* address = MAP_FAILED;
  size_t size = 0;
  ~Mapping() {
    if (address != MAP_FAILED) munmap(address, size);
  }
};

class FileDescriptor {
 public:
  explicit FileDescriptor(const std::string& path) : fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    if (fd_ < 0) throw FileFormatError("cannot open safetensors file '" + path + "': " + std::strerror(errno));
  }
  ~FileDescriptor() { ::close(fd_); }
  int get() const { return fd_; }

 private:
  int fd_;
};

std::shared_ptr<Mapping> map_file(const std::string& path) {
  FileDescriptor fd(path);
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) throw FileFormatError("cannot stat '" + path + "': " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw FileFormatError("'" + path + "' is not a regular file");
  auto mapping = std::make_shared<Mapping>();
  mapping->size = static_cast<size_t>(st.st_size);
  if (mapping->size < 8) bad(path, "only " + std::to_string(mapping->size) + " bytes, too short for the 8-byte header length");
  // Private, writable pages: tensors handed out may be modified in place; the file never changes.
  mapping->address = mmap(nullptr, mapping->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd.get(), 0);
  if (mapping->address == MAP_FAILED) throw FileFormatError("cannot map '" + path + "': " + std::strerror(errno));
  return mapping;
}

StateDict tensors_from(const Header& header, const uint8_t* file, const std::string& source,
                       const std::shared_ptr<Mapping>& keep_alive) {
  StateDict out;
  const uint8_t* data = file + header.data_start;
  for (const Entry& e : header.entries) {
    check_bools(e, data + e.begin, source);
    const uint8_t* begin = data + e.begin;
    const bool aligned = reinterpret_cast<uintptr_t>(begin) % e.dtype->size == 0;
    at::Tensor tensor;
    if (keep_alive && aligned && e.end > e.begin) {
      tensor = at::from_blob(const_cast<uint8_t*>(begin), e.shape, [keep_alive](void*) {},
                             at::TensorOptions().dtype(e.dtype->type));
    } else {
      tensor = copy_out(e, data);
    }
    if (out.contains(e.name)) bad(source, "tensor '" + e.name + "' appears twice");
    out.insert(e.name, std::move(tensor));
  }
  return out;
}

// Without mmap: the header, then each tensor read straight into its own memory (one copy, no staging buffer).
StateDict read_tensors(const std::string& path) {
  FileDescriptor fd(path);
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) throw FileFormatError("cannot stat '" + path + "': " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw FileFormatError("'" + path + "' is not a regular file");
  const auto size = static_cast<uint64_t>(st.st_size);
  auto read_at = [&](void* into, uint64_t count, uint64_t offset) {
    auto* out = static_cast<uint8_t*>(into);
    while (count > 0) {
      const ssize_t n = ::pread(fd.get(), out, count, static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw FileFormatError("cannot read '" + path + "': " + (n == 0 ? std::string("unexpected end of file") : std::strerror(errno)));
      out += n, offset += static_cast<uint64_t>(n), count -= static_cast<uint64_t>(n);
    }
  };
  std::vector<uint8_t> head(8);
  if (size < 8) bad(path, "only " + std::to_string(size) + " bytes, too short for the 8-byte header length");
  read_at(head.data(), 8, 0);
  const uint64_t header_size = read_u64_le(head.data());
  if (header_size <= kMaxHeaderBytes && header_size <= size - 8) {
    head.resize(8 + header_size);
    read_at(head.data() + 8, header_size, 8);
  }
  const Header header = parse_header(head.data(), size, path);  // rejects the lengths skipped above
  StateDict out;
  for (const Entry& e : header.entries) {
    at::Tensor tensor = at::empty(e.shape, at::TensorOptions().dtype(e.dtype->type));
    if (e.end > e.begin) read_at(tensor.data_ptr(), e.end - e.begin, header.data_start + e.begin);
    check_bools(e, static_cast<const uint8_t*>(tensor.data_ptr()), path);
    if (out.contains(e.name)) bad(path, "tensor '" + e.name + "' appears twice");
    out.insert(e.name, std::move(tensor));
  }
  return out;
}

}  // namespace

StateDict load_file(const std::string& path, const LoadOptions& options) {
  if (options.mmap) {
    std::shared_ptr<Mapping> mapping = map_file(path);
    const auto* file = static_cast<const uint8_t*>(mapping->address);
    const Header header = parse_header(file, mapping->size, path);
    return tensors_from(header, file, path, mapping);
  }
  return read_tensors(path);
}

Metadata load_metadata(const std::string& path) {
  std::shared_ptr<Mapping> mapping = map_file(path);
  return parse_header(static_cast<const uint8_t*>(mapping->address), mapping->size, path).metadata;
}

StateDict load_bytes(const std::string& bytes, Metadata* metadata) {
  const auto* file = reinterpret_cast<const uint8_t*>(bytes.data());
  const Header header = parse_header(file, bytes.size(), "<memory>");
  if (metadata) *metadata = header.metadata;
  return tensors_from(header, file, "<memory>", nullptr);
}

namespace {

// What save_file / save_bytes write: the header (with its 8-byte length prefix) and the tensors in file order.
struct Layout {
  struct Item {
    std::string name;
    const DType* dtype;
    at::Tensor data;  // contiguous, on the CPU
  };
  std::string head;
  std::vector<Item> items;
  uint64_t data_bytes = 0;
};

Layout layout_of(const StateDict& tensors, const Metadata& metadata) {
  Layout layout;
  for (const auto& item : tensors) {
    const at::Tensor& t = item.value();
    if (!t.defined()) throw FileFormatError("safetensors: tensor '" + item.key() + "' is undefined");
    if (t.device().is_meta()) {
      throw FileFormatError("safetensors: tensor '" + item.key() + "' is on the meta device and has no data to save");
    }
    layout.items.push_back({item.key(), &dtype_of(t.scalar_type(), item.key()), t.detach().to(at::kCPU).contiguous()});
  }
  // The Python package's order: larger dtypes first, then by name.
  std::sort(layout.items.begin(), layout.items.end(), [](const Layout::Item& a, const Layout::Item& b) {
    return a.dtype->order != b.dtype->order ? a.dtype->order > b.dtype->order : a.name < b.name;
  });
  ordered_json header = ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const Layout::Item& item : layout.items) {
    const uint64_t bytes = item.data.numel() * item.dtype->size;
    header[item.name] = {{"dtype", item.dtype->name}, {"shape", item.data.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  layout.data_bytes = offset;
  std::string text;
  try {
    text = header.dump();
  } catch (const ordered_json::exception& e) {
    throw FileFormatError(std::string("safetensors: a tensor name or metadata value is not valid UTF-8: ") + e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  const uint64_t header_size = text.size();
  layout.head.append(reinterpret_cast<const char*>(&header_size), 8);
  layout.head += text;
  return layout;
}

}  // namespace

std::string save_bytes(const StateDict& tensors, const Metadata& metadata) {
  const Layout layout = layout_of(tensors, metadata);
  std::string out;
  out.reserve(layout.head.size() + layout.data_bytes);
  out += layout.head;
  for (const Layout::Item& item : layout.items) {
    out.append(static_cast<const char*>(item.data.data_ptr()), item.data.numel() * item.dtype->size);
  }
  return out;
}

void save_file(const StateDict& tensors, const std::string& path, const Metadata& metadata) {
  // Streamed tensor by tensor: no second copy of the data in memory.
  const Layout layout = layout_of(tensors, metadata);
  detail::AtomicFileWriter writer(path);
  writer.write(layout.head.data(), layout.head.size());
  for (const Layout::Item& item : layout.items) writer.write(item.data.data_ptr(), item.data.numel() * item.dtype->size);
  writer.commit();
}

}  // namespace peft::safetensors
