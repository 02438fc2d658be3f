#include "train/zero3_weights.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "core/op_profile.h"
#include "dist/zero_partition.h"
#include "kernels/nf4.h"

namespace zerolora::train {

namespace {

// One array of a frozen tensor (a plain tensor has one; an NF4 weight three: packed codes, absmax
// codes, absmax2), either whole on this rank or cut into world slices of `slice` bytes.
struct Piece {
  int64_t bytes = 0;  // the array's real size
  int64_t slice = 0;  // bytes per rank (sharded); the gathered buffer holds slice * world
  std::shared_ptr<std::byte> local;  // this rank's slice (sharded)
};

// One frozen tensor as this rank holds it.
struct FrozenTensor {
  core::DType dtype = core::DType::F32;
  core::Shape shape;
  int64_t numel = 0;
  bool persistent = false;
  core::Tensor whole;                           // persistent plain tensor
  std::shared_ptr<const kernels::Nf4Weight> nf4_whole;  // persistent NF4 weight
  // sharded NF4: the metadata every rank keeps (vectors empty), and the three arrays' pieces
  std::shared_ptr<kernels::Nf4Weight> nf4_meta;
  std::vector<Piece> pieces;
  bool is_nf4() const { return nf4_whole || nf4_meta; }
};

// Cuts `bytes` of `data` (elements of elem_size) into this rank's slice, TensorPartition's rule.
Piece cut(const void* data, int64_t bytes, int64_t elem_size, int world, int rank) {
  Piece p;
  p.bytes = bytes;
  const dist::TensorPartition part(bytes / elem_size, world);
  p.slice = part.partition_size() * elem_size;
  p.local = core::alloc_aligned(size_t(std::max<int64_t>(p.slice, 1)));
  std::memset(p.local.get(), 0, size_t(p.slice));
  const dist::Range real = part.rank_real_range(rank);
  if (!real.empty())
    std::memcpy(p.local.get(), static_cast<const std::byte*>(data) + real.begin * elem_size,
                size_t(real.size() * elem_size));
  return p;
}

// Where a sharded tensor is gathered to: a plain buffer (viewed as the tensor) or an Nf4Weight whose
// vectors are sized to the padded length while a gather writes them.
struct GatherTarget {
  std::shared_ptr<std::byte> buffer;
  core::Tensor view;
  std::shared_ptr<kernels::Nf4Weight> nf4;
  int64_t bytes = 0;
};

// The positions of one block's tensors.
constexpr int kInputNorm = 0, kPostNorm = 1, kProjWeight = 2, kProjBias = 9, kLayerSlots = 16;

}  // namespace

struct Zero3FrozenWeights::Impl {
  dist::Comm& comm;
  Zero3Options opt;
  int world = 1, rank = 0;
  model::LlamaWeights skeleton;
  std::vector<FrozenTensor> tensors;
  int embed_id = -1, lm_head_id = -1;
  std::vector<std::array<int, kLayerSlots>> layer_ids;  // [layer][position] -> tensor id or -1

  // A working buffer: holds one part (a block, or the embedding / lm_head) at a time.
  struct Slot {
    std::vector<GatherTarget> targets;  // by position (blocks) or one (vocabulary)
    int holding = -1;                   // part key held or being gathered, -1 none
    bool complete = false;
    size_t started = 0;                 // tensors of the part whose gathers have started
    std::vector<dist::Request> inflight;
    int64_t released_at = 0;            // elements counter when it was last released
    model::LayerWeights layer_view;
    core::Tensor embed_view;
    kernels::FrozenWeight head_view;
  };
  Slot layer_slots[2];
  Slot vocab_slot;

  std::vector<int> sequence;  // part keys of the current pass
  int position = -1;
  Slot* current = nullptr;
  int64_t elements_used = 0;
  Zero3Traffic traffic;

  Impl(dist::Comm& c, const Zero3Options& o) : comm(c), opt(o), world(c.size()), rank(c.rank()) {}

