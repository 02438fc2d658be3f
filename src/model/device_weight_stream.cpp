#include "model/device_weight_stream.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"

namespace zerolora::model {

namespace {

constexpr size_t kAlign = 256;  // every tensor of a slot starts at a 256-byte boundary (cuBLASLt's widest)
size_t aligned(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

size_t bytes_of(const core::Tensor& t) { return t.numel() ? aligned(t.nbytes()) : 0; }

size_t bytes_of(const kernels::FrozenWeight& w) {
  core::check(!w.nf4 && !w.nf4_device, "ZeRO-3 on the GPU",
              "stage 3 on the GPU streams bf16/fp32 weights; NF4 (--q_lora) parts are not streamed",
              "use a DeepSpeed config with stage 0-2 for --q_lora on the GPU (QLoRA does not run under stage 3 in "
              "DeepSpeed either), or --device cpu");
  return bytes_of(w.weight) + bytes_of(w.bias);
}

size_t bytes_of(const LayerWeights& l) {
  size_t n = bytes_of(l.input_norm) + bytes_of(l.post_norm);
  for (const auto& w : l.proj) n += bytes_of(w);
  return n;
}

// Host memcpy of a part into page-locked memory, in 4 MiB pieces over the threads (one core's memcpy is far
// slower than the host-to-device link).
void parallel_copy(char* dst, const char* src, size_t n) {
  constexpr size_t kPiece = size_t(4) << 20;
  const int64_t pieces = int64_t((n + kPiece - 1) / kPiece);
#pragma omp parallel for schedule(static) if (pieces > 1)
  for (int64_t i = 0; i < pieces; ++i) {
    const size_t off = size_t(i) * kPiece;
    std::memcpy(dst + off, src + off, std::min(kPiece, n - off));
  }
}

struct PartId {
  enum Kind { Embedding, Layer, LmHead } kind = Embedding;
  int layer = 0;
  bool operator==(const PartId& o) const { return kind == o.kind && layer == o.layer; }
};

// One of the two places a part lives in: its device buffer, the page-locked host buffer it is copied from,
// which part it holds, and that part's device views.
struct Slot {
  std::shared_ptr<void> dev, pinned;
  size_t dev_capacity = 0, pinned_capacity = 0;
  bool holds = false;
  PartId part;
  core::Tensor embed;
  LayerWeights layer;
  kernels::FrozenWeight head;
};

}  // namespace

struct DeviceWeightStream::Impl {
  FrozenWeightStream& up;
  const int num_layers;
  const kernels::Context& ctx;
  kernels::CopyQueue queue;
  Slot slots[2];
  std::vector<PartId> order;  // this pass's parts in the model's order
  size_t cursor = 0;          // the position in `order` of the next acquire
  int current = -1;           // the slot of the acquired part (-1: none)
  int last = 1;               // the slot of the part acquired before
  int ahead = -1;             // the slot the next planned part was loaded into (-1: none)
  int64_t copied = 0, prefetched = 0, on_demand = 0;

  Impl(FrozenWeightStream& u, int layers, const kernels::Context& c)
      : up(u), num_layers(layers), ctx(c), queue(c, 2) {}

  core::Device device() const { return ctx.on_cuda() ? core::Device::Cuda : core::Device::Cpu; }

  void plan(bool with_backward) {
    order.clear();
    order.push_back({PartId::Embedding, 0});
    for (int l = 0; l < num_layers; ++l) order.push_back({PartId::Layer, l});
    order.push_back({PartId::LmHead, 0});
    if (with_backward)
      for (int l = num_layers - 1; l >= 0; --l) order.push_back({PartId::Layer, l});
    cursor = 0;
  }

  // Room for `bytes` in slot j. Growing waits for everything that may still use the old buffers.
  void reserve(int j, size_t bytes) {
    Slot& s = slots[j];
    if (s.dev_capacity < bytes) {
      kernels::synchronize(ctx);
      queue.synchronize();
      s.dev.reset();
      s.dev = kernels::device_alloc(bytes, ctx);
      s.dev_capacity = bytes;
    }
    if (s.pinned_capacity < bytes) {
      s.pinned.reset();
      s.pinned = kernels::pinned_alloc(bytes, ctx);
      s.pinned_capacity = bytes;
    }
  }

  // Lays a part's tensors out in a slot: each copied into the page-locked buffer, its view made at the same
  // offset of the device buffer.
  struct Packer {
    Impl& m;
    Slot& s;
    size_t off = 0;
    core::Tensor put(const core::Tensor& t) {
      if (t.numel() == 0) return core::Tensor();
      parallel_copy(static_cast<char*>(s.pinned.get()) + off, static_cast<const char*>(t.raw()), t.nbytes());
      void* dst = static_cast<char*>(s.dev.get()) + off;
      off += aligned(t.nbytes());
      m.copied += int64_t(t.nbytes());
      return core::Tensor::borrow(t.dtype(), t.shape(), dst, nullptr, m.device());
    }
    kernels::FrozenWeight put(const kernels::FrozenWeight& w) {
      kernels::FrozenWeight d;
      d.N = w.N, d.K = w.K, d.fp16_inputs = w.fp16_inputs;
      d.weight = put(w.weight);
      if (w.has_bias()) d.bias = put(w.bias);
      return d;
    }
  };

