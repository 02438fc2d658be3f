// safetensors: reader (mmap + header validation), TensorStore (single file or sharded folder), writer.
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "nlohmann/json.hpp"

namespace zerolora::io {

namespace fs = std::filesystem;
using json = nlohmann::json;
using core::Error;

static_assert(std::endian::native == std::endian::little, "safetensors is little-endian; so is this reader");

namespace {

// The reference reader's limit: a larger header is a corrupt length field, not a real model.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct StoredDtype {
  const char* name;
  unsigned bits;
  bool in_core;
  core::DType dtype;
};

// Every dtype the safetensors format defines (spec §4.3). Only the ones core::DType has can be loaded.
const StoredDtype kStoredDtypes[] = {
    {"F32", 32, true, core::DType::F32},     {"F64", 64, true, core::DType::F64},
    {"BF16", 16, true, core::DType::BF16},   {"F16", 16, true, core::DType::F16},
    {"U8", 8, true, core::DType::U8},        {"I32", 32, true, core::DType::I32},
    {"I64", 64, true, core::DType::I64},     {"BOOL", 8, false, core::DType::U8},
    {"I8", 8, false, core::DType::U8},       {"I16", 16, false, core::DType::U8},
    {"U16", 16, false, core::DType::U8},     {"U32", 32, false, core::DType::U8},
    {"U64", 64, false, core::DType::U8},     {"C64", 64, false, core::DType::U8},
    {"F8_E5M2", 8, false, core::DType::U8},  {"F8_E4M3", 8, false, core::DType::U8},
    {"F8_E8M0", 8, false, core::DType::U8},  {"F8_E4M3FNUZ", 8, false, core::DType::U8},
    {"F8_E5M2FNUZ", 8, false, core::DType::U8}, {"F4", 4, false, core::DType::U8},
    {"F6_E2M3", 6, false, core::DType::U8},  {"F6_E3M2", 6, false, core::DType::U8},
};

const StoredDtype* find_stored_dtype(const std::string& name) {
  for (const auto& d : kStoredDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

bool is_float_dtype(core::DType dt) {
  return dt == core::DType::F32 || dt == core::DType::F64 || dt == core::DType::BF16 || dt == core::DType::F16;
}

std::string in_quotes(const std::string& s) { return "'" + s + "'"; }

std::string offsets_str(uint64_t begin, uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + "]";
}

const char* kResaveFix = "the file is damaged or was not written by a safetensors writer: re-download or re-save it";

// A header entry after its own checks, before the checks that relate entries to each other.
struct Entry {
  std::string name;
  uint64_t begin, end;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::~SafetensorsFile() {
  if (map_) munmap(map_, map_size_);
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) throw Error(path, "file not found", "check the path");
    throw Error(path, std::string("cannot open: ") + std::strerror(err), "check the file's permissions");
  }
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path, "not a regular file", "pass the path of a .safetensors file");
  }
  const size_t file_size = size_t(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    throw Error(path, "truncated: the file has " + std::to_string(file_size) +
                          " bytes, fewer than the 8-byte header length that starts every safetensors file",
                kResaveFix);
  }
  void* map = mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);  // the mapping keeps the file's pages reachable on its own
  if (map == MAP_FAILED) throw Error(path, std::string("cannot mmap: ") + std::strerror(map_errno));

  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->map_ = map;  // owned from here: unmapped by the destructor even if validation throws
  file->map_size_ = file_size;

  uint64_t header_length;
  std::memcpy(&header_length, map, 8);
  if (header_length > kMaxHeaderBytes)
    throw Error(path, "header length " + std::to_string(header_length) + " exceeds the 100 MB limit",
                "this is not a safetensors file, or its first 8 bytes are damaged; re-download or re-save it");
  if (header_length > file_size - 8)
    throw Error(path, "header length " + std::to_string(header_length) + " runs past the end of the file (" +
                          std::to_string(file_size) + " bytes): the file is truncated or not safetensors",
                kResaveFix);
  file->parse_header(size_t(header_length));
  return file;
}

