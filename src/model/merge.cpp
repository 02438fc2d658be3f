#include "model/merge.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/tensor.h"
#include "io/checkpoint_dir.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "kernels/context.h"
#include "kernels/kernels.h"
#include "model/adapter_io.h"
#include "model/lora.h"
#include "model/weights.h"

namespace zerolora::model {

namespace fs = std::filesystem;

namespace {

// Files of an HF model folder that are not weights and that a merged model must keep: the generation
// defaults and every tokenizer file save_pretrained / tokenizer.save_pretrained may have written.
const char* kCopiedFiles[] = {"generation_config.json", "tokenizer.model",         "tokenizer.json",
                              "tokenizer_config.json",  "special_tokens_map.json", "added_tokens.json"};

bool is_float_dtype(core::DType d) {
  return d == core::DType::F32 || d == core::DType::F64 || d == core::DType::BF16 || d == core::DType::F16;
}

// The base tensor an adapter slot is folded into: PEFT's module name without its wrapper prefix. A tied
// lm_head is the embedding itself: PEFT's merge_and_unload adds lm_head's delta in place into the one shared
// matrix, so the merged (still tied) model's embedding carries it too; this merge does the same.
std::string base_weight_name(const LoraSlot& s, const io::HfConfig& config) {
  static const std::string wrapper = "base_model.model.";
  if (s.proj == Proj::LmHead && config.tie_word_embeddings) return "model.embed_tokens.weight";
  return s.peft_prefix().substr(wrapper.size()) + ".weight";
}

// The slot's delta as W [rows, cols] += scale * left [rows, r] right [r, cols]: B and A for a linear layer;
// for embed_tokens (W = E [V, C], delta = (B A)^T) A^T [V, r] and B^T [r, C].
struct DeltaFactors {
  std::vector<float> left, right;
  const float* l = nullptr;
  const float* r = nullptr;
  int64_t rows = 0, cols = 0;
};
DeltaFactors delta_factors(const LoraSlot& s, const float* params) {
  DeltaFactors f;
  const float* A = params + s.a_offset;  // [r, in]
  const float* B = params + s.b_offset;  // [out, r]
  if (s.proj != Proj::Embed) {
    f.l = B, f.r = A, f.rows = s.out, f.cols = s.in;
    return f;
  }
  f.rows = s.in, f.cols = s.out;  // E [V, C]
  f.left.resize(size_t(s.in * s.r));
  f.right.resize(size_t(s.r * s.out));
  for (int64_t k = 0; k < s.r; ++k)
    for (int64_t v = 0; v < s.in; ++v) f.left[size_t(v * s.r + k)] = A[k * s.in + v];
  for (int64_t c = 0; c < s.out; ++c)
    for (int64_t k = 0; k < s.r; ++k) f.right[size_t(k * s.out + c)] = B[c * s.r + k];
  f.l = f.left.data(), f.r = f.right.data();
  return f;
}

// W [rows, cols] += scale * left right (kernels::add_scaled_product: double sums with fma, one rounding; the
// same bits on the CPU and the GPU) on the merge's context: on a GPU the working-precision tensor and the two
// factors go up, the update runs there, the tensor comes back.
template <typename S>
void merge_update(core::Tensor& t, const DeltaFactors& f, int64_t r, double scale, const kernels::Context& ctx) {
  S* W = t.data<S>();
  if (!ctx.on_cuda()) return kernels::add_scaled_product<S>(W, f.l, f.r, f.rows, f.cols, r, scale);
  const size_t wb = size_t(f.rows * f.cols) * sizeof(S), lb = size_t(f.rows * r) * 4, rb = size_t(r * f.cols) * 4;
  kernels::DeviceArray<char> dev(int64_t(wb + lb + rb), ctx);
  S* dW = reinterpret_cast<S*>(dev.data());
  float* dl = reinterpret_cast<float*>(dev.data() + wb);
  float* dr = reinterpret_cast<float*>(dev.data() + wb + lb);
  kernels::copy_to_device(dW, W, wb, ctx);
  kernels::copy_to_device(dl, f.l, lb, ctx);
  kernels::copy_to_device(dr, f.r, rb, ctx);
  kernels::add_scaled_product<S>(dW, dl, dr, f.rows, f.cols, r, scale, ctx);
  kernels::copy_to_host(W, dW, wb, ctx);
}

// Names in the order HF's state_dict writes them (the model's module order), then anything else the
// base folder holds (kept unchanged, e.g. old rotary inv_freq buffers) in sorted order.
std::vector<std::string> output_tensor_order(const io::HfConfig& config, const io::TensorStore& store) {
  std::vector<std::string> order;
  std::set<std::string> seen;
  for (const auto& [name, shape] : llama_tensor_shapes(config))
    if (store.has(name) && seen.insert(name).second) order.push_back(name);
  for (const auto& name : store.names())
    if (seen.insert(name).second) order.push_back(name);
  return order;
}

nlohmann::json read_json_file(const fs::path& path) {
  std::ifstream f(path);
  core::check(bool(f), path.string(), "cannot be read", "check the folder holds a Hugging Face model");
  try {
    return nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    throw core::Error(path.string(), std::string("is not valid JSON: ") + e.what());
  }
}

// The checks that need no tensor data: out_dir may be written, and is neither input.
void check_output_dir(const fs::path& out, const fs::path& base, const fs::path& adapter, bool overwrite) {
  std::error_code ec;
  const fs::path out_abs = fs::weakly_canonical(fs::absolute(out), ec);
  for (const auto& [input, what] : {std::pair{base, "the base model"}, std::pair{adapter, "the adapter"}}) {
    if (fs::exists(out) && fs::equivalent(out, input, ec))
      throw core::Error(out.string(), std::string("is ") + what + " folder",
                        "write the merged model to a new folder with --out");
  }
  if (!fs::exists(out_abs)) return;
  core::check(fs::is_directory(out_abs), out.string(), "exists and is not a folder", "choose another --out");
  const bool empty = fs::directory_iterator(out_abs) == fs::directory_iterator();
  core::check(empty || overwrite, out.string(), "exists and is not empty",
              "choose a new --out, or pass --overwrite to replace it");
}

}  // namespace

std::string torch_dtype_name(core::DType dtype) {
  switch (dtype) {
    case core::DType::F32: return "float32";
    case core::DType::F64: return "float64";
    case core::DType::BF16: return "bfloat16";
    case core::DType::F16: return "float16";
    default: throw core::Error("dtype", std::string("no torch_dtype for ") + core::dtype_name(dtype));
  }
}

core::DType parse_float_dtype(const std::string& text, const std::string& flag) {
  if (text == "f32" || text == "float32" || text == "fp32") return core::DType::F32;
  if (text == "bf16" || text == "bfloat16") return core::DType::BF16;
  if (text == "f16" || text == "float16" || text == "fp16") return core::DType::F16;
  throw core::Error(flag, "unknown dtype '" + text + "'", "use f32, bf16 or f16");
}

size_t parse_shard_size(const std::string& text) {
  const std::string where = "--max_shard_size";
  size_t digits = 0;
  while (digits < text.size() && (std::isdigit(uint8_t(text[digits])) || text[digits] == '.')) ++digits;
  std::string unit = text.substr(digits);
  for (char& c : unit) c = char(std::toupper(uint8_t(c)));
  double value = 0;
  try {
    size_t used = 0;
    value = std::stod(text.substr(0, digits), &used);
    if (used != digits) throw std::invalid_argument(text);
  } catch (const std::exception&) {
    throw core::Error(where, "'" + text + "' is not a size", "write e.g. 5GB, 500MB, 2GiB or a byte count");
  }
  // HF convert_file_size_to_int: decimal units for GB/MB/KB, binary ones for GiB/MiB/KiB
  static const std::map<std::string, double> units = {{"", 1},           {"B", 1},           {"KB", 1e3},
                                                      {"MB", 1e6},       {"GB", 1e9},        {"TB", 1e12},
                                                      {"KIB", 1024.0},   {"MIB", 1048576.0}, {"GIB", 1073741824.0},
                                                      {"TIB", 1099511627776.0}};
  auto it = units.find(unit);
  core::check(it != units.end(), where, "unknown unit in '" + text + "'", "use B, KB, MB, GB, KiB, MiB or GiB");
  const double bytes = value * it->second;
  core::check(bytes >= 1, where, "'" + text + "' is less than one byte", "give a positive size");
  return size_t(bytes);
}

MergeReport merge_adapter(const std::string& base_dir, const std::string& adapter_dir, const std::string& out_dir,
                          const MergeOptions& options) {
  if (options.dtype)
    core::check(*options.dtype == core::DType::F32 || *options.dtype == core::DType::BF16 ||
                    *options.dtype == core::DType::F16,
                "--dtype", "merged weights can be f32, bf16 or f16");
  core::check(fs::is_directory(base_dir), base_dir, "is not a folder", "--model_name_or_path takes a Hugging Face model folder");
  core::check(fs::is_directory(adapter_dir), adapter_dir, "is not a folder", "--adapter takes a PEFT adapter folder");
  check_output_dir(out_dir, base_dir, adapter_dir, options.overwrite);

  // The adapter, laid out for this base: a target the base lacks, a layer count or a shape that differs
  // all fail here, before anything is written.
  const fs::path config_path = fs::path(base_dir) / "config.json";
  const io::HfConfig config = io::load_hf_config(config_path.string());
  const LoraConfig lora = read_peft_adapter_config(adapter_dir);
  LoraLayout layout;
  try {
    layout = LoraLayout(config, lora);
  } catch (const core::Error& e) {
    // e's own message already says how to fix it
    throw core::Error((fs::path(adapter_dir) / "adapter_config.json").string(),
                      "does not fit the base model " + base_dir + ": " + e.what());
  }
  std::vector<float> params(size_t(layout.numel()));
  init_bias_params(layout, params.data());
  load_peft_adapter(adapter_dir, layout, params.data());

  const io::TensorStore store = io::TensorStore::open_model_dir(base_dir);
  // every slot folded into a tensor (a tied model's embedding can take two: embed_tokens' and lm_head's)
  std::map<std::string, std::vector<const LoraSlot*>> slot_of;
  for (const auto& s : layout.slots()) {
    const std::string name = base_weight_name(s, config);
    core::check(store.has(name), store.source(), "has no tensor " + name + " for the adapter's " + s.peft_prefix(),
                "merge the adapter into the base model it was trained on");
    const core::Shape want = s.proj == Proj::Embed ? core::Shape{s.in, s.out} : core::Shape{s.out, s.in};
    const auto& info = store.info(name);
    core::check(info.shape == want, info.file,
                "tensor " + name + " has shape " + core::shape_str(info.shape) + ", the adapter needs " +
                    core::shape_str(want),
                "merge the adapter into the base model it was trained on");
    slot_of[name].push_back(&s);
  }
  // --lora_bias: the trained biases replace the base's (bias "all" adapters hold them; lora_only ones hold
  // none, so their slots keep the base's biases, as PEFT's reload does)
  std::map<std::string, const BiasSlot*> bias_of;
  for (const auto& b : layout.bias_slots()) {
    core::check(store.has(b.base_name()), store.source(), "has no tensor " + b.base_name() + " for the adapter's "
                "bias " + b.peft_name(), "merge the adapter into the base model it was trained on");
    bias_of[b.base_name()] = &b;
  }

  MergeReport report;
  std::vector<std::pair<std::string, core::Tensor>> tensors;
  for (const auto& name : output_tensor_order(config, store)) {
    const io::TensorInfo& info = store.info(name);
    core::check(info.has_core_dtype, info.file, "tensor " + name + " has dtype " + info.dtype_name,
                "merge into an unquantized (F32/BF16/F16) base model");
    const core::DType out_dtype = (options.dtype && is_float_dtype(info.dtype)) ? *options.dtype : info.dtype;
    auto slot = slot_of.find(name);
    auto bias = bias_of.find(name);
    core::Tensor t;
    if (slot != slot_of.end()) {
      const core::DType work = info.dtype == core::DType::F64 ? core::DType::F64 : core::DType::F32;
      t = store.load(name, work, info.shape);
      // several slots (a tied embedding): the deltas added in turn in the working precision (PEFT merges
      // embed_tokens then lm_head into the shared matrix, in place)
      for (const LoraSlot* s : slot->second) {
        const DeltaFactors f = delta_factors(*s, params.data());
        const kernels::Context& ctx = options.context ? *options.context : kernels::host();
        if (work == core::DType::F64)
          merge_update<double>(t, f, s->r, layout.scale(), ctx);
        else
          merge_update<float>(t, f, s->r, layout.scale(), ctx);
        report.merged_modules += 1;
      }
      if (out_dtype != work) t = t.to(out_dtype);
    } else if (bias != bias_of.end()) {
      const BiasSlot& b = *bias->second;
      t = core::Tensor::borrow(core::DType::F32, {b.n}, params.data() + b.offset, nullptr).to(out_dtype);
    } else if (out_dtype == info.dtype) {
      // unchanged: write straight from the mapping (the store outlives the write below)
      t = core::Tensor::borrow(info.dtype, info.shape, const_cast<void*>(info.data), nullptr);
    } else {
      t = store.load(name, out_dtype, info.shape);
    }
    report.bytes += int64_t(t.nbytes());
    tensors.push_back({name, std::move(t)});
  }
  report.tensors = int64_t(tensors.size());

  // config.json is copied as the base wrote it (fields we do not model survive); only torch_dtype
  // follows a dtype override.
  nlohmann::json config_json = read_json_file(config_path);
  if (options.dtype) config_json["torch_dtype"] = torch_dtype_name(*options.dtype);
  report.torch_dtype = config_json.value("torch_dtype", std::string());

  const fs::path out_abs = fs::absolute(fs::path(out_dir)).lexically_normal();
  const fs::path parent = out_abs.filename().empty() ? out_abs.parent_path().parent_path() : out_abs.parent_path();
  std::error_code ec;
  fs::create_directories(parent, ec);
  core::check(!ec, parent.string(), "cannot create the folder: " + ec.message(), "check the path and permissions");
  io::AtomicDir dir = io::AtomicDir::begin(out_abs.string());
  io::write_file_synced(dir.file("config.json"), config_json.dump(2) + "\n");
  for (const char* file : kCopiedFiles) {
    const fs::path src = fs::path(base_dir) / file;
    if (!fs::exists(src)) continue;
    fs::copy_file(src, dir.file(file), ec);
    core::check(!ec, src.string(), "cannot be copied: " + ec.message(), "check free disk space and permissions");
  }
  io::write_safetensors_sharded(dir.temp_path(), tensors, options.max_shard_bytes);
  for (const auto& entry : fs::directory_iterator(dir.temp_path()))
    if (entry.path().extension() == ".safetensors") report.shards += 1;
  dir.commit();
  return report;
}

}  // namespace zerolora::model