  int layers() const { return skeleton.config.num_hidden_layers; }
  int embed_key() const { return layers(); }
  int head_key() const { return skeleton.config.tie_word_embeddings ? embed_key() : layers() + 1; }
  bool is_layer(int key) const { return key < layers(); }

  std::vector<int> part_tensors(int key) const {
    if (key == embed_key()) return {embed_id};
    if (key == layers() + 1) return {lm_head_id};
    std::vector<int> ids;
    for (int id : layer_ids[size_t(key)])
      if (id >= 0) ids.push_back(id);
    return ids;
  }
  int64_t part_numel(int key) const {
    int64_t n = 0;
    for (int id : part_tensors(key)) n += tensors[size_t(id)].numel;
    return n;
  }

  // ---- loading --------------------------------------------------------------------------------

  int add_plain(core::Tensor t, bool persistent) {
    FrozenTensor f;
    f.dtype = t.dtype(), f.shape = t.shape(), f.numel = t.numel(), f.persistent = persistent;
    if (persistent || world == 1) {
      f.persistent = true;
      f.whole = std::move(t);
    } else {
      f.pieces.push_back(cut(t.raw(), int64_t(t.nbytes()), int64_t(core::dtype_size(t.dtype())), world, rank));
    }
    tensors.push_back(std::move(f));
    return int(tensors.size()) - 1;
  }

  int add_nf4(const std::shared_ptr<const kernels::Nf4Weight>& q, bool persistent) {
    FrozenTensor f;
    f.shape = {q->N, q->K}, f.numel = q->numel(), f.persistent = persistent || world == 1;
    if (f.persistent) {
      f.nf4_whole = q;
    } else {
      auto meta = std::make_shared<kernels::Nf4Weight>();
      meta->N = q->N, meta->K = q->K, meta->double_quant = q->double_quant;
      meta->absmax_offset = q->absmax_offset, meta->compute_dtype = q->compute_dtype, meta->bias = q->bias;
      f.nf4_meta = meta;
      f.pieces.push_back(cut(q->packed.data(), int64_t(q->packed.size()), 1, world, rank));
      if (q->double_quant) {
        f.pieces.push_back(cut(q->absmax_q.data(), int64_t(q->absmax_q.size()), 1, world, rank));
        f.pieces.push_back(cut(q->absmax2.data(), int64_t(q->absmax2.size() * 4), 4, world, rank));
      } else {
        f.pieces.push_back(cut(q->absmax.data(), int64_t(q->absmax.size() * 4), 4, world, rank));
      }
    }
    tensors.push_back(std::move(f));
    return int(tensors.size()) - 1;
  }