void SafetensorsFile::parse_header(size_t header_length) {
  const char* header = static_cast<const char*>(map_) + 8;
  const char* buffer = header + header_length;
  const uint64_t buffer_size = map_size_ - 8 - header_length;

  if (header_length == 0 || header[0] != '{')
    throw Error(path_, "header does not start with '{' (a safetensors header is a JSON object)", kResaveFix);

  // nlohmann keeps the last of duplicate keys; the format forbids duplicates, so watch the keys go by.
  std::set<std::string> seen_names;
  std::string duplicate;
  auto watch_duplicates = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!seen_names.insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(header, buffer, watch_duplicates);
  } catch (const json::exception& e) {
    throw Error(path_, std::string("header is not valid JSON: ") + e.what(), kResaveFix);
  }
  if (!j.is_object()) throw Error(path_, "header is not a JSON object", kResaveFix);
  if (!duplicate.empty()) throw Error(path_, "tensor " + in_quotes(duplicate) + " is listed twice in the header", kResaveFix);

  std::vector<Entry> entries;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw Error(path_, "__metadata__ is not a JSON object of strings", kResaveFix);
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          throw Error(path_, "__metadata__ value for key " + in_quotes(m.key()) + " is not a string (it is " +
                                 m.value().dump() + ")", kResaveFix);
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string tensor = "tensor " + in_quotes(name);
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      throw Error(path_, tensor + ": entry is not an object with dtype, shape and data_offsets", kResaveFix);
    const json& dtype_json = v["dtype"];
    const json& shape_json = v["shape"];
    const json& offsets_json = v["data_offsets"];
    if (!dtype_json.is_string()) throw Error(path_, tensor + ": dtype is not a string", kResaveFix);
    const std::string dtype_name = dtype_json.get<std::string>();
    const StoredDtype* stored = find_stored_dtype(dtype_name);
    if (!stored)
      throw Error(path_, tensor + " has unknown dtype " + in_quotes(dtype_name),
                  "safetensors dtypes are F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL, F8_*, ...; "
                  "re-save the tensor with one of them (zerolora loads F32, F16, BF16 and F64)");
    if (!shape_json.is_array()) throw Error(path_, tensor + ": shape is not a list of integers", kResaveFix);
    core::Shape shape;
    uint64_t numel = 1;
    bool overflow = false;
    for (const json& d : shape_json) {
      if (!d.is_number_unsigned())
        throw Error(path_, tensor + ": shape " + shape_json.dump() + " holds " + d.dump() +
                               ", not a non-negative integer", kResaveFix);
      uint64_t dim = d.get<uint64_t>();
      overflow |= dim > uint64_t(INT64_MAX) || __builtin_mul_overflow(numel, dim, &numel);
      shape.push_back(int64_t(dim));
    }
    uint64_t bits = 0;
    overflow |= __builtin_mul_overflow(numel, uint64_t(stored->bits), &bits);
    if (overflow) throw Error(path_, tensor + ": shape " + shape_json.dump() + " is too large", kResaveFix);
    if (bits % 8 != 0)
      throw Error(path_, tensor + ": " + std::to_string(numel) + " elements of " + dtype_name +
                             " do not fill a whole number of bytes", kResaveFix);
    if (!offsets_json.is_array() || offsets_json.size() != 2 || !offsets_json[0].is_number_unsigned() ||
        !offsets_json[1].is_number_unsigned())
      throw Error(path_, tensor + ": data_offsets " + offsets_json.dump() +
                             " is not a pair [begin, end] of non-negative integers", kResaveFix);
    const uint64_t begin = offsets_json[0].get<uint64_t>(), end = offsets_json[1].get<uint64_t>();
    if (end < begin)
      throw Error(path_, tensor + ": data_offsets " + offsets_str(begin, end) + " end before they begin", kResaveFix);
    if (end - begin != bits / 8)
      throw Error(path_, tensor + ": data_offsets " + offsets_str(begin, end) + " hold " +
                             std::to_string(end - begin) + " bytes, but dtype " + dtype_name + " and shape " +
                             core::shape_str(shape) + " need " + std::to_string(bits / 8), kResaveFix);
    if (end > buffer_size)
      throw Error(path_, tensor + ": data_offsets " + offsets_str(begin, end) +
                             " end past the data buffer, which holds only " + std::to_string(buffer_size) +
                             " bytes after the header: the file is truncated or its header is wrong", kResaveFix);
    TensorInfo info;
    info.name = name;
    info.dtype = stored->dtype;
    info.has_core_dtype = stored->in_core;
    info.dtype_name = dtype_name;
    info.shape = std::move(shape);
    info.data = buffer + begin;
    info.nbytes = size_t(end - begin);
    info.file = path_;
    tensors_.emplace(name, std::move(info));
    entries.push_back({name, begin, end});
  }

  // Sorted by position, the tensors must tile the buffer: no overlap, no hole, nothing after the last.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t covered = 0;
  const Entry* previous = nullptr;
  for (const Entry& e : entries) {
    if (e.begin < covered)
      throw Error(path_, "tensor " + in_quotes(e.name) + ": data_offsets " + offsets_str(e.begin, e.end) +
                             " overlap those of tensor " + in_quotes(previous->name) + " " +
                             offsets_str(previous->begin, previous->end), kResaveFix);
    if (e.begin > covered)
      throw Error(path_, "tensor " + in_quotes(e.name) + ": data_offsets " + offsets_str(e.begin, e.end) +
                             " leave a gap of " + std::to_string(e.begin - covered) +
                             " unused bytes before them (tensors must tile the data buffer)", kResaveFix);
    covered = e.end;
    previous = &e;
  }
  if (covered != buffer_size)
    throw Error(path_, std::to_string(buffer_size - covered) +
                           " bytes follow the last tensor's data (the tensors must fill the data buffer exactly)",
                kResaveFix);
}

