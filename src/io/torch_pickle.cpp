#include "io/torch_pickle.h"

#include <cstring>
#include <filesystem>
#include <map>

#include "core/error.h"
#include "io/zip_store.h"

namespace zerolora::io {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------- values

int64_t PtTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

bool PtTensor::contiguous() const {
  int64_t expect = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    if (shape[i] != 1 && stride[i] != expect) return false;
    expect *= shape[i];
  }
  return true;
}

std::vector<float> PtTensor::to_f32(const std::string& where) const {
  core::check(contiguous(), where, "is a non-contiguous tensor", "save it with .contiguous()");
  const int64_t n = numel();
  const size_t es = core::dtype_size(dtype);
  core::check(storage && (storage_offset + n) * int64_t(es) <= int64_t(storage->size()), where,
              "points past the end of its storage", "the file is damaged; save it again");
  const char* p = storage->data() + size_t(storage_offset) * es;
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    switch (dtype) {
      case core::DType::F32:
        std::memcpy(&out[size_t(i)], p + 4 * i, 4);
        break;
      case core::DType::F64: {
        double d;
        std::memcpy(&d, p + 8 * i, 8);
        out[size_t(i)] = float(d);
        break;
      }
      case core::DType::BF16:
      case core::DType::F16: {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[size_t(i)] = dtype == core::DType::BF16 ? core::bf16_to_f32(h) : core::f16_to_f32(h);
        break;
      }
      default:
        throw core::Error(where,
                          std::string("is a ") + core::dtype_name(dtype) + " tensor where a float tensor is expected",
                          "save it as a float32 tensor");
    }
  }
  return out;
}

