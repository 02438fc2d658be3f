// Where kernels run: the execution context every kernels.h entry point takes last, and the memory of the
// device it names (MLX's pattern: one op surface, a backend per device, picked by the context).
//
//   host()            the CPU backend (kernels/cpu): OpenMP threads, oneDNN; pointers are host memory.
//   CudaContext(i)    the CUDA backend (kernels/cuda) on GPU i: one stream, a cuBLASLt handle and a
//                     workspace owned by the context (no global scratch); pointers are device memory and
//                     every op is enqueued on the stream (asynchronous to the host: copy_to_host and
//                     synchronize wait for it).
//
// A build without the CUDA toolkit compiles kernels/no_cuda instead of kernels/cuda: cuda_device_count()
// is 0 and making a CudaContext throws a core::Error that says how to get a CUDA build.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/tensor.h"

namespace zerolora::kernels {

using core::Device;

struct CudaState;  // defined by the CUDA backend: stream, cuBLASLt handle, workspaces

struct Context {
  Device device = Device::Cpu;
  CudaState* cuda = nullptr;  // set for Device::Cuda, owned by a CudaContext
  bool on_cuda() const { return device == Device::Cuda; }
};

// The CPU context (the default of every kernel entry point).
const Context& host();

// True when this binary was built with the CUDA backend.
bool cuda_built();
// GPUs this process can use (0 when not built with CUDA, no driver, or none visible).
int cuda_device_count();
// One line per visible GPU ("0: NVIDIA H200, 139.8 GiB, sm_90"), or why there is none.
std::string cuda_devices_summary();
// The GPU's attention kernels for --bf16 ("cuDNN fused attention (cuDNN 9.19.0, frontend 1.16.0) ..." or why not),
// and how many cuDNN attention executions this process has run (tests: proof the cuDNN path ran).
std::string cuda_attention_library();
int64_t cuda_cudnn_attention_runs();

// A CUDA execution context on GPU `index`; throws core::Error when the build has no CUDA backend or the
// GPU cannot be used.
class CudaContext {
 public:
  explicit CudaContext(int index);
  ~CudaContext();
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;
  const Context& ctx() const { return ctx_; }
  int index() const { return index_; }
  std::string name() const;          // the GPU's name
  int64_t peak_allocated() const;    // bytes, the most held at once through device_alloc on this context
  int64_t allocated() const;         // bytes held now

 private:
  Context ctx_;
  int index_ = 0;
};

// ------------------------------------------------------------------------------------------------
// Memory of a context's device. On the host context these are plain (64-byte aligned) host memory and
// memcpy, so code written against them runs on either backend.

// `bytes` of memory on ctx's device, freed when the last owner lets go. Throws core::Error (naming the
// size and the device's free memory) when it cannot be had.
std::shared_ptr<void> device_alloc(size_t bytes, const Context& ctx);

// Copies ordered with ctx's work. copy_to_device returns once `src` may be reused; copy_to_host returns
// once `dst` holds the data (it waits for the work enqueued before it).
void copy_to_device(void* dst, const void* src, size_t bytes, const Context& ctx);
void copy_to_host(void* dst, const void* src, size_t bytes, const Context& ctx);
void copy_on_device(void* dst, const void* src, size_t bytes, const Context& ctx);
void synchronize(const Context& ctx);

// Page-locked host memory on a CUDA context (the device reads it while the host goes on: CopyQueue's sources);
// plain host memory on the host context.
std::shared_ptr<void> pinned_alloc(size_t bytes, const Context& ctx);

// A second queue for copies from pinned host memory into device buffers that overlap ctx's work (frozen
// weights streamed ahead of their use), with a pair of fences per buffer ("slot"):
//   compute_done_with(s)   ctx's work enqueued so far is the last to read slot s's buffer;
//   copy(s, dst, src, n)   the copy starts once that work is done (then src must stay unchanged until
//                          host_waits_for(s) returns);
//   compute_waits_for(s)   ctx's later work starts once the copies into s enqueued so far are done;
//   host_waits_for(s)      returns once those copies are done (src may be written again).
// On the host context copy is memcpy and the fences do nothing.
class CopyQueue {
 public:
  CopyQueue(const Context& ctx, int slots);
  ~CopyQueue();
  CopyQueue(const CopyQueue&) = delete;
  CopyQueue& operator=(const CopyQueue&) = delete;
  void compute_done_with(int slot);
  void copy(int slot, void* device_dst, const void* pinned_src, size_t bytes);
  void compute_waits_for(int slot);
  void host_waits_for(int slot);
  void synchronize();  // every copy enqueued so far is done

 private:
  const Context& ctx_;
  std::shared_ptr<void> impl_;  // the CUDA stream and events (kernels/cuda/context.cu)
};

// A copy of a host tensor in ctx's memory (the same tensor, shared, on the host context).
core::Tensor to_device(const core::Tensor& t, const Context& ctx);
// A host copy of a tensor from wherever it lives.
core::Tensor to_host(const core::Tensor& t, const Context& ctx);

// A typed array in ctx's memory (the model's arena, a weight's device copy). Empty by default.
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(int64_t n, const Context& ctx) : n_(n), mem_(device_alloc(size_t(n) * sizeof(T), ctx)) {}
  T* data() { return static_cast<T*>(mem_.get()); }
  const T* data() const { return static_cast<const T*>(mem_.get()); }
  int64_t size() const { return n_; }
  int64_t bytes() const { return n_ * int64_t(sizeof(T)); }

 private:
  int64_t n_ = 0;
  std::shared_ptr<void> mem_;
};

}  // namespace zerolora::kernels
