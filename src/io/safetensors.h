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
  core::DType dtype;
  core::Shape shape;
  const void* data = nullptr;  // points into the mapping
  size_t nbytes = 0;
  std::string file;            // the file it lives in (for error messages)
};

// One mmapped .safetensors file. Every header rule is checked at open; a violation throws
// core::Error naming the file and the tensor/field. Unknown dtypes are refused at open.
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  const std::string& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
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
  std::vector<std::string> names() const;
  // Copies the tensor converted to dtype (F32/F64/BF16/F16 sources). expected_shape checked when non-empty:
  // a mismatch throws Error "<file>: tensor <name> has shape [..], config.json implies [..]".
  core::Tensor load(const std::string& name, core::DType dtype, const core::Shape& expected_shape = {}) const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, TensorInfo> index_;
};

// Writes tensors (in the given order of names) to path with __metadata__ {"format":"pt"} plus extra
// metadata; the header is padded with spaces to a multiple of 8. Written to path + ".tmp", fsynced
// and renamed, so a crash never leaves a half-written file under the final name.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, core::Tensor>>& tensors,
                       const std::map<std::string, std::string>& extra_metadata = {});

}  // namespace zerolora::io
