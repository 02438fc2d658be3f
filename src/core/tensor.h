// Tensor: a dtype, a shape and a contiguous row-major block of memory (owned, or borrowed from a
// mapping that the tensor keeps alive). Views (reshape, rows) share the storage.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace zerolora::core {

using Shape = std::vector<int64_t>;

// Where a tensor's or a buffer's memory lives. Host code may read only Cpu memory; Cuda memory is
// handed to the kernels of the CUDA backend (kernels/context.h makes and copies it).
enum class Device : uint8_t { Cpu, Cuda };
const char* device_name(Device d);  // "cpu", "cuda"

int64_t shape_numel(const Shape& shape);
std::string shape_str(const Shape& shape);  // "[2, 3]"

// 64-byte aligned allocation (AVX-512 / oneDNN friendly), released with free().
std::shared_ptr<std::byte> alloc_aligned(size_t bytes);

class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(DType dtype, Shape shape);
  static Tensor zeros(DType dtype, Shape shape);
  // Borrows memory; keepalive (e.g. a file mapping) is held as long as any view lives.
  static Tensor borrow(DType dtype, Shape shape, void* data, std::shared_ptr<void> keepalive,
                       Device device = Device::Cpu);

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_.at(i < 0 ? shape_.size() + i : i); }
  int ndim() const { return int(shape_.size()); }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  bool defined() const { return data_ != nullptr || numel() == 0; }
  Device device() const { return device_; }

  void* raw() { return data_; }
  const void* raw() const { return data_; }
  template <typename T> T* data() { check_type(dtype_of<T>()); return static_cast<T*>(data_); }
  template <typename T> const T* data() const { check_type(dtype_of<T>()); return static_cast<const T*>(data_); }
  // bf16/f16 payloads as raw bits
  uint16_t* bits16() { check_16(); return static_cast<uint16_t*>(data_); }
  const uint16_t* bits16() const { check_16(); return static_cast<const uint16_t*>(data_); }

  Tensor reshape(Shape shape) const;                 // same storage, same numel
  Tensor rows(int64_t begin, int64_t end) const;     // view of [begin, end) along dim 0
  // converted copy (a copy even for the same dtype); host tensors only
  Tensor to(DType dtype) const;
  Tensor clone() const { return to(dtype_); }
  void fill_zero();  // host tensors only

 private:
  void check_type(DType want) const;
  void check_16() const;
  DType dtype_ = DType::F32;
  Shape shape_ = {0};  // a default (undefined) tensor holds no elements
  void* data_ = nullptr;
  std::shared_ptr<void> storage_;
  Device device_ = Device::Cpu;
  void check_host(const char* fn) const;
};

}  // namespace zerolora::core