  // Part p into slot j: upstream's host part into the page-locked buffer (once that buffer's previous copy is
  // done), upstream released, then the device copy enqueued behind the compute stream's last use of the slot.
  void load(const PartId& p, int j) {
    Slot& s = slots[j];
    queue.host_waits_for(j);
    s.holds = false;
    size_t used = 0;
    if (p.kind == PartId::Embedding) {
      const core::Tensor& h = up.acquire_embedding();
      reserve(j, bytes_of(h));
      Packer pk{*this, s};
      s.embed = pk.put(h);
      used = pk.off;
    } else if (p.kind == PartId::Layer) {
      const LayerWeights& h = up.acquire_layer(p.layer);
      reserve(j, bytes_of(h));
      Packer pk{*this, s};
      s.layer.input_norm = pk.put(h.input_norm);
      s.layer.post_norm = pk.put(h.post_norm);
      for (int i = 0; i < 7; ++i) s.layer.proj[i] = pk.put(h.proj[i]);
      used = pk.off;
    } else {
      const kernels::FrozenWeight& h = up.acquire_lm_head();
      reserve(j, bytes_of(h));
      Packer pk{*this, s};
      s.head = pk.put(h);
      used = pk.off;
    }
    up.release();
    queue.copy(j, s.dev.get(), s.pinned.get(), used);
    s.holds = true;
    s.part = p;
  }

  // The slot holding part p: the one the previous acquire loaded it into ahead of use, or else loaded now. Then
  // the next part of the planned order is started into the other slot. Every part is taken from upstream once
  // per use and in the model's order (ZeRO-3's stream checks that order), only earlier.
  Slot& acquire(const PartId& p) {
    core::check(current < 0, "weight stream", "a part was acquired before the previous one was released",
                "internal error: the model must release each part");
    int j = ahead;
    if (j >= 0 && slots[j].holds && slots[j].part == p) {
      ++prefetched;
    } else {
      j = 1 - last;  // not the previous part's slot: the compute stream may still be reading it
      load(p, j);
      ++on_demand;
    }
    ahead = -1;
    queue.compute_waits_for(j);
    current = j;
    while (cursor < order.size() && !(order[cursor] == p)) ++cursor;
    if (cursor < order.size()) ++cursor;
    if (cursor < order.size()) {
      load(order[cursor], 1 - j);
      ahead = 1 - j;
    }
    return slots[j];
  }

  void release() {
    if (current < 0) return;
    queue.compute_done_with(current);
    last = current;
    current = -1;
  }
};

DeviceWeightStream::DeviceWeightStream(FrozenWeightStream& upstream, int num_layers, const kernels::Context& ctx)
    : impl_(std::make_unique<Impl>(upstream, num_layers, ctx)) {}

DeviceWeightStream::~DeviceWeightStream() = default;

void DeviceWeightStream::begin_pass(bool with_backward) {
  impl_->up.begin_pass(with_backward);
  impl_->plan(with_backward);
}

const core::Tensor& DeviceWeightStream::acquire_embedding() { return impl_->acquire({PartId::Embedding, 0}).embed; }

const LayerWeights& DeviceWeightStream::acquire_layer(int layer) {
  return impl_->acquire({PartId::Layer, layer}).layer;
}

const kernels::FrozenWeight& DeviceWeightStream::acquire_lm_head() { return impl_->acquire({PartId::LmHead, 0}).head; }

void DeviceWeightStream::release() { impl_->release(); }

void DeviceWeightStream::end_pass() {
  // a part loaded ahead past the pass's end (none in the planned order) stays valid for the next pass
  impl_->up.end_pass();
}

HostWeightStream::HostWeightStream(const LlamaWeights& weights) : w_(weights) {
  skeleton_.config = weights.config;
  skeleton_.compute = weights.compute, skeleton_.storage = weights.storage, skeleton_.nf4 = weights.nf4;
  skeleton_.final_norm = weights.final_norm;
}

int64_t DeviceWeightStream::slot_bytes() const {
  return int64_t(impl_->slots[0].dev_capacity + impl_->slots[1].dev_capacity);
}
int64_t DeviceWeightStream::copied_bytes() const { return impl_->copied; }
int64_t DeviceWeightStream::prefetched_parts() const { return impl_->prefetched; }
int64_t DeviceWeightStream::loaded_on_demand() const { return impl_->on_demand; }

}  // namespace zerolora::model