// ---------------------------------------------------------------------------------------------
// TensorStore

TensorStore TensorStore::open_file(const std::string& path) {
  TensorStore store;
  store.dir_ = fs::path(path).parent_path().string();
  store.source_ = path;
  auto file = SafetensorsFile::open(path);
  store.index_ = file->tensors();
  store.files_.push_back(std::move(file));
  return store;
}

namespace {

json read_index_json(const std::string& index_path) {
  std::ifstream in(index_path, std::ios::binary);
  if (!in) throw Error(index_path, "cannot read the file", "check its permissions");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw Error(index_path, std::string("not valid JSON: ") + e.what(),
                "re-download the index or re-save the model with save_pretrained");
  }
}

}  // namespace

TensorStore TensorStore::open_model_dir(const std::string& dir) {
  if (!fs::is_directory(dir))
    throw Error(dir, "model folder not found", "pass the folder that holds config.json and the *.safetensors files");
  const fs::path single = fs::path(dir) / "model.safetensors";
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(single)) {
    TensorStore store = open_file(single.string());
    store.dir_ = dir;
    return store;
  }
  if (!fs::exists(index_path)) {
    const bool has_bin = fs::exists(fs::path(dir) / "pytorch_model.bin") ||
                         fs::exists(fs::path(dir) / "pytorch_model.bin.index.json");
    throw Error("", std::string("no model.safetensors or model.safetensors.index.json in ") + dir +
                        (has_bin ? " (it has pytorch_model.bin, a pickle, which zerolora does not read)"
                                 : " (pytorch_model.bin pickles are not supported either)"),
                "convert once with Python: AutoModelForCausalLM.from_pretrained('" + dir +
                    "').save_pretrained(OUT, safe_serialization=True), then pass OUT");
  }

  const std::string index_str = index_path.string();
  const json index = read_index_json(index_str);
  const char* index_fix = "re-download the model or re-save it with save_pretrained";
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    throw Error(index_str, "has no \"weight_map\" object mapping tensor names to shard files", index_fix);

  // Group tensor names by shard, so each shard is opened once and a missing one is named once.
  std::map<std::string, std::vector<std::string>> names_by_shard;
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
    if (!it.value().is_string())
      throw Error(index_str, "weight_map entry for tensor " + in_quotes(it.key()) + " is not a file name", index_fix);
    const std::string shard = it.value().get<std::string>();
    if (shard.empty() || fs::path(shard).is_absolute())
      throw Error(index_str, "weight_map entry for tensor " + in_quotes(it.key()) + " is " + in_quotes(shard) +
                                 ", not a file name inside the model folder", index_fix);
    names_by_shard[shard].push_back(it.key());
  }
  if (names_by_shard.empty()) throw Error(index_str, "weight_map is empty", index_fix);

  TensorStore store;
  store.dir_ = dir;
  store.source_ = index_str;
  for (const auto& [shard, names] : names_by_shard) {
    const fs::path shard_path = fs::path(dir) / shard;
    if (!fs::exists(shard_path))
      throw Error(index_str, "weight_map names shard " + in_quotes(shard) + " (for tensor " + in_quotes(names.front()) +
                                 (names.size() > 1 ? " and " + std::to_string(names.size() - 1) + " more" : "") +
                                 "), which is missing from " + dir,
                  "download the missing shard, or re-save the model with save_pretrained");
    auto file = SafetensorsFile::open(shard_path.string());
    for (const std::string& name : names) {
      auto found = file->tensors().find(name);
      if (found == file->tensors().end())
        throw Error(index_str, "weight_map puts tensor " + in_quotes(name) + " in shard " + in_quotes(shard) +
                                   ", which does not contain it", index_fix);
      store.index_.emplace(name, found->second);
    }
    store.files_.push_back(std::move(file));
  }
  return store;
}