PtTensor PtTensor::from_f32(const std::vector<float>& values, std::vector<int64_t> shape) {
  PtTensor t;
  t.dtype = core::DType::F32;
  t.shape = std::move(shape);
  t.stride.assign(t.shape.size(), 1);
  for (size_t i = t.shape.size(); i-- > 1;) t.stride[i - 1] = t.stride[i] * t.shape[i];
  t.storage =
      std::make_shared<std::string>(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  return t;
}

PtValue PtValue::boolean(bool b) {
  PtValue v;
  v.kind_ = Kind::Bool, v.b_ = b;
  return v;
}
PtValue PtValue::integer(int64_t i) {
  PtValue v;
  v.kind_ = Kind::Int, v.i_ = i;
  return v;
}
PtValue PtValue::real(double d) {
  PtValue v;
  v.kind_ = Kind::Float, v.d_ = d;
  return v;
}
PtValue PtValue::string(std::string s) {
  PtValue v;
  v.kind_ = Kind::String, v.s_ = std::move(s);
  return v;
}
PtValue PtValue::list(std::vector<PtValue> items) {
  PtValue v;
  v.kind_ = Kind::List, v.items_ = std::move(items);
  return v;
}
PtValue PtValue::tuple(std::vector<PtValue> items) {
  PtValue v;
  v.kind_ = Kind::Tuple, v.items_ = std::move(items);
  return v;
}
PtValue PtValue::dict() {
  PtValue v;
  v.kind_ = Kind::Dict;
  return v;
}
PtValue PtValue::tensor(PtTensor t) {
  PtValue v;
  v.kind_ = Kind::Tensor, v.tensor_ = std::make_shared<PtTensor>(std::move(t));
  return v;
}

std::string PtValue::describe() const {
  switch (kind_) {
    case Kind::None:
      return "None";
    case Kind::Bool:
      return "a bool";
    case Kind::Int:
      return "an int";
    case Kind::Float:
      return "a float";
    case Kind::String:
      return "a string";
    case Kind::List:
      return "a list";
    case Kind::Tuple:
      return "a tuple";
    case Kind::Dict:
      return "a dict";
    case Kind::Tensor:
      return "a tensor";
  }
  return "?";
}

namespace {
[[noreturn]] void wrong_kind(const PtValue& v, const std::string& where, const char* want) {
  throw core::Error(where, "is " + v.describe() + " where " + want + " is expected",
                    "the file was not written by torch.optim / torch.optim.lr_scheduler state_dict()");
}
}  // namespace

bool PtValue::as_bool(const std::string& where) const {
  if (kind_ != Kind::Bool) wrong_kind(*this, where, "a bool");
  return b_;
}
int64_t PtValue::as_int(const std::string& where) const {
  if (kind_ != Kind::Int) wrong_kind(*this, where, "an int");
  return i_;
}
double PtValue::as_number(const std::string& where) const {
  if (kind_ == Kind::Int) return double(i_);
  if (kind_ != Kind::Float) wrong_kind(*this, where, "a number");
  return d_;
}
const std::string& PtValue::as_string(const std::string& where) const {
  if (kind_ != Kind::String) wrong_kind(*this, where, "a string");
  return s_;
}
const std::vector<PtValue>& PtValue::items(const std::string& where) const {
  if (kind_ != Kind::List && kind_ != Kind::Tuple) wrong_kind(*this, where, "a list");
  return items_;
}
const PtTensor& PtValue::as_tensor(const std::string& where) const {
  if (kind_ != Kind::Tensor) wrong_kind(*this, where, "a tensor");
  return *tensor_;
}
const std::vector<std::pair<PtValue, PtValue>>& PtValue::entries(const std::string& where) const {
  if (kind_ != Kind::Dict) wrong_kind(*this, where, "a dict");
  return entries_;
}
const PtValue* PtValue::find(const std::string& key) const {
  if (kind_ != Kind::Dict) return nullptr;
  for (const auto& [k, v] : entries_)
    if (k.kind_ == Kind::String && k.s_ == key) return &v;
  return nullptr;
}
const PtValue* PtValue::find(int64_t key) const {
  if (kind_ != Kind::Dict) return nullptr;
  for (const auto& [k, v] : entries_)
    if (k.kind_ == Kind::Int && k.i_ == key) return &v;
  return nullptr;
}
const PtValue& PtValue::at(const std::string& key, const std::string& where) const {
  if (kind_ != Kind::Dict) wrong_kind(*this, where, "a dict");
  const PtValue* v = find(key);
  core::check(v != nullptr, where, "has no '" + key + "'",
              "the file was not written by torch.optim / torch.optim.lr_scheduler state_dict()");
  return *v;
}
void PtValue::set(PtValue key, PtValue value) {
  core::check(kind_ == Kind::Dict, "PtValue::set", "internal: not a dict");
  for (auto& [k, v] : entries_)
    if (k.kind_ == key.kind_ && k.i_ == key.i_ && k.s_ == key.s_ && (k.kind_ == Kind::Int || k.kind_ == Kind::String)) {
      v = std::move(value);
      return;
    }
  entries_.emplace_back(std::move(key), std::move(value));
}
void PtValue::push_back(PtValue v) {
  core::check(kind_ == Kind::List || kind_ == Kind::Tuple, "PtValue::push_back", "internal: not a list");
  items_.push_back(std::move(v));
}

// ---------------------------------------------------------------------------------------------- reading

namespace {

// torch.<Type>Storage -> element dtype (what the storage record's bytes hold)
bool storage_dtype(const std::string& global, core::DType* dt) {
  static const std::map<std::string, core::DType> types = {
      {"torch.FloatStorage", core::DType::F32},     {"torch.DoubleStorage", core::DType::F64},
      {"torch.BFloat16Storage", core::DType::BF16}, {"torch.HalfStorage", core::DType::F16},
      {"torch.LongStorage", core::DType::I64},      {"torch.IntStorage", core::DType::I32},
      {"torch.ByteStorage", core::DType::U8}};
  auto it = types.find(global);
  if (it == types.end()) return false;
  *dt = it->second;
  return true;
}

const char* opcode_name(uint8_t op) {
  switch (op) {
    case 'b':
      return "BUILD";
    case 0x81:
      return "NEWOBJ";
    case 0x92:
      return "NEWOBJ_EX";
    case 'i':
      return "INST";
    case 'o':
      return "OBJ";
    case 'I':
      return "INT";
    case 'L':
      return "LONG";
    case 'F':
      return "FLOAT";
    case 'S':
      return "STRING";
    case 'V':
      return "UNICODE";
    case 'P':
      return "PERSID";
    case 'p':
      return "PUT";
    case 'g':
      return "GET";
    case 0x8b:
      return "LONG4";
    case 0x95:
      return "FRAME";
    case 0x8f:
      return "EMPTY_SET";
    case 0x90:
      return "ADDITEMS";
    case 0x91:
      return "FROZENSET";
    case 0x82:
    case 0x83:
    case 0x84:
      return "EXT";
    case 0x96:
      return "BYTEARRAY8";
    case 0x97:
      return "NEXT_BUFFER";
    case 'B':
    case 'C':
    case 0x8e:
      return "BINBYTES";
    default:
      return "unknown";
  }
}

// A global used as a value (e.g. the storage type inside a persistent id) travels as a tagged string.
const std::string kGlobalTag = "\x01global:";

struct Slot {
  std::shared_ptr<PtValue> value;  // null for a mark
  bool mark = false;
};

class Unpickler {
 public:
  Unpickler(const std::string& data, const std::vector<std::pair<std::string, std::string>>& storages,
            const std::string& where)
      : p_(data), storages_(storages), where_(where) {}

  PtValue run() {
    for (;;) {
      const uint8_t op = byte();
      switch (op) {
        case 0x80:
          byte();
          break;     // PROTO
        case '.': {  // STOP
          PtValue v = *pop_value("STOP");
          check_no_globals(v);
          return v;
        }
        case '(':
          stack_.push_back({nullptr, true});
          break;
        case '}':
          push(PtValue::dict());
          break;
        case ']':
          push(PtValue::list());
          break;
        case ')':
          push(PtValue::tuple());
          break;
        case 'N':
          push(PtValue());
          break;
        case 0x88:
          push(PtValue::boolean(true));
          break;
        case 0x89:
          push(PtValue::boolean(false));
          break;
        case 'J':
          push(PtValue::integer(int32_t(le<uint32_t>())));
          break;
        case 'K':
          push(PtValue::integer(byte()));
          break;
        case 'M':
          push(PtValue::integer(le<uint16_t>()));
          break;
        case 0x8a: {  // LONG1: n little-endian two's complement bytes
          const uint8_t n = byte();
          fail_if(n > 8, "an integer wider than 64 bits (LONG1 of " + std::to_string(n) + " bytes)");
          uint64_t u = 0;
          for (uint8_t i = 0; i < n; ++i) u |= uint64_t(byte()) << (8 * i);
          if (n > 0 && n < 8 && (u >> (8 * n - 1)) & 1) u |= ~uint64_t(0) << (8 * n);
          push(PtValue::integer(int64_t(u)));
          break;
        }
        case 'G': {  // BINFLOAT: big-endian double
          uint64_t u = 0;
          for (int i = 0; i < 8; ++i) u = u << 8 | byte();
          double d;
          std::memcpy(&d, &u, 8);
          push(PtValue::real(d));
          break;
        }
        case 'X':
        case 'T':
          push(PtValue::string(bytes(le<uint32_t>())));
          break;  // BINUNICODE, BINSTRING
        case 0x8c:
        case 'U':
          push(PtValue::string(bytes(byte())));
          break;  // SHORT_BINUNICODE, SHORT_BINSTRING
        case 'q':
          memo_[byte()] = top("BINPUT");
          break;
        case 'r':
          memo_[le<uint32_t>()] = top("LONG_BINPUT");
          break;
        case 0x94:
          memo_[memo_.size()] = top("MEMOIZE");
          break;
        case 'h':
          get(byte());
          break;
        case 'j':
          get(le<uint32_t>());
          break;
        case 't':
          push(PtValue::tuple(pop_to_mark("TUPLE")));
          break;
        case 0x85:
        case 0x86:
        case 0x87: {
          std::vector<PtValue> items(size_t(op - 0x84));
          for (size_t i = items.size(); i-- > 0;) items[i] = *pop_value("TUPLE1-3");
          push(PtValue::tuple(std::move(items)));
          break;
        }
        case 'a': {
          PtValue v = *pop_value("APPEND");
          container("APPEND", PtValue::Kind::List)->push_back(std::move(v));
          break;
        }
        case 'e': {
          std::vector<PtValue> items = pop_to_mark("APPENDS");
          PtValue* list = container("APPENDS", PtValue::Kind::List);
          for (auto& v : items) list->push_back(std::move(v));
          break;
        }
        case 's': {
          PtValue v = *pop_value("SETITEM");
          PtValue k = *pop_value("SETITEM");
          container("SETITEM", PtValue::Kind::Dict)->set(std::move(k), std::move(v));
          break;
        }
        case 'u': {
          std::vector<PtValue> kv = pop_to_mark("SETITEMS");
          fail_if(kv.size() % 2, "SETITEMS with an odd number of items");
          PtValue* dict = container("SETITEMS", PtValue::Kind::Dict);
          for (size_t i = 0; i < kv.size(); i += 2) dict->set(std::move(kv[i]), std::move(kv[i + 1]));
          break;
        }
        case 'c': {  // GLOBAL module\nname\n
          std::string module = line(), name = line();
          push(PtValue::string(kGlobalTag + module + "." + name));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          const std::string name = pop_value("STACK_GLOBAL")->as_string(where_);
          const std::string module = pop_value("STACK_GLOBAL")->as_string(where_);
          push(PtValue::string(kGlobalTag + module + "." + name));
          break;
        }
        case 'Q':
          push(persistent_load(*pop_value("BINPERSID")));
          break;
        case 'R': {
          PtValue args = *pop_value("REDUCE");
          PtValue fn = *pop_value("REDUCE");
          push(reduce(global_name(fn, "REDUCE"), args));
          break;
        }
        default: {
          char hex[8];
          std::snprintf(hex, sizeof hex, "0x%02x", op);
          throw core::Error(where_,
                            std::string("holds pickle opcode ") + opcode_name(op) + " (" + hex + ") at byte " +
                                std::to_string(at_ - 1) + ", which a file of plain tensors and containers never has",
                            "only torch.save of tensors, dicts, lists, numbers, strings, None and bools is read");
        }
      }
    }
  }

 private:
  void fail_if(bool cond, const std::string& what) {
    if (cond) throw core::Error(where_, "is not a valid pickle: " + what, "the file is damaged; save it again");
  }
  uint8_t byte() {
    fail_if(at_ >= p_.size(), "it ends before STOP");
    return uint8_t(p_[at_++]);
  }
  template <typename T>
  T le() {
    fail_if(at_ + sizeof(T) > p_.size(), "it ends before STOP");
    T v;
    std::memcpy(&v, p_.data() + at_, sizeof(T));
    at_ += sizeof(T);
    return v;
  }
  std::string bytes(size_t n) {
    fail_if(at_ + n > p_.size(), "it ends before STOP");
    std::string s = p_.substr(at_, n);
    at_ += n;
    return s;
  }
  std::string line() {
    const size_t nl = p_.find('\n', at_);
    fail_if(nl == std::string::npos, "GLOBAL without its newline");
    std::string s = p_.substr(at_, nl - at_);
    at_ = nl + 1;
    return s;
  }
  void push(PtValue v) { stack_.push_back({std::make_shared<PtValue>(std::move(v)), false}); }
  std::shared_ptr<PtValue> top(const char* op) {
    fail_if(stack_.empty() || stack_.back().mark, std::string(op) + " on an empty stack");
    return stack_.back().value;
  }
  std::shared_ptr<PtValue> pop_value(const char* op) {
    auto v = top(op);
    stack_.pop_back();
    return v;
  }
  std::vector<PtValue> pop_to_mark(const char* op) {
    std::vector<PtValue> items;
    while (!stack_.empty() && !stack_.back().mark) {
      items.push_back(*stack_.back().value);
      stack_.pop_back();
    }
    fail_if(stack_.empty(), std::string(op) + " without a MARK");
    stack_.pop_back();
    return {items.rbegin(), items.rend()};
  }
  PtValue* container(const char* op, PtValue::Kind kind) {
    auto c = top(op);
    fail_if(c->kind() != kind, std::string(op) + " on " + c->describe());
    return c.get();
  }
  void get(uint32_t key) {
    auto it = memo_.find(key);
    fail_if(it == memo_.end(), "a memo key that was never stored");
    stack_.push_back({it->second, false});
  }
  static bool is_global(const PtValue& v) {
    return v.kind() == PtValue::Kind::String && v.as_string("").rfind(kGlobalTag, 0) == 0;
  }
  std::string global_name(const PtValue& v, const char* op) {
    fail_if(!is_global(v), std::string(op) + " of " + v.describe() + " instead of a class");
    return v.as_string(where_).substr(kGlobalTag.size());
  }
  void check_no_globals(const PtValue& v) {
    if (is_global(v))
      throw core::Error(where_,
                        "holds the class or function " + v.as_string(where_).substr(kGlobalTag.size()) + " as a value",
                        "only tensors, dicts, lists, numbers, strings, None and bools are read");
    if (v.kind() == PtValue::Kind::List || v.kind() == PtValue::Kind::Tuple)
      for (const auto& x : v.items(where_)) check_no_globals(x);
    if (v.kind() == PtValue::Kind::Dict)
      for (const auto& [k, x] : v.entries(where_)) check_no_globals(k), check_no_globals(x);
  }

  // ('storage', torch.<Type>Storage, key, location, numel) -> the storage as a 1-D tensor
  PtValue persistent_load(const PtValue& pid) {
    const auto& t = pid.items(where_);
    fail_if(t.size() != 5 || t[0].kind() != PtValue::Kind::String || t[0].as_string(where_) != "storage",
            "a persistent id that is not a torch storage");
    const std::string type = global_name(t[1], "BINPERSID");
    PtTensor s;
    core::check(storage_dtype(type, &s.dtype), where_, "holds a storage of type " + type + ", which is not read",
                "save float/bf16/f16/int tensors");
    const std::string key = t[2].as_string(where_);
    auto cached = storage_cache_.find(key);
    if (cached != storage_cache_.end()) {
      s.storage = cached->second;
    } else {
      for (const auto& [name, bytes] : storages_)
        if (name == key) s.storage = std::make_shared<std::string>(bytes);
      core::check(s.storage != nullptr, where_, "has no data record for storage '" + key + "'",
                  "the file is incomplete; save it again");
      storage_cache_[key] = s.storage;
    }
    const int64_t numel = t[4].as_int(where_);
    core::check(int64_t(s.storage->size()) == numel * int64_t(core::dtype_size(s.dtype)), where_,
                "storage '" + key + "' has " + std::to_string(s.storage->size()) + " bytes for " +
                    std::to_string(numel) + " elements of " + core::dtype_name(s.dtype),
                "the file is damaged; save it again");
    s.shape = {numel}, s.stride = {1};
    return PtValue::tensor(std::move(s));
  }

  PtValue reduce(const std::string& fn, const PtValue& args) {
    const auto& a = args.items(where_);
    if (fn == "collections.OrderedDict") {
      fail_if(!a.empty(), "OrderedDict with arguments");
      return PtValue::dict();
    }
    if (fn == "torch._utils._rebuild_tensor_v2") {
      fail_if(a.size() < 6 || a.size() > 7, "_rebuild_tensor_v2 with " + std::to_string(a.size()) + " arguments");
      PtTensor t = a[0].as_tensor(where_);  // the storage
      t.storage_offset = a[1].as_int(where_);
      t.shape.clear(), t.stride.clear();
      for (const auto& d : a[2].items(where_)) t.shape.push_back(d.as_int(where_));
      for (const auto& d : a[3].items(where_)) t.stride.push_back(d.as_int(where_));
      fail_if(t.shape.size() != t.stride.size(), "a tensor whose size and stride differ in length");
      int64_t last = t.storage_offset;  // the furthest element must lie inside the storage
      bool empty = false;
      for (size_t i = 0; i < t.shape.size(); ++i) {
        fail_if(t.shape[i] < 0 || t.stride[i] < 0, "a negative size or stride");
        if (t.shape[i] == 0) empty = true;
        last += (t.shape[i] - 1) * t.stride[i];
      }
      const int64_t elements = int64_t(t.storage->size() / core::dtype_size(t.dtype));
      core::check(empty || (t.storage_offset >= 0 && last < elements), where_,
                  "holds a tensor that reaches past its storage", "the file is damaged; save it again");
      if (!a[5].entries(where_).empty() || (a.size() == 7 && !a[6].entries(where_).empty()))
        throw core::Error(where_, "holds a tensor with backward hooks or Python attributes",
                          "save plain tensors (.detach())");
      return PtValue::tensor(std::move(t));
    }
    throw core::Error(where_, "calls " + fn + ", which a file of plain tensors and containers never does",
                      "only torch.save of tensors, dicts, lists, numbers, strings, None and bools is read");
  }

  const std::string& p_;
  const std::vector<std::pair<std::string, std::string>>& storages_;
  std::string where_;
  size_t at_ = 0;
  std::vector<Slot> stack_;
  std::map<uint32_t, std::shared_ptr<PtValue>> memo_;
  std::map<std::string, std::shared_ptr<std::string>> storage_cache_;
};

}  // namespace

PtValue unpickle_torch(const std::string& pickle, const std::vector<std::pair<std::string, std::string>>& storages,
                       const std::string& where) {
  return Unpickler(pickle, storages, where).run();
}

PtValue load_torch_file(const std::string& path) {
  const std::vector<ZipEntry> entries = read_stored_zip(path);
  core::check(!entries.empty(), path, "is an empty zip archive", "save it again with torch.save");
  // every record lives under one top folder (torch: the file's stem, or "archive")
  const std::string& first = entries.front().name;
  const size_t slash = first.find('/');
  core::check(slash != std::string::npos, path, "is not a PyTorch file (no <name>/data.pkl record)",
              "save it with torch.save (PyTorch >= 1.6)");
  const std::string prefix = first.substr(0, slash + 1);
  const std::string* pickle = nullptr;
  std::vector<std::pair<std::string, std::string>> storages;
  for (const ZipEntry& e : entries) {
    if (e.name.rfind(prefix, 0) != 0) continue;
    const std::string rel = e.name.substr(prefix.size());
    if (rel == "data.pkl") pickle = &e.data;
    if (rel == "byteorder")
      core::check(e.data == "little", path, "stores big-endian tensors (byteorder '" + e.data + "')",
                  "save it on a little-endian machine");
    if (rel.rfind("data/", 0) == 0) storages.emplace_back(rel.substr(5), e.data);
  }
  core::check(pickle != nullptr, path, "has no " + prefix + "data.pkl record",
              "save it with torch.save (PyTorch >= 1.6; the legacy format is not read)");
  return unpickle_torch(*pickle, storages, path);
}

// ---------------------------------------------------------------------------------------------- writing

namespace {

class Pickler {
 public:
  explicit Pickler(std::vector<std::pair<std::string, std::shared_ptr<std::string>>>* storages) : storages_(storages) {}
  std::string run(const PtValue& v) {
    out_ += "\x80\x02";
    save(v);
    out_ += '.';
    return out_;
  }

 private:
  template <typename T>
  void le(T v) {
    char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    out_.append(b, sizeof(T));
  }
  void global(const char* module, const char* name) { out_ += std::string("c") + module + "\n" + name + "\n"; }
  void str(const std::string& s) {
    out_ += 'X';
    le<uint32_t>(uint32_t(s.size()));
    out_ += s;
  }
  void integer(int64_t i) {
    if (i >= 0 && i < 256) {
      out_ += 'K', out_ += char(uint8_t(i));
    } else if (i >= 0 && i < 65536) {
      out_ += 'M', le<uint16_t>(uint16_t(i));
    } else if (i >= INT32_MIN && i <= INT32_MAX) {
      out_ += 'J', le<int32_t>(int32_t(i));
    } else {  // LONG1 with 8 bytes (two's complement, as Python encodes it; minimal length not required)
      out_ += "\x8a\x08", le<int64_t>(i);
    }
  }
  void save(const PtValue& v) {
    const std::string where = "torch pickle";
    switch (v.kind()) {
      case PtValue::Kind::None:
        out_ += 'N';
        break;
      case PtValue::Kind::Bool:
        out_ += v.as_bool(where) ? '\x88' : '\x89';
        break;
      case PtValue::Kind::Int:
        integer(v.as_int(where));
        break;
      case PtValue::Kind::Float: {
        const double d = v.as_number(where);
        uint64_t u;
        std::memcpy(&u, &d, 8);
        out_ += 'G';
        for (int i = 7; i >= 0; --i) out_ += char(uint8_t(u >> (8 * i)));
        break;
      }
      case PtValue::Kind::String:
        str(v.as_string(where));
        break;
      case PtValue::Kind::List:
        out_ += ']';
        if (!v.items(where).empty()) {
          out_ += '(';
          for (const auto& x : v.items(where)) save(x);
          out_ += 'e';
        }
        break;
      case PtValue::Kind::Tuple:
        out_ += '(';
        for (const auto& x : v.items(where)) save(x);
        out_ += 't';
        break;
      case PtValue::Kind::Dict:
        out_ += '}';
        if (!v.entries(where).empty()) {
          out_ += '(';
          for (const auto& [k, x] : v.entries(where)) save(k), save(x);
          out_ += 'u';
        }
        break;
      case PtValue::Kind::Tensor:
        tensor(v.as_tensor(where));
        break;
    }
  }
  void tensor(const PtTensor& t) {
    static const std::map<core::DType, const char*> names = {
        {core::DType::F32, "FloatStorage"}, {core::DType::F64, "DoubleStorage"}, {core::DType::BF16, "BFloat16Storage"},
        {core::DType::F16, "HalfStorage"},  {core::DType::I64, "LongStorage"},   {core::DType::I32, "IntStorage"},
        {core::DType::U8, "ByteStorage"}};
    const std::string key = std::to_string(storages_->size());
    storages_->emplace_back(key, t.storage);  // referenced, not copied: optimizer states can be large
    global("torch._utils", "_rebuild_tensor_v2");
    out_ += '(';
    // persistent id ('storage', torch.<Type>Storage, key, 'cpu', numel)
    out_ += '(';
    str("storage");
    global("torch", names.at(t.dtype));
    str(key);
    str("cpu");
    integer(int64_t(t.storage->size() / core::dtype_size(t.dtype)));
    out_ += 't';
    out_ += 'Q';
    integer(t.storage_offset);
    out_ += '(';
    for (int64_t d : t.shape) integer(d);
    out_ += 't';
    out_ += '(';
    for (int64_t d : t.stride) integer(d);
    out_ += 't';
    out_ += '\x89';  // requires_grad False
    global("collections", "OrderedDict");
    out_ += ")R";  // OrderedDict(): no backward hooks
    out_ += "tR";
  }

  std::vector<std::pair<std::string, std::shared_ptr<std::string>>>* storages_;
  std::string out_;
};

}  // namespace

namespace {

// The records of a torch.save file, in torch's order: data.pkl, byteorder, data/<key>..., version.
template <typename Fn>
void with_torch_records(const PtValue& value, const std::string& stem, Fn&& fn) {
  std::vector<std::pair<std::string, std::shared_ptr<std::string>>> storages;
  const std::string pickle = Pickler(&storages).run(value);
  static const std::string byteorder = "little", version = "3\n";
  std::vector<ZipSource> records;
  records.push_back({stem + "/data.pkl", pickle.data(), pickle.size()});
  records.push_back({stem + "/byteorder", byteorder.data(), byteorder.size()});
  for (const auto& [key, bytes] : storages) records.push_back({stem + "/data/" + key, bytes->data(), bytes->size()});
  records.push_back({stem + "/version", version.data(), version.size()});
  fn(records);
}

}  // namespace

std::string torch_file_bytes(const PtValue& value, const std::string& stem) {
  std::string out;
  with_torch_records(value, stem, [&](const std::vector<ZipSource>& records) {
    write_stored_zip(records, [&](const char* p, size_t n) { out.append(p, n); });
  });
  return out;
}

void save_torch_file(const std::string& path, const PtValue& value) {
  with_torch_records(value, fs::path(path).stem().string(),
                     [&](const std::vector<ZipSource>& records) { write_stored_zip_file(path, records); });
}

}  // namespace zerolora::io
