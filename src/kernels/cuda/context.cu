// CUDA devices, contexts and memory.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda_backend.h"

namespace zerolora::kernels::cuda {

void fail(const char* what, const char* detail, const char* file, int line) {
  const char* base = std::strrchr(file, '/');
  throw core::Error("cuda", std::string(what) + " failed: " + detail + " (" + (base ? base + 1 : file) + ":" +
                                std::to_string(line) + ")",
                    "check the GPU (nvidia-smi), its free memory, and the driver; or run with --device cpu");
}

bool built() { return true; }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear: no driver or no device is an answer, not an error
    return 0;
  }
  return n;
}

std::string devices_summary() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return std::string("no usable GPU (") + cudaGetErrorString(e) + ")";
  }
  std::string out;
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s%d: %s, %.1f GiB, sm_%d%d", out.empty() ? "" : "; ", i, p.name,
                  double(p.totalGlobalMem) / double(1ull << 30), p.major, p.minor);
    out += buf;
  }
  return out.empty() ? "no GPU visible" : out;
}

CudaState* create_state(int index) {
  const int n = device_count();
  if (index < 0 || index >= n)
    throw core::Error("--device cuda", "GPU " + std::to_string(index) + " is not visible (" + devices_summary() + ")",
                      "check CUDA_VISIBLE_DEVICES and nvidia-smi, or run with --device cpu");
  auto s = std::make_unique<CudaState>();
  s->device = index;
  ZL_CUDA_CHECK(cudaSetDevice(index));
  cudaDeviceProp p{};
  ZL_CUDA_CHECK(cudaGetDeviceProperties(&p, index));
  s->name = p.name;
  s->sm_count = p.multiProcessorCount;
  ZL_CUDA_CHECK(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
  ZL_CUBLAS_CHECK(cublasLtCreate(&s->lt));
  s->lt_workspace_bytes = size_t(32) << 20;  // cuBLASLt's recommendation for Hopper
  ZL_CUDA_CHECK(cudaMalloc(&s->lt_workspace, s->lt_workspace_bytes));
  return s.release();
}

void destroy_state(CudaState* s) {
  if (!s) return;
  cudaSetDevice(s->device);
  cudaStreamSynchronize(s->stream);
  for (auto& b : s->scratch) b.reset();
  s->cudnn.reset();  // the cuDNN handle is bound to s->stream: destroyed before it
  if (s->lt_workspace) cudaFree(s->lt_workspace);
  if (s->lt) cublasLtDestroy(s->lt);
  if (s->stream) cudaStreamDestroy(s->stream);
  delete s;
}

std::string device_name(const CudaState& s) { return s.name; }
int64_t allocated_bytes(const CudaState& s) { return s.allocated.load(); }
int64_t peak_allocated_bytes(const CudaState& s) { return s.peak.load(); }

std::shared_ptr<void> alloc(size_t bytes, CudaState& s) {
  void* p = nullptr;
  const size_t rounded = std::max<size_t>((bytes + 255) / 256 * 256, 256);
  ZL_CUDA_CHECK(cudaSetDevice(s.device));
  const cudaError_t e = cudaMalloc(&p, rounded);
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    char buf[256];
    std::snprintf(buf, sizeof buf, "could not allocate %.2f GiB on GPU %d (%s): %.2f GiB of %.2f GiB free",
                  double(rounded) / double(1ull << 30), s.device, s.name.c_str(), double(free_b) / double(1ull << 30),
                  double(total_b) / double(1ull << 30));
    throw core::Error("cuda memory", buf,
                      "lower --per_device_train_batch_size or --model_max_length, use --gradient_checkpointing True, "
                      "or --q_lora True");
  }
  const int64_t now = s.allocated.fetch_add(int64_t(rounded)) + int64_t(rounded);
  int64_t peak = s.peak.load();
  while (now > peak && !s.peak.compare_exchange_weak(peak, now)) {
  }
  CudaState* sp = &s;
  return std::shared_ptr<void>(p, [sp, rounded](void* q) {
    cudaFree(q);  // waits for the device's work on q
    sp->allocated.fetch_sub(int64_t(rounded));
  });
}

void copy_to_device(void* dst, const void* src, size_t bytes, CudaState& s) {
  if (!bytes) return;
  // From pageable host memory the copy is staged before it returns, so src may be reused at once.
  ZL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s.stream));
}

void copy_to_host(void* dst, const void* src, size_t bytes, CudaState& s) {
  if (!bytes) return;
  ZL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s.stream));
  ZL_CUDA_CHECK(cudaStreamSynchronize(s.stream));
}

void copy_on_device(void* dst, const void* src, size_t bytes, CudaState& s) {
  if (!bytes) return;
  ZL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s.stream));
}