const TensorInfo& TensorStore::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end())
    throw Error(source_, "tensor " + in_quotes(name) + " is missing (" + std::to_string(index_.size()) +
                             " tensors present)",
                "the weights do not match config.json (architecture, layer count, tie_word_embeddings); "
                "use the config.json that came with these weights");
  return it->second;
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, info] : index_) out.push_back(name);
  return out;
}

// The copy is made: drop the mapping's pages of this tensor from the resident set (they come back from
// the page cache if read again), so loading a model never holds the file and its converted copy in
// memory at once. Only whole pages inside the tensor are dropped; neighbours are untouched.
static void release_mapped_pages(const TensorInfo& t) {
  const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(t.data) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(t.data) + t.nbytes) / page * page;
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

core::Tensor TensorStore::load(const std::string& name, core::DType dtype, const core::Shape& expected_shape) const {
  const TensorInfo& t = info(name);
  if (!expected_shape.empty() && expected_shape != t.shape)
    throw Error(t.file, "tensor " + in_quotes(name) + " has shape " + core::shape_str(t.shape) + ", config.json implies " +
                            core::shape_str(expected_shape),
                "use the config.json that came with these weights");
  const bool same_dtype = t.has_core_dtype && t.dtype == dtype;
  if (!same_dtype && !(t.has_core_dtype && is_float_dtype(t.dtype) && is_float_dtype(dtype)))
    throw Error(t.file, "tensor " + in_quotes(name) + " has dtype " + t.dtype_name + ", which zerolora cannot convert to " +
                            core::dtype_name(dtype) + " (it reads F32, F16, BF16 and F64 weights)",
                "quantized or integer checkpoints are not supported: use the unquantized model");
  core::Tensor out = core::Tensor::empty(dtype, t.shape);
  if (out.numel() == 0) return out;
  if (same_dtype) {
    std::memcpy(out.raw(), t.data, t.nbytes);
    release_mapped_pages(t);
    return out;
  }
  // Offsets are only byte-aligned (another writer may put an F64 after an odd-length BF16 tensor), and
  // convert reads whole elements: give it an aligned copy when the mapping's address is not.
  const void* source = t.data;
  std::shared_ptr<std::byte> aligned_copy;
  if (reinterpret_cast<uintptr_t>(t.data) % core::dtype_size(t.dtype) != 0) {
    aligned_copy = core::alloc_aligned(t.nbytes);
    std::memcpy(aligned_copy.get(), t.data, t.nbytes);
    source = aligned_copy.get();
  }
  core::convert(source, t.dtype, out.raw(), dtype, size_t(out.numel()));
  release_mapped_pages(t);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Writer

namespace {

struct Piece {
  const void* data;
  size_t size;
};

[[noreturn]] void throw_write_error(const std::string& path, const std::string& action, int err) {
  throw Error(path, action + " failed: " + std::strerror(err), "check free disk space and permissions");
}

void write_all(int fd, const Piece& piece, const std::string& path) {
  const char* p = static_cast<const char*>(piece.data);
  size_t left = piece.size;
  while (left > 0) {
    ssize_t n = ::write(fd, p, std::min<size_t>(left, size_t(1) << 30));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_write_error(path, "write", errno);
    }
    p += n;
    left -= size_t(n);
  }
}

// Makes the rename itself durable. Best effort: some file systems refuse fsync on a folder, and the
// data is already safe under its final name by then.
void fsync_directory(const fs::path& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)fsync(fd);
  ::close(fd);
}

