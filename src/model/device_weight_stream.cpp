#include "model/device_weight_stream.h"

#include <string>

#include "core/error.h"

namespace zerolora::model {

namespace {

constexpr size_t kAlign = 256;  // every tensor of a slot starts at a 256-byte boundary (cuBLASLt's widest)
size_t aligned(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

size_t bytes_of(const core::Tensor& t) { return t.numel() ? aligned(t.nbytes()) : 0; }

size_t bytes_of(const kernels::FrozenWeight& w, const char* what) {
  core::check(!w.nf4 && !w.nf4_device, what,
              "ZeRO stage 3 on the GPU streams bf16/fp32 weights; NF4 (--q_lora) parts are not streamed",
              "use a DeepSpeed config with stage 0-2 for --q_lora on the GPU (as DeepSpeed, where QLoRA does not "
              "run under stage 3), or --device cpu");
  return bytes_of(w.weight) + bytes_of(w.bias);
}

size_t bytes_of(const LayerWeights& l) {
  size_t n = bytes_of(l.input_norm) + bytes_of(l.post_norm);
  for (const auto& w : l.proj) n += bytes_of(w, "ZeRO-3 on the GPU");
  return n;
}

// One of the two device buffers a part is copied into, and the part's device views.
struct Slot {
  std::shared_ptr<void> mem;
  size_t capacity = 0;
  core::Tensor embed;
  LayerWeights layer;
  kernels::FrozenWeight head;
};

}  // namespace

struct DeviceWeightStream::Impl {
  FrozenWeightStream& up;
  const kernels::Context& ctx;
  Slot slots[2];
  int next = 0;
  int64_t copied = 0;
  char* cursor = nullptr;  // where the part being copied goes next

  Impl(FrozenWeightStream& u, const kernels::Context& c) : up(u), ctx(c) {}

  core::Device device() const { return ctx.on_cuda() ? core::Device::Cuda : core::Device::Cpu; }

  // The slot for the next part, holding at least `bytes`. Parts alternate between the two slots; growing one
  // (the first pass, or a larger part) waits for the device first, since enqueued work may still read it.
  Slot& take(size_t bytes) {
    Slot& s = slots[next];
    next ^= 1;
    if (s.capacity < bytes) {
      kernels::synchronize(ctx);
      s.mem.reset();
      s.mem = kernels::device_alloc(bytes, ctx);
      s.capacity = bytes;
    }
    cursor = static_cast<char*>(s.mem.get());
    return s;
  }

  core::Tensor put(const core::Tensor& t) {
    if (t.numel() == 0) return core::Tensor();
    void* dst = cursor;
    kernels::copy_to_device(dst, t.raw(), t.nbytes(), ctx);
    cursor += aligned(t.nbytes());
    copied += int64_t(t.nbytes());
    return core::Tensor::borrow(t.dtype(), t.shape(), dst, nullptr, device());
  }

  kernels::FrozenWeight put(const kernels::FrozenWeight& w) {
    kernels::FrozenWeight d;
    d.N = w.N, d.K = w.K, d.fp16_inputs = w.fp16_inputs;
    d.weight = put(w.weight);
    if (w.has_bias()) d.bias = put(w.bias);
    return d;
  }
};

DeviceWeightStream::DeviceWeightStream(FrozenWeightStream& upstream, const kernels::Context& ctx)
    : impl_(std::make_unique<Impl>(upstream, ctx)) {}

DeviceWeightStream::~DeviceWeightStream() = default;

void DeviceWeightStream::begin_pass(bool with_backward) { impl_->up.begin_pass(with_backward); }

const core::Tensor& DeviceWeightStream::acquire_embedding() {
  Impl& m = *impl_;
  const core::Tensor& h = m.up.acquire_embedding();
  Slot& s = m.take(bytes_of(h));
  s.embed = m.put(h);
  m.up.release();
  return s.embed;
}

const LayerWeights& DeviceWeightStream::acquire_layer(int layer) {
  Impl& m = *impl_;
  const LayerWeights& h = m.up.acquire_layer(layer);
  Slot& s = m.take(bytes_of(h));
  s.layer.input_norm = m.put(h.input_norm);
  s.layer.post_norm = m.put(h.post_norm);
  for (int p = 0; p < 7; ++p) s.layer.proj[p] = m.put(h.proj[p]);
  m.up.release();
  return s.layer;
}

const kernels::FrozenWeight& DeviceWeightStream::acquire_lm_head() {
  Impl& m = *impl_;
  const kernels::FrozenWeight& h = m.up.acquire_lm_head();
  Slot& s = m.take(bytes_of(h, "ZeRO-3 on the GPU"));
  s.head = m.put(h);
  m.up.release();
  return s.head;
}

// The part's views stay valid until the slot is taken again, two acquires later: nothing to do here.
void DeviceWeightStream::release() {}

void DeviceWeightStream::end_pass() { impl_->up.end_pass(); }

int64_t DeviceWeightStream::slot_bytes() const {
  return int64_t(impl_->slots[0].capacity + impl_->slots[1].capacity);
}

int64_t DeviceWeightStream::copied_bytes() const { return impl_->copied; }

}  // namespace zerolora::model