  void load(const std::string& model_dir) {
    const io::HfConfig c = io::load_hf_config((std::filesystem::path(model_dir) / "config.json").string());
    io::TensorStore store = model::open_model_tensors(model_dir, c);
    auto source = [&](const std::string& name, core::DType dtype, const core::Shape& shape) {
      return store.load(name, dtype, shape);
    };
    // DeepSpeed's persistence rule over the parameters in module order.
    const auto shapes = model::llama_tensor_shapes(c);
    std::vector<int64_t> numels;
    for (const auto& [name, shape] : shapes) numels.push_back(core::shape_numel(shape));
    const auto plan = dist::plan_stage3_partitions(numels, world, opt.param_persistence_threshold,
                                                   opt.model_persistence_threshold);
    size_t next = 0;  // index into shapes/plan, advanced in the same order as the loads below
    auto persistent = [&](const std::string& name) {
      core::check(next < shapes.size() && shapes[next].first == name, "zero3", "tensor order mismatch at " + name);
      return plan[next++].persistent();
    };

    skeleton.config = c;
    skeleton.compute = core::DType::F32;
    skeleton.storage = opt.storage;
    skeleton.nf4 = opt.nf4;
    {
      core::Tensor e = source("model.embed_tokens.weight", opt.storage, {c.vocab_size, c.hidden_size});
      if (opt.fp16) model::round_to_fp16_in_place(e);
      embed_id = add_plain(std::move(e), persistent("model.embed_tokens.weight"));
    }
    layer_ids.assign(size_t(c.num_hidden_layers), {});
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      auto& ids = layer_ids[size_t(l)];
      ids.fill(-1);
      model::LayerWeights w = model::build_layer_weights(c, l, core::DType::F32, opt.storage, source, opt.nf4);
      const std::string p = "model.layers." + std::to_string(l);
      ids[kInputNorm] = add_plain(w.input_norm, persistent(p + ".input_layernorm.weight"));
      for (int j = 0; j < 7; ++j) {
        kernels::FrozenWeight& fw = w.proj[j];
        const std::string base = p + (j < 4 ? ".self_attn." : ".mlp.") + model::proj_name(model::Proj(j));
        if (fw.nf4) {
          ids[size_t(kProjWeight + j)] = add_nf4(fw.nf4, persistent(base + ".weight"));
          if (!fw.nf4->bias.empty()) persistent(base + ".bias");  // kept inside the NF4 metadata
        } else {
          if (opt.fp16) model::round_to_fp16_in_place(fw.weight);
          ids[size_t(kProjWeight + j)] = add_plain(fw.weight, persistent(base + ".weight"));
          if (fw.has_bias()) ids[size_t(kProjBias + j)] = add_plain(fw.bias, persistent(base + ".bias"));
        }
        fw = kernels::FrozenWeight{};  // this block's full copy goes as soon as it is cut
      }
      ids[kPostNorm] = add_plain(w.post_norm, persistent(p + ".post_attention_layernorm.weight"));
    }
    skeleton.final_norm = source("model.norm.weight", core::DType::F32, {c.hidden_size});
    persistent("model.norm.weight");  // always whole: every pass needs it
    if (!c.tie_word_embeddings) {
      core::Tensor h = source("lm_head.weight", opt.storage, {c.vocab_size, c.hidden_size});
      if (opt.fp16) model::round_to_fp16_in_place(h);
      lm_head_id = add_plain(std::move(h), persistent("lm_head.weight"));
    }
    allocate_buffers();
  }

  GatherTarget make_target(int id) {
    const FrozenTensor& f = tensors[size_t(id)];
    GatherTarget t;
    if (f.is_nf4()) {
      t.nf4 = std::make_shared<kernels::Nf4Weight>(*f.nf4_meta);
      t.nf4->packed.reserve(size_t(f.pieces[0].slice * world));
      if (f.nf4_meta->double_quant) {
        t.nf4->absmax_q.reserve(size_t(f.pieces[1].slice * world));
        t.nf4->absmax2.reserve(size_t(f.pieces[2].slice * world / 4));
      } else {
        t.nf4->absmax.reserve(size_t(f.pieces[1].slice * world / 4));
      }
      for (const auto& p : f.pieces) t.bytes += p.slice * world;
    } else {
      t.bytes = f.pieces[0].slice * world;
      t.buffer = core::alloc_aligned(size_t(t.bytes));
      t.view = core::Tensor::borrow(f.dtype, f.shape, t.buffer.get(), t.buffer);
    }
    return t;
  }

  // Buffers sized for the largest tensor at each position that any block shards.
  void allocate_buffers() {
    for (Slot& s : layer_slots) {
      s.targets.resize(kLayerSlots);
      for (int pos = 0; pos < kLayerSlots; ++pos) {
        int pick = -1;
        for (const auto& ids : layer_ids)
          if (ids[size_t(pos)] >= 0 && !tensors[size_t(ids[size_t(pos)])].persistent) pick = ids[size_t(pos)];
        if (pick >= 0) s.targets[size_t(pos)] = make_target(pick);
      }
    }
    int pick = -1;
    for (int id : {embed_id, lm_head_id})
      if (id >= 0 && !tensors[size_t(id)].persistent) pick = id;
    if (pick >= 0) vocab_slot.targets.push_back(make_target(pick));
  }

  // ---- gathering ------------------------------------------------------------------------------

