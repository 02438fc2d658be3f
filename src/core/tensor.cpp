#include "core/tensor.h"

#include <cstdlib>
#include <cstring>

namespace zerolora::core {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::shared_ptr<std::byte> alloc_aligned(size_t bytes) {
  size_t rounded = (bytes + 63) / 64 * 64;
  if (rounded == 0) rounded = 64;
  void* p = std::aligned_alloc(64, rounded);
  if (!p) throw Error("memory", "could not allocate " + std::to_string(bytes) + " bytes",
                      "use a smaller model, batch or sequence length");
  return std::shared_ptr<std::byte>(static_cast<std::byte*>(p), [](std::byte* q) { std::free(q); });
}

Tensor Tensor::empty(DType dtype, Shape shape) {
  for (int64_t d : shape)
    check(d >= 0, "tensor", "negative dimension in shape " + shape_str(shape));
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  auto mem = alloc_aligned(t.nbytes());
  t.data_ = mem.get();
  t.storage_ = std::move(mem);
  return t;
}

Tensor Tensor::zeros(DType dtype, Shape shape) {
  Tensor t = empty(dtype, std::move(shape));
  t.fill_zero();
  return t;
}

const char* device_name(Device d) { return d == Device::Cuda ? "cuda" : "cpu"; }

Tensor Tensor::borrow(DType dtype, Shape shape, void* data, std::shared_ptr<void> keepalive, Device device) {
  Tensor t;
  t.device_ = device;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.data_ = data;
  t.storage_ = std::move(keepalive);
  return t;
}

Tensor Tensor::reshape(Shape shape) const {
  check(shape_numel(shape) == numel(), "tensor",
        "cannot reshape " + shape_str(shape_) + " to " + shape_str(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  check(ndim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0], "tensor",
        "rows [" + std::to_string(begin) + ", " + std::to_string(end) + ") out of range for " +
            shape_str(shape_));
  Tensor t = *this;
  int64_t row = numel() / std::max<int64_t>(shape_[0], 1);
  t.shape_[0] = end - begin;
  t.data_ = static_cast<char*>(data_) + size_t(begin * row) * dtype_size(dtype_);
  return t;
}

void Tensor::check_host(const char* fn) const {
  if (device_ != Device::Cpu)
    throw Error("tensor", std::string(fn) + " on a tensor in " + device_name(device_) + " memory",
                "copy it to the host first (kernels::to_host)");
}

Tensor Tensor::to(DType dtype) const {
  check_host("to()");
  Tensor t = empty(dtype, shape_);
  if (numel() > 0) {
    if (dtype == dtype_)
      std::memcpy(t.data_, data_, nbytes());
    else
      convert(data_, dtype_, t.data_, dtype, size_t(numel()));
  }
  return t;
}

void Tensor::fill_zero() {
  check_host("fill_zero()");
  if (nbytes()) std::memset(data_, 0, nbytes());
}

void Tensor::check_type(DType want) const {
  if (want != dtype_)
    throw Error("tensor", std::string("holds ") + dtype_name(dtype_) + ", accessed as " + dtype_name(want));
}

void Tensor::check_16() const {
  if (dtype_ != DType::BF16 && dtype_ != DType::F16)
    throw Error("tensor", std::string("holds ") + dtype_name(dtype_) + ", accessed as 16-bit");
}

}  // namespace zerolora::core
