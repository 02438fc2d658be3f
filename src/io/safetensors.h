// safetensors reading (mmap, single file or sharded with model.safetensors.index.json) and writing.
// Byte layout and validity rules: ../shared/reference/deepspeed-peft-spec.md §4.3.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace zerolora::io {

struct TensorInfo {
  std::string name;
  core::DType dtype;           // meaningful only when has_core_dtype
  core::Shape shape;
  const void* data = nullptr;  // points into the mapping
  size_t nbytes = 0;
  std::string file;            // the file it lives in (for error messages)
  // The file's own spelling ("F32", "I8", "F8_E4M3", ...). Valid safetensors dtypes that core::DType
  // has no value for (I8, BOOL, F8_*, ...) are accepted at open, so a file can be listed and
  // inspected, and refused by TensorStore::load with a message naming the tensor and its dtype.
  std::string dtype_name;
  bool has_core_dtype = true;
};

// One mmapped .safetensors file. Every header rule is checked at open; a violation throws
// core::Error naming the file and the tensor/field. Unknown dtypes are refused at open.
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  const std::string& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  void parse_header(size_t header_length);
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a model folder: model.safetensors, or model.safetensors.index.json + its shards.
// A missing weight file, an index naming a missing shard, or a name listed in the index but absent
// from its shard throws core::Error. The mappings stay open as long as this object lives.
class TensorStore {
 public:
  static TensorStore open_model_dir(const std::string& dir);
  static TensorStore open_file(const std::string& path);
  bool has(const std::string& name) const { return index_.count(name) > 0; }
  const TensorInfo& info(const std::string& name) const;  // throws Error naming the missing tensor
  std::vector<std::string> names() const;                 // sorted
  // Copies the tensor converted to dtype (F32/F64/BF16/F16 sources; other dtypes only copied as
  // themselves). expected_shape checked when non-empty: a mismatch throws
  // Error "<file>: tensor <name> has shape [..], config.json implies [..]".
  core::Tensor load(const std::string& name, core::DType dtype, const core::Shape& expected_shape = {}) const;
  const std::string& dir() const { return dir_; }
  // What the tensors were read from: the .safetensors file or the index (for error messages).
  const std::string& source() const { return source_; }

 private:
  std::string dir_;
  std::string source_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, TensorInfo> index_;
};

// Writes tensors (in the given order of names) to path with __metadata__ {"format":"pt"} plus extra
// metadata; the header is padded with spaces to a multiple of 8. Written to path + ".tmp", fsynced
// and renamed, so a crash never leaves a half-written file under the final name.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, core::Tensor>>& tensors,
                       const std::map<std::string, std::string>& extra_metadata = {});

// Writes a model folder's weights the way HF save_pretrained does: model.safetensors when everything
// fits in max_shard_bytes, else model-0000i-of-0000K.safetensors shards (tensors kept in the given
// order, a tensor larger than the limit alone in its shard) plus model.safetensors.index.json
// {"metadata": {"total_size": ...}, "weight_map": {...}}, written last. Every file is atomic.
void write_safetensors_sharded(const std::string& dir,
                               const std::vector<std::pair<std::string, core::Tensor>>& tensors,
                               size_t max_shard_bytes,
                               const std::map<std::string, std::string>& extra_metadata = {});

}  // namespace zerolora::io
