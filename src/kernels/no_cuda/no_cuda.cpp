// The CUDA backend of a build without the CUDA toolkit: no devices; anything that would need one says how
// to get a CUDA build.
#include "core/error.h"
#include "kernels/cuda_backend.h"

namespace zerolora::kernels::cuda {

namespace {
[[noreturn]] void unavailable() {
  throw core::Error("--device cuda", "this zerolora was built without the CUDA backend",
                    "install the CUDA toolkit (nvcc, cuBLAS) and rebuild (cmake -DZEROLORA_CUDA=ON), or use --device cpu");
}
}  // namespace

bool built() { return false; }
int device_count() { return 0; }
std::string devices_summary() { return "built without the CUDA backend"; }
std::string attention_library() { return "built without the CUDA backend"; }
int64_t cudnn_attention_runs() { return 0; }
CudaState* create_state(int) { unavailable(); }
void destroy_state(CudaState*) {}
std::string device_name(const CudaState&) { unavailable(); }
int64_t allocated_bytes(const CudaState&) { return 0; }
int64_t peak_allocated_bytes(const CudaState&) { return 0; }
std::shared_ptr<void> alloc(size_t, CudaState&) { unavailable(); }
void copy_to_device(void*, const void*, size_t, CudaState&) { unavailable(); }
void copy_to_host(void*, const void*, size_t, CudaState&) { unavailable(); }
void copy_on_device(void*, const void*, size_t, CudaState&) { unavailable(); }
void synchronize(CudaState&) { unavailable(); }
std::shared_ptr<void> pinned_alloc(size_t, CudaState&) { unavailable(); }
std::shared_ptr<void> copy_queue_create(int, CudaState&) { unavailable(); }
void copy_queue_compute_done_with(void*, int, CudaState&) { unavailable(); }
void copy_queue_copy(void*, int, void*, const void*, size_t, CudaState&) { unavailable(); }
void copy_queue_compute_waits_for(void*, int, CudaState&) { unavailable(); }
void copy_queue_host_waits_for(void*, int, CudaState&) { unavailable(); }
void copy_queue_synchronize(void*, CudaState&) { unavailable(); }
void gemm(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t, float, float*,
          int64_t, CudaState&) { unavailable(); }
int set_gemm_split_k(int) { return -1; }
int gemm_split_k_parts(int64_t, int64_t, int64_t, const CudaState&) { unavailable(); }
std::string gemm_algo_summary(bool, bool, int64_t, int64_t, int64_t, int32_t, CudaState&) { unavailable(); }
bool lora_dropout_forward(float*, const float*, const float*, int64_t, int64_t, int64_t, const DropoutMask&,
                          CudaState&) { unavailable(); }
bool lora_dropout_backward_input(float*, const float*, const float*, int64_t, int64_t, int64_t, const DropoutMask&,
                                 CudaState&) { unavailable(); }
bool lora_dropout_weight_grad(float*, const float*, const float*, int64_t, int64_t, int64_t, const DropoutMask&,
                              CudaState&) { unavailable(); }
void add_scaled_product(float*, const float*, const float*, int64_t, int64_t, int64_t, double, CudaState&) {
  unavailable();
}
void add_scaled_product(double*, const float*, const float*, int64_t, int64_t, int64_t, double, CudaState&) {
  unavailable();
}
void linear_forward(float*, const float*, const FrozenWeight&, int64_t, CudaState&) { unavailable(); }
void linear_backward_input(float*, const float*, const FrozenWeight&, int64_t, CudaState&) { unavailable(); }
void nf4_dequantize(void*, bool, const DeviceNf4&, CudaState&) { unavailable(); }
void embedding_forward(float*, const int32_t*, const core::Tensor&, int64_t, CudaState&) { unavailable(); }
void embedding_backward(float*, const int32_t*, const float*, int64_t, int64_t, int64_t, CudaState&) { unavailable(); }
void rmsnorm_forward(float*, float*, const float*, const float*, int64_t, int64_t, double, CudaState&) { unavailable(); }
void rmsnorm_backward(float*, const float*, const float*, const float*, const float*, int64_t, int64_t, CudaState&) {
  unavailable();
}
void rope_forward(float*, const float*, const int32_t*, int64_t, int64_t, int64_t, CudaState&) { unavailable(); }
void rope_backward(float*, const float*, const int32_t*, int64_t, int64_t, int64_t, CudaState&) { unavailable(); }
void swiglu_forward(float*, const float*, const float*, int64_t, CudaState&) { unavailable(); }
void swiglu_backward(float*, float*, const float*, const float*, const float*, int64_t, CudaState&) { unavailable(); }
void add(float*, const float*, const float*, int64_t, CudaState&) { unavailable(); }
void fill_zero(void*, size_t, CudaState&) { unavailable(); }
void scale(float*, int64_t, float, CudaState&) { unavailable(); }
void dropout_apply(float*, const float*, int64_t, int64_t, const DropoutMask&, bool, CudaState&) { unavailable(); }
void cross_entropy_accumulate(float*, const int32_t*, int64_t, int64_t, double, double*, CudaState&) { unavailable(); }
void adamw_step(float*, const float*, float*, float*, int64_t, double, double, double, double, double, int64_t,
                CudaState&) { unavailable(); }
double sum_squares(const float*, int64_t, CudaState&) { unavailable(); }
void attention_forward(float*, float*, const float*, const float*, const float*, const AttentionShape&, const int32_t*,
                       const int32_t*, CudaState&) { unavailable(); }
void attention_backward(float*, float*, float*, const float*, const float*, const float*, const float*, const float*,
                        const float*, const AttentionShape&, const int32_t*, const int32_t*, CudaState&) {
  unavailable();
}
void attention_decode(float*, const float*, const float*, const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                      int64_t, CudaState&) {
  unavailable();
}

}  // namespace zerolora::kernels::cuda
