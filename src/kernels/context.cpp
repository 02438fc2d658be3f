// Execution contexts and device memory: the host implementations, and the hand-off to the CUDA backend
// (kernels/cuda, or kernels/no_cuda where the build has none).
#include "kernels/context.h"

#include <cstring>

#include "core/error.h"
#include "kernels/cuda_backend.h"
#include "kernels/nf4.h"

namespace zerolora::kernels {

const Context& host() {
  static const Context c{};
  return c;
}

bool cuda_built() { return cuda::built(); }
int cuda_device_count() { return cuda::built() ? cuda::device_count() : 0; }
std::string cuda_devices_summary() { return cuda::devices_summary(); }
std::string cuda_attention_library() { return cuda::attention_library(); }
int64_t cuda_cudnn_attention_runs() { return cuda::cudnn_attention_runs(); }

CudaContext::CudaContext(int index) : index_(index) {
  ctx_.device = Device::Cuda;
  ctx_.cuda = cuda::create_state(index);
}
CudaContext::~CudaContext() { cuda::destroy_state(ctx_.cuda); }
std::string CudaContext::name() const { return cuda::device_name(*ctx_.cuda); }
int64_t CudaContext::peak_allocated() const { return cuda::peak_allocated_bytes(*ctx_.cuda); }
int64_t CudaContext::allocated() const { return cuda::allocated_bytes(*ctx_.cuda); }

std::shared_ptr<void> device_alloc(size_t bytes, const Context& ctx) {
  if (ctx.on_cuda()) return cuda::alloc(bytes, *ctx.cuda);
  return core::alloc_aligned(bytes);
}

void copy_to_device(void* dst, const void* src, size_t bytes, const Context& ctx) {
  if (ctx.on_cuda()) return cuda::copy_to_device(dst, src, bytes, *ctx.cuda);
  if (bytes) std::memmove(dst, src, bytes);
}
void copy_to_host(void* dst, const void* src, size_t bytes, const Context& ctx) {
  if (ctx.on_cuda()) return cuda::copy_to_host(dst, src, bytes, *ctx.cuda);
  if (bytes) std::memmove(dst, src, bytes);
}
void copy_on_device(void* dst, const void* src, size_t bytes, const Context& ctx) {
  if (ctx.on_cuda()) return cuda::copy_on_device(dst, src, bytes, *ctx.cuda);
  if (bytes) std::memmove(dst, src, bytes);
}
void synchronize(const Context& ctx) {
  if (ctx.on_cuda()) cuda::synchronize(*ctx.cuda);
}

std::shared_ptr<void> pinned_alloc(size_t bytes, const Context& ctx) {
  if (ctx.on_cuda()) return cuda::pinned_alloc(bytes, *ctx.cuda);
  return core::alloc_aligned(bytes);
}

CopyQueue::CopyQueue(const Context& ctx, int slots) : ctx_(ctx) {
  if (ctx.on_cuda()) impl_ = cuda::copy_queue_create(slots, *ctx.cuda);
}
CopyQueue::~CopyQueue() = default;  // the CUDA state waits for its copies before it goes
void CopyQueue::compute_done_with(int slot) {
  if (impl_) cuda::copy_queue_compute_done_with(impl_.get(), slot, *ctx_.cuda);
}
void CopyQueue::copy(int slot, void* device_dst, const void* pinned_src, size_t bytes) {
  if (impl_) return cuda::copy_queue_copy(impl_.get(), slot, device_dst, pinned_src, bytes, *ctx_.cuda);
  if (bytes) std::memmove(device_dst, pinned_src, bytes);
}
void CopyQueue::compute_waits_for(int slot) {
  if (impl_) cuda::copy_queue_compute_waits_for(impl_.get(), slot, *ctx_.cuda);
}
void CopyQueue::host_waits_for(int slot) {
  if (impl_) cuda::copy_queue_host_waits_for(impl_.get(), slot, *ctx_.cuda);
}
void CopyQueue::synchronize() {
  if (impl_) cuda::copy_queue_synchronize(impl_.get(), *ctx_.cuda);
}

core::Tensor to_device(const core::Tensor& t, const Context& ctx) {
  if (!ctx.on_cuda() || t.numel() == 0) return t;
  core::check(t.device() == Device::Cpu, "to_device", "the tensor is already in device memory");
  auto mem = device_alloc(t.nbytes(), ctx);
  copy_to_device(mem.get(), t.raw(), t.nbytes(), ctx);
  void* p = mem.get();
  return core::Tensor::borrow(t.dtype(), t.shape(), p, std::move(mem), Device::Cuda);
}

core::Tensor to_host(const core::Tensor& t, const Context& ctx) {
  if (t.device() == Device::Cpu) return t;
  core::Tensor h = core::Tensor::empty(t.dtype(), t.shape());
  copy_to_host(h.raw(), t.raw(), t.nbytes(), ctx);
  return h;
}

namespace {
template <typename T>
core::Tensor upload_vector(const std::vector<T>& v, const Context& ctx) {
  if (v.empty()) return {};
  core::Tensor h = core::Tensor::borrow(core::dtype_of<T>(), {int64_t(v.size())}, const_cast<T*>(v.data()), nullptr);
  return to_device(h, ctx);
}
}  // namespace

FrozenWeight to_device(const FrozenWeight& w, const Context& ctx) {
  if (!ctx.on_cuda()) return w;
  core::check(w.device() == Device::Cpu, "to_device", "the weight is already in device memory");
  FrozenWeight d;
  d.N = w.N, d.K = w.K;
  d.fp16_inputs = w.fp16_inputs;
  if (w.nf4) {
    const Nf4Weight& q = *w.nf4;
    auto n = std::make_shared<DeviceNf4>();
    n->N = q.N, n->K = q.K, n->double_quant = q.double_quant, n->compute_dtype = q.compute_dtype;
    n->absmax_offset = q.absmax_offset;
    n->packed = upload_vector(q.packed, ctx);
    n->absmax = upload_vector(q.absmax, ctx);
    n->absmax_q = upload_vector(q.absmax_q, ctx);
    n->absmax2 = upload_vector(q.absmax2, ctx);
    const auto& code = nf4_code();
    n->code = upload_vector(std::vector<float>(code.begin(), code.end()), ctx);
    if (q.double_quant) {
      const auto& map = nf4_dynamic_map();
      n->dynamic_map = upload_vector(std::vector<float>(map.begin(), map.end()), ctx);
    }
    n->bias = upload_vector(q.bias, ctx);
    d.nf4_device = std::move(n);
    return d;
  }
  core::check(w.weight.dtype() == core::DType::F32 || w.weight.dtype() == core::DType::BF16, "to_device",
              std::string("a ") + core::dtype_name(w.weight.dtype()) + " weight has no GPU kernels",
              "use --bf16 True or fp32 weights");
  d.weight = to_device(w.weight, ctx);
  if (w.has_bias()) d.bias = to_device(w.bias, ctx);
  return d;
}

}  // namespace zerolora::kernels