// Writes pieces to path + ".tmp", fsyncs, renames onto path: readers see the old file or the whole new one.
void write_atomically(const std::string& path, const std::vector<Piece>& pieces) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw_write_error(tmp, "open for writing", errno);
  try {
    for (const Piece& piece : pieces) write_all(fd, piece, tmp);
    if (fsync(fd) != 0) throw_write_error(tmp, "fsync", errno);
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::close(fd) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    throw_write_error(tmp, "close", err);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    throw_write_error(path, "rename from " + tmp, err);
  }
  fsync_directory(fs::path(path).parent_path());
}

// The JSON header, __metadata__ first and tensors in the caller's order, space-padded to a multiple
// of 8 so that the data buffer starts 8-byte aligned (as the reference writer does).
std::string safetensors_header(const std::string& path,
                               const std::vector<std::pair<std::string, core::Tensor>>& tensors,
                               const std::map<std::string, std::string>& extra_metadata) {
  nlohmann::ordered_json header;
  nlohmann::ordered_json metadata;
  metadata["format"] = "pt";
  for (const auto& [key, value] : extra_metadata) metadata[key] = value;
  header["__metadata__"] = metadata;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name.empty() || name == "__metadata__")
      throw Error(path, "cannot write a tensor named " + in_quotes(name), "rename the tensor");
    if (!names.insert(name).second)
      throw Error(path, "tensor " + in_quotes(name) + " is given twice", "write each tensor once");
    if (!tensor.defined()) throw Error(path, "tensor " + in_quotes(name) + " has no data", "fill the tensor first");
    const uint64_t end = offset + tensor.nbytes();
    header[name] = {{"dtype", core::dtype_name(tensor.dtype())},
                    {"shape", tensor.shape()},
                    {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    throw Error(path, std::string("cannot encode the header: ") + e.what(), "use UTF-8 tensor names and metadata");
  }
  text.resize((text.size() + 7) / 8 * 8, ' ');
  return text;
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, core::Tensor>>& tensors,
                       const std::map<std::string, std::string>& extra_metadata) {
  const std::string header = safetensors_header(path, tensors, extra_metadata);
  const uint64_t header_length = header.size();
  std::vector<Piece> pieces = {{&header_length, 8}, {header.data(), header.size()}};
  for (const auto& [name, tensor] : tensors)
    if (tensor.nbytes() > 0) pieces.push_back({tensor.raw(), tensor.nbytes()});
  write_atomically(path, pieces);
}

void write_safetensors_sharded(const std::string& dir,
                               const std::vector<std::pair<std::string, core::Tensor>>& tensors,
                               size_t max_shard_bytes, const std::map<std::string, std::string>& extra_metadata) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir, "cannot create the folder: " + ec.message(), "check the path and permissions");
  const fs::path single = fs::path(dir) / "model.safetensors";
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";

  std::vector<std::vector<std::pair<std::string, core::Tensor>>> shards(1);
  size_t shard_bytes = 0, total_bytes = 0;
  std::set<std::string> names;  // each shard checks its own names; a name repeated across shards is caught here
  for (const auto& entry : tensors) {
    if (!names.insert(entry.first).second)
      throw Error(dir, "tensor " + in_quotes(entry.first) + " is given twice", "write each tensor once");
    const size_t nbytes = entry.second.nbytes();
    if (!shards.back().empty() && shard_bytes + nbytes > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(entry);
    shard_bytes += nbytes;
    total_bytes += nbytes;
  }

  // Like save_pretrained, drop the other layout's entry file: a stale one would shadow what we write.
  if (shards.size() == 1) {
    write_safetensors(single.string(), tensors, extra_metadata);
    fs::remove(index_path, ec);
    return;
  }
  json weight_map = json::object();
  const size_t count = shards.size();
  for (size_t i = 0; i < count; ++i) {
    char shard_name[64];
    std::snprintf(shard_name, sizeof shard_name, "model-%05zu-of-%05zu.safetensors", i + 1, count);
    write_safetensors((fs::path(dir) / shard_name).string(), shards[i], extra_metadata);
    for (const auto& entry : shards[i]) weight_map[entry.first] = shard_name;
  }
  json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
  const std::string text = index.dump(2) + "\n";
  write_atomically(index_path.string(), {{text.data(), text.size()}});
  fs::remove(single, ec);
}

}  // namespace zerolora::io