  GatherTarget& target_for(Slot& s, int key, size_t index_in_part) {
    if (!is_layer(key)) return s.targets[0];
    int seen = 0;
    for (int pos = 0; pos < kLayerSlots; ++pos)
      if (layer_ids[size_t(key)][size_t(pos)] >= 0 && seen++ == int(index_in_part)) return s.targets[size_t(pos)];
    throw core::Error("zero3", "no buffer for a tensor", "internal error");
  }

  // Starts the gathers of part tensors [s.started, upto).
  void start_gathers(Slot& s, int key, size_t upto) {
    const std::vector<int> ids = part_tensors(key);
    for (; s.started < std::min(upto, ids.size()); ++s.started) {
      const FrozenTensor& f = tensors[size_t(ids[s.started])];
      if (f.persistent) continue;
      GatherTarget& t = target_for(s, key, s.started);
      std::vector<uint8_t*> dst;
      if (f.is_nf4()) {
        kernels::Nf4Weight& q = *t.nf4;
        q.absmax_offset = f.nf4_meta->absmax_offset;  // this tensor's own metadata (the buffer is shared)
        q.bias = f.nf4_meta->bias;
        q.packed.resize(size_t(f.pieces[0].slice * world));
        dst.push_back(q.packed.data());
        if (f.nf4_meta->double_quant) {
          q.absmax_q.resize(size_t(f.pieces[1].slice * world));
          q.absmax2.resize(size_t(f.pieces[2].slice * world / 4));
          dst.push_back(q.absmax_q.data());
          dst.push_back(reinterpret_cast<uint8_t*>(q.absmax2.data()));
        } else {
          q.absmax.resize(size_t(f.pieces[1].slice * world / 4));
          dst.push_back(reinterpret_cast<uint8_t*>(q.absmax.data()));
        }
      } else {
        dst.push_back(reinterpret_cast<uint8_t*>(t.buffer.get()));
      }
      for (size_t i = 0; i < f.pieces.size(); ++i) {
        const Piece& p = f.pieces[i];
        s.inflight.push_back(comm.all_gather_async(
            std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(p.local.get()), size_t(p.slice)),
            std::span<uint8_t>(dst[i], size_t(p.slice * world))));
        traffic.gathered_bytes += p.slice * world;
      }
    }
  }

  void finish(Slot& s, int key) {
    core::OpTimer t(core::Op::Communication);
    for (auto& r : s.inflight) r.wait();
    s.inflight.clear();
    // NF4 vectors back to their exact sizes (capacity kept: no reallocation next time)
    for (GatherTarget& t : s.targets) {
      if (!t.nf4) continue;
      kernels::Nf4Weight& q = *t.nf4;
      q.packed.resize(size_t((q.numel() + 1) / 2));
      if (q.double_quant) {
        q.absmax_q.resize(size_t(q.num_blocks()));
        q.absmax2.resize(size_t((q.num_blocks() + kernels::kNf4NestedBlockSize - 1) / kernels::kNf4NestedBlockSize));
      } else {
        q.absmax.resize(size_t(q.num_blocks()));
      }
    }
    s.complete = true;
  }

  void progress_others(const Slot* except) {
    for (Slot* s : {&layer_slots[0], &layer_slots[1], &vocab_slot})
      if (s != except)
        for (auto& r : s->inflight) r.test();
  }

  Slot* slot_holding(int key) {
    for (Slot* s : {&layer_slots[0], &layer_slots[1], &vocab_slot})
      if (s->holding == key) return s;
    return nullptr;
  }

  // The slot that gathers `key` next: a block goes to the block slot not in use (the older one).
  Slot* free_slot_for(int key, const Slot* busy) {
    if (!is_layer(key)) return &vocab_slot;
    Slot* a = &layer_slots[0];
    Slot* b = &layer_slots[1];
    if (a == busy) return b;
    if (b == busy) return a;
    return a->released_at <= b->released_at ? a : b;
  }

  Slot& acquire(int key) {
    core::check(current == nullptr, "zero3", "a part is acquired twice without release", "internal error");
    ++position;
    core::check(position < int(sequence.size()) && sequence[size_t(position)] == key, "zero3",
                "the model used its frozen weights out of the planned order", "internal error");
    Slot* s = slot_holding(key);
    const bool reusable = s && s->complete && elements_used - s->released_at <= opt.max_reuse_distance;
    if (s && s->complete && !reusable) s->holding = -1, s = nullptr;
    if (reusable) {
      traffic.reuses += 1;
    } else {
      if (!s) {
        s = free_slot_for(key, nullptr);
        for (auto& r : s->inflight) r.wait();
        s->inflight.clear();
        s->holding = key, s->complete = false, s->started = 0;
      } else if (s->started > 0) {
        traffic.prefetched += 1;
      }
      start_gathers(*s, key, SIZE_MAX);
      finish(*s, key);
      traffic.gathers += 1;
    }
    elements_used += part_numel(key);
    current = s;
    prefetch_next(s);
    return *s;
  }

  // Starts gathering the next part of the pass (up to the prefetch budget) while this one computes.
  void prefetch_next(Slot* busy) {
    if (position + 1 >= int(sequence.size()) || opt.prefetch_bucket_size <= 0) return;
    const int key = sequence[size_t(position + 1)];
    if (Slot* held = slot_holding(key); held && held->complete) {
      if (elements_used - held->released_at <= opt.max_reuse_distance) return;  // will be reused
      held->holding = -1;  // too far back: gathered again
    }
    const int64_t budget = std::min(opt.prefetch_bucket_size, opt.max_live_parameters - part_numel(sequence[size_t(position)]));
    Slot* s = free_slot_for(key, busy);
    if (s == busy) return;
    const std::vector<int> ids = part_tensors(key);
    size_t upto = 0;
    for (int64_t n = 0; upto < ids.size() && n + tensors[size_t(ids[upto])].numel <= budget; ++upto)
      n += tensors[size_t(ids[upto])].numel;
    if (upto == 0) return;
    for (auto& r : s->inflight) r.wait();
    s->inflight.clear();
    s->holding = key, s->complete = false, s->started = 0;
    start_gathers(*s, key, upto);
  }

  void release() {
    core::check(current != nullptr, "zero3", "release without acquire", "internal error");
    current->released_at = elements_used;
    current = nullptr;
    progress_others(nullptr);
  }

  const model::LayerWeights& layer_view(Slot& s, int l) {
    const auto& ids = layer_ids[size_t(l)];
    auto tensor_at = [&](int pos) -> core::Tensor {
      const int id = ids[size_t(pos)];
      if (id < 0) return {};
      const FrozenTensor& f = tensors[size_t(id)];
      return f.persistent ? f.whole : s.targets[size_t(pos)].view;
    };
    model::LayerWeights& w = s.layer_view;
    w.input_norm = tensor_at(kInputNorm);
    w.post_norm = tensor_at(kPostNorm);
    for (int j = 0; j < 7; ++j) {
      const FrozenTensor& f = tensors[size_t(ids[size_t(kProjWeight + j)])];
      if (f.is_nf4()) {
        w.proj[j] = kernels::FrozenWeight::make_nf4(f.persistent ? f.nf4_whole : s.targets[size_t(kProjWeight + j)].nf4);
      } else {
        w.proj[j] = kernels::FrozenWeight::make(tensor_at(kProjWeight + j), tensor_at(kProjBias + j));
        w.proj[j].fp16_inputs = opt.fp16;
      }
    }
    return w;
  }

  const core::Tensor& vocab_tensor(Slot& s, int id) {
    const FrozenTensor& f = tensors[size_t(id)];
    s.embed_view = f.persistent ? f.whole : s.targets[0].view;
    return s.embed_view;
  }
};

