// PyTorch .pt/.pth files (torch.save's zip format) holding plain data: tensors, dicts, lists, tuples, ints,
// floats, strings, None and bools -- what optimizer.pt and scheduler.pt of an HF Trainer checkpoint hold.
//
// Layout: a stored zip (io/zip_store.h) with records <stem>/data.pkl (pickle, protocol 2),
// <stem>/data/<key> (the raw bytes of each storage, little-endian), <stem>/byteorder ("little") and
// <stem>/version ("3"). A tensor is pickled as torch._utils._rebuild_tensor_v2(storage, offset, size,
// stride, requires_grad, OrderedDict()) whose storage is a persistent id
// ('storage', torch.<Type>Storage, key, location, numel).
//
// Reading runs a small pickle machine that knows only those opcodes and globals (the allow-list of
// torch.load(weights_only=True) narrowed to plain data); anything else (numpy arrays, custom classes, a
// rng_state.pth) is refused with a core::Error naming the file and the opcode or class.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"

namespace zerolora::io {

struct PtTensor {
  core::DType dtype = core::DType::F32;
  std::vector<int64_t> shape;
  std::vector<int64_t> stride;
  int64_t storage_offset = 0;            // in elements
  std::shared_ptr<std::string> storage;  // the whole storage's bytes (may be shared by several tensors)
  int64_t numel() const;
  bool contiguous() const;
  // The elements in row-major order as f32 (F32/F64/BF16/F16 sources); an Error for other dtypes.
  std::vector<float> to_f32(const std::string& where) const;
  static PtTensor from_f32(const std::vector<float>& values, std::vector<int64_t> shape);
};

class PtValue {
 public:
  enum class Kind { None, Bool, Int, Float, String, List, Tuple, Dict, Tensor };
  PtValue() = default;  // None
  static PtValue boolean(bool b);
  static PtValue integer(int64_t i);
  static PtValue real(double d);
  static PtValue string(std::string s);
  static PtValue list(std::vector<PtValue> items = {});
  static PtValue tuple(std::vector<PtValue> items = {});
  static PtValue dict();
  static PtValue tensor(PtTensor t);

  Kind kind() const { return kind_; }
  bool is_none() const { return kind_ == Kind::None; }
  // Typed access; the wrong kind is a core::Error naming `where`.
  bool as_bool(const std::string& where) const;
  int64_t as_int(const std::string& where) const;
  double as_number(const std::string& where) const;  // Int or Float
  const std::string& as_string(const std::string& where) const;
  const std::vector<PtValue>& items(const std::string& where) const;  // List or Tuple
  const PtTensor& as_tensor(const std::string& where) const;
  // Dict: entries in insertion order (keys may be ints or strings)
  const std::vector<std::pair<PtValue, PtValue>>& entries(const std::string& where) const;
  const PtValue* find(const std::string& key) const;  // string key; nullptr when absent or not a dict
  const PtValue* find(int64_t key) const;             // int key
  // Dict lookup that must succeed: an Error naming where + key otherwise.
  const PtValue& at(const std::string& key, const std::string& where) const;
  void set(PtValue key, PtValue value);  // Dict: replace or append
  void push_back(PtValue v);             // List or Tuple
  std::string describe() const;          // short kind name for messages

 private:
  Kind kind_ = Kind::None;
  bool b_ = false;
  int64_t i_ = 0;
  double d_ = 0;
  std::string s_;
  std::vector<PtValue> items_;
  std::vector<std::pair<PtValue, PtValue>> entries_;
  std::shared_ptr<PtTensor> tensor_;
};

// torch.load of a file of plain data (see above). path is named in every error.
PtValue load_torch_file(const std::string& path);
// The bytes torch.save would write for value (record prefix `stem`, e.g. "optimizer" for optimizer.pt).
std::string torch_file_bytes(const PtValue& value, const std::string& stem);
// Writes torch_file_bytes(value, <file stem>) to path with write_file_synced.
void save_torch_file(const std::string& path, const PtValue& value);

// The pickle alone (tests): parse data.pkl bytes with storages looked up in `records` (name -> bytes).
PtValue unpickle_torch(const std::string& pickle, const std::vector<std::pair<std::string, std::string>>& storages,
                       const std::string& where);

}  // namespace zerolora::io