void synchronize(CudaState& s) { ZL_CUDA_CHECK(cudaStreamSynchronize(s.stream)); }

std::shared_ptr<void> pinned_alloc(size_t bytes, CudaState& s) {
  void* p = nullptr;
  ZL_CUDA_CHECK(cudaSetDevice(s.device));
  const cudaError_t e = cudaHostAlloc(&p, std::max<size_t>(bytes, 1), cudaHostAllocPortable);
  if (e != cudaSuccess) {
    cudaGetLastError();
    char buf[160];
    std::snprintf(buf, sizeof buf, "could not allocate %.2f GiB of page-locked host memory (%s)",
                  double(bytes) / double(1ull << 30), cudaGetErrorString(e));
    throw core::Error("cuda host memory", buf, "check the host's free memory and ulimit -l");
  }
  return std::shared_ptr<void>(p, [](void* q) { cudaFreeHost(q); });
}

namespace {
// kernels::CopyQueue on the GPU: a non-blocking stream for the copies; per slot, `free` is recorded on the
// compute stream (the slot's last reader) and `ready` on the copy stream (the slot's last copy).
struct CopyQueueState {
  int device = 0;
  cudaStream_t stream = nullptr;
  std::vector<cudaEvent_t> free, ready;
  ~CopyQueueState() {
    cudaSetDevice(device);
    if (stream) cudaStreamSynchronize(stream);
    for (cudaEvent_t e : free) cudaEventDestroy(e);
    for (cudaEvent_t e : ready) cudaEventDestroy(e);
    if (stream) cudaStreamDestroy(stream);
  }
  void check_slot(int slot) const {
    if (slot < 0 || slot >= int(free.size()))
      throw core::Error("copy queue", "slot " + std::to_string(slot) + " out of range", "internal error");
  }
};
}  // namespace

std::shared_ptr<void> copy_queue_create(int slots, CudaState& s) {
  auto q = std::make_shared<CopyQueueState>();
  q->device = s.device;
  ZL_CUDA_CHECK(cudaSetDevice(s.device));
  ZL_CUDA_CHECK(cudaStreamCreateWithFlags(&q->stream, cudaStreamNonBlocking));
  q->free.resize(size_t(slots), nullptr);
  q->ready.resize(size_t(slots), nullptr);
  for (int i = 0; i < slots; ++i) {  // a never-recorded event is complete: the first copy waits for nothing
    ZL_CUDA_CHECK(cudaEventCreateWithFlags(&q->free[size_t(i)], cudaEventDisableTiming));
    ZL_CUDA_CHECK(cudaEventCreateWithFlags(&q->ready[size_t(i)], cudaEventDisableTiming));
  }
  return q;
}

void copy_queue_compute_done_with(void* qp, int slot, CudaState& s) {
  auto& q = *static_cast<CopyQueueState*>(qp);
  q.check_slot(slot);
  ZL_CUDA_CHECK(cudaEventRecord(q.free[size_t(slot)], s.stream));
}

void copy_queue_copy(void* qp, int slot, void* dst, const void* src, size_t bytes, CudaState& s) {
  auto& q = *static_cast<CopyQueueState*>(qp);
  q.check_slot(slot);
  (void)s;
  ZL_CUDA_CHECK(cudaStreamWaitEvent(q.stream, q.free[size_t(slot)], 0));
  if (bytes) ZL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, q.stream));
  ZL_CUDA_CHECK(cudaEventRecord(q.ready[size_t(slot)], q.stream));
}

void copy_queue_compute_waits_for(void* qp, int slot, CudaState& s) {
  auto& q = *static_cast<CopyQueueState*>(qp);
  q.check_slot(slot);
  ZL_CUDA_CHECK(cudaStreamWaitEvent(s.stream, q.ready[size_t(slot)], 0));
}

void copy_queue_host_waits_for(void* qp, int slot, CudaState&) {
  auto& q = *static_cast<CopyQueueState*>(qp);
  q.check_slot(slot);
  ZL_CUDA_CHECK(cudaEventSynchronize(q.ready[size_t(slot)]));
}

void copy_queue_synchronize(void* qp, CudaState&) {
  ZL_CUDA_CHECK(cudaStreamSynchronize(static_cast<CopyQueueState*>(qp)->stream));
}

void* scratch(CudaState& s, Scratch purpose, size_t bytes) {
  const int i = int(purpose);
  if (s.scratch_bytes[i] < bytes) {
    synchronize(s);  // the old buffer may still be read by enqueued work
    s.scratch[i].reset();
    const size_t grown = std::max(bytes, s.scratch_bytes[i] + s.scratch_bytes[i] / 2);
    s.scratch[i] = alloc(grown, s);
    s.scratch_bytes[i] = grown;
  }
  return s.scratch[i].get();
}

}  // namespace zerolora::kernels::cuda