Zero3FrozenWeights::Zero3FrozenWeights(const std::string& model_dir, const Zero3Options& options, dist::Comm& comm)
    : impl_(std::make_unique<Impl>(comm, options)) {
  core::check(options.storage == core::DType::F32 || options.storage == core::DType::BF16, "zero3",
              "frozen weights must be F32 or BF16");
  impl_->load(model_dir);
}

Zero3FrozenWeights::~Zero3FrozenWeights() {
  // buffers may still be the target of a prefetch: wait before freeing them
  for (auto* s : {&impl_->layer_slots[0], &impl_->layer_slots[1], &impl_->vocab_slot})
    for (auto& r : s->inflight) r.wait();
}

const model::LlamaWeights& Zero3FrozenWeights::skeleton() const { return impl_->skeleton; }
Zero3Traffic Zero3FrozenWeights::traffic() const { return impl_->traffic; }

Zero3Memory Zero3FrozenWeights::memory() const {
  Zero3Memory m;
  const Impl& I = *impl_;
  m.persistent_bytes = int64_t(I.skeleton.final_norm.nbytes());
  m.full_model_bytes = m.persistent_bytes;
  for (const FrozenTensor& f : I.tensors) {
    if (f.nf4_whole) {
      m.persistent_bytes += f.nf4_whole->storage_bytes();
      m.full_model_bytes += f.nf4_whole->storage_bytes();
    } else if (f.persistent) {
      m.persistent_bytes += int64_t(f.whole.nbytes());
      m.full_model_bytes += int64_t(f.whole.nbytes());
    } else {
      for (const Piece& p : f.pieces) m.sharded_bytes += p.slice, m.full_model_bytes += p.bytes;
      if (f.nf4_meta) {  // kept whole: the bias and the double quantisation's offset
        const int64_t meta = int64_t(f.nf4_meta->bias.size() * 4) + (f.nf4_meta->double_quant ? 4 : 0);
        m.persistent_bytes += meta, m.full_model_bytes += meta;
      }
    }
  }
  for (const auto* s : {&I.layer_slots[0], &I.layer_slots[1], &I.vocab_slot})
    for (const GatherTarget& t : s->targets) m.gather_buffer_bytes += t.bytes;
  return m;
}

Zero3FrozenWeights::PassBytes Zero3FrozenWeights::gathered_bytes_per_use() const {
  const Impl& I = *impl_;
  auto bytes = [&](int key) {
    int64_t n = 0;
    for (int id : I.part_tensors(key))
      for (const Piece& p : I.tensors[size_t(id)].pieces) n += p.slice * I.world;
    return n;
  };
  PassBytes b;
  for (int l = 0; l < I.layers(); ++l) b.blocks += bytes(l);
  b.forward_only = bytes(I.embed_key()) + bytes(I.head_key());
  return b;
}

void Zero3FrozenWeights::begin_pass(bool with_backward) {
  Impl& I = *impl_;
  I.sequence.clear();
  I.sequence.push_back(I.embed_key());
  for (int l = 0; l < I.layers(); ++l) I.sequence.push_back(l);
  I.sequence.push_back(I.head_key());
  if (with_backward)
    for (int l = I.layers() - 1; l >= 0; --l) I.sequence.push_back(l);
  I.position = -1;
  I.current = nullptr;  // a pass that ended in an exception may have left a part acquired
  // the first part is fetched now; the rest is prefetched as the pass goes
}

const core::Tensor& Zero3FrozenWeights::acquire_embedding() {
  Impl& I = *impl_;
  return I.vocab_tensor(I.acquire(I.embed_key()), I.embed_id);
}

const model::LayerWeights& Zero3FrozenWeights::acquire_layer(int layer) {
  Impl& I = *impl_;
  return I.layer_view(I.acquire(layer), layer);
}

const kernels::FrozenWeight& Zero3FrozenWeights::acquire_lm_head() {
  Impl& I = *impl_;
  Impl::Slot& s = I.acquire(I.head_key());
  const int id = I.skeleton.config.tie_word_embeddings ? I.embed_id : I.lm_head_id;
  s.head_view = kernels::FrozenWeight::make(I.vocab_tensor(s, id));
  s.head_view.fp16_inputs = I.opt.fp16;
  return s.head_view;
}

void Zero3FrozenWeights::release() { impl_->release(); }

void Zero3FrozenWeights::end_pass() {
  Impl& I = *impl_;
  core::check(I.current == nullptr && I.position + 1 == int(I.sequence.size()), "zero3",
              "a pass ended before using every part", "internal error");
}

}  // namespace zerolora::train
