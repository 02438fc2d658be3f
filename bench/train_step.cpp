// One LoRA training step of a random LLaMA model built in memory: forward_backward over a B x T
// micro-batch + AdamW on the flat LoRA buffer. Reports tokens/s, peak RSS and MFU. One configuration
// per process, so the peak RSS is that configuration's own (bench/run loops over configurations).
//
//   bench_train_step [--preset tinyllama-1.1b] [--layers N] [--seq 512] [--batch 1] [--dtype bf16|f32|nf4]
//                    [--lora-r 8] [--lora-targets q_proj,v_proj | all] [--checkpointing]
//                    [--steps 3] [--threads 0] [--prepack] [--no-gemm] [--json-only] [--profile]
//
// Timing: one warm-up step (arena, rope table, oneDNN primitives), then the median of --steps steps.
//
// MFU = model FLOPs per second / the bf16 GEMM rate measured in this process on the model's own
// shapes (linear_forward through bf16 FrozenWeights [I, C] and [C, C] with M = B*T rows). Model FLOPs
// are the GEMM FLOPs a LoRA step needs without recomputation (docs/PERFORMANCE.md):
//   forward   2 * P_lin * M                      every frozen linear, lm_head included
//           + L * B * 2 * T^2 * NH*HD            attention QK^T and PV, causal (half counted)
//   backward  2 * P_lin * M                      activation gradients through every frozen linear
//           + L * B * 4 * T^2 * NH*HD            attention backward (2x its forward)
//   LoRA      6 * M * r * (in + out) per adapted projection (2 forward GEMMs, 4 backward)
// No weight gradient for frozen weights, no recomputation (gradient checkpointing's extra forward is
// not counted, so it shows as lower MFU).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/op_profile.h"
#include "core/runtime.h"
#include "kernels/context.h"
#include "kernels/kernels.h"
#include "model/device_weight_stream.h"
#include "model/llama.h"
#include "model/lora.h"
#include "model/random_model.h"
#include "train/flags.h"
#include "train/optimizer.h"

using namespace zerolora;
using zerolora::bench::fast_random_source;
using zerolora::bench::median;

namespace {

struct Options {
  std::string preset = "tinyllama-1.1b";
  int64_t seq = 512, batch = 1, layers = 0, lora_r = 8;
  std::string dtype = "bf16", lora_targets = "q_proj,v_proj";
  double lora_alpha = 16, lora_dropout = 0.05;
  bool checkpointing = false, prepack = false, gemm = true, json_only = false, profile = false, offload_param = false;
  bool estimate_only = false;
  std::string device = "cpu";
  int steps = 3, threads = 0;
};

// The model's options for this run: on a GPU the loss runs in larger chunks (model::gpu_loss_chunk_rows).
model::TrainOptions train_options(const Options& o, const io::HfConfig& config) {
  model::TrainOptions t;
  t.gradient_checkpointing = o.checkpointing;
  if (o.device == "cuda") t.loss_chunk_rows = model::gpu_loss_chunk_rows(config.vocab_size);
  return t;
}

// bench/run and scripts/gpu-check.sh write the flags with dashes (--lora-r, --no-gemm): the one parser maps a
// dash in a name to an underscore, so both spellings work.
Options parse(int argc, char** argv) {
  Options o;
  int64_t lora_alpha = int64_t(o.lora_alpha), steps = o.steps, threads = o.threads;
  bool no_gemm = !o.gemm;
  train::FlagSet fs("bench_train_step",
                    "usage: bench_train_step [--preset NAME] [--layers N] [--seq T] [--batch B] [--dtype bf16|f32|nf4] "
                    "[flags]\n"
                    "One LoRA training step of a random model built in memory: tokens/s, peak RSS, MFU (median of "
                    "--steps\nafter one warm-up step).");
  fs.add(train::choice_flag("preset", o.preset, model::preset_names(), "model shape"));
  fs.add(train::int_flag("layers", o.layers, "number of blocks (0 = the preset's)"));
  fs.add(train::int_flag("seq", o.seq, "tokens per sequence T"));
  fs.add(train::int_flag("batch", o.batch, "sequences per micro-batch B"));
  fs.add(train::choice_flag("dtype", o.dtype, {"bf16", "f32", "nf4"},
                            "frozen weights (nf4: QLoRA, NF4 projections, bf16 compute, bf16 embeddings/lm_head)"));
  fs.add(train::lora_r_flag(o.lora_r));
  fs.add(train::lora_alpha_flag(lora_alpha));
  fs.add(train::lora_dropout_flag(o.lora_dropout));
  fs.add(train::string_flag("lora_targets", o.lora_targets, "NAMES", "comma-separated projections, or all"));
  fs.add(train::bool_flag("checkpointing", o.checkpointing, "gradient checkpointing (recompute block activations)"));
  fs.add(train::int_flag("steps", steps, "timed steps (the median is reported)"));
  fs.add(train::num_threads_flag(threads).with_alias("threads"));
  fs.add(train::bool_flag("prepack", o.prepack, "frozen weights in oneDNN's blocked layout"));
  fs.add(train::bool_flag("no_gemm", no_gemm, "skip the GEMM-rate measurement (no MFU)"));
  fs.add(train::bool_flag("json_only", o.json_only, "print only the JSON line"));
  fs.add(train::bool_flag("profile", o.profile, "time by op over the timed steps"));
  fs.add(train::bool_flag("estimate_only", o.estimate_only,
                          "print the activation arena's size for this shape (the plan the model allocates; with "
                          "--device cuda its larger loss chunk) and exit: builds no weights, needs no GPU"));
  fs.add(train::choice_flag("device", o.device, {"cpu", "cuda"}, "where the step runs"));
  fs.add(train::bool_flag("offload_param", o.offload_param,
                          "--device cuda: frozen weights in host memory, each part copied to the GPU ahead of its use "
                          "(DeepSpeed's offload_param; model::DeviceWeightStream)"));
  try {
    if (!fs.parse(argc, argv)) {
      std::fputs(fs.help().c_str(), stdout);
      std::exit(0);
    }
    if (o.seq < 2 || o.batch < 1 || steps < 1 || o.lora_r < 1)
      throw train::FlagError("bench_train_step", "--seq must be >= 2 and --batch, --steps, --lora_r >= 1",
                             "pass values in those ranges");
  } catch (const train::FlagError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    std::exit(1);
  }
  o.lora_alpha = double(lora_alpha);
  o.steps = int(steps), o.threads = int(threads), o.gemm = !no_gemm;
  return o;
}

std::vector<std::string> split_targets(const std::string& s) {
  if (s == "all") return {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}


struct FlopCount {
  double linear = 0, attention = 0, lora = 0;
  double total() const { return linear + attention + lora; }
};

// The model FLOPs of one LoRA step (see the header comment and docs/PERFORMANCE.md).
FlopCount model_flops(const model::LlamaWeights& w, const model::LoraLayout& lora, int64_t B, int64_t T) {
  const auto& c = w.config;
  const double M = double(B) * double(T);
  double p_lin = double(w.lm_head.N) * double(w.lm_head.K);
  for (const auto& layer : w.layers)
    for (const auto& p : layer.proj) p_lin += double(p.N) * double(p.K);
  FlopCount f;
  f.linear = 4.0 * p_lin * M;  // forward 2 P M + activation-gradient backward 2 P M
  f.attention = 6.0 * double(c.num_hidden_layers) * double(B) * double(T) * double(T) *
                double(c.num_attention_heads * c.head_dim);
  for (const auto& s : lora.slots()) f.lora += 6.0 * M * double(s.r) * double(s.in + s.out);
  return f;
}

// GFLOP/s of linear_forward on one weight shape [N, K] with M rows: median of reps after a warm-up. On a
// CUDA context the time includes the fp32 -> bf16 rounding of the input (part of every bf16 linear there).
double gemm_rate(core::DType dtype, int64_t N, int64_t K, int64_t M, bool prepack, int reps,
                 const kernels::Context& ctx = kernels::host()) {
  core::Tensor wt = fast_random_source()("gemm.weight", dtype, {N, K});
  kernels::FrozenWeight w = kernels::to_device(kernels::FrozenWeight::make(wt), ctx);
  if (prepack && !ctx.on_cuda()) w.prepack(M);
  std::vector<float> xh(size_t(M * K));
  for (size_t i = 0; i < xh.size(); ++i) xh[i] = float(int64_t(i * 2654435761u % 2001) - 1000) * 1e-3f;
  kernels::DeviceArray<float> x(M * K, ctx), y(M * N, ctx);
  kernels::copy_to_device(x.data(), xh.data(), xh.size() * sizeof(float), ctx);
  kernels::linear_forward<float>(y.data(), x.data(), w, M, ctx);
  kernels::synchronize(ctx);
  std::vector<double> times;
  for (int r = 0; r < reps; ++r) {
    core::Timer t;
    kernels::linear_forward<float>(y.data(), x.data(), w, M, ctx);
    kernels::synchronize(ctx);
    times.push_back(t.seconds());
  }
  return 2.0 * double(M) * double(N) * double(K) / median(times) * 1e-9;
}

// The rate over the model's two main shapes together (gate/up [I, C] and q/o [C, C]): total FLOPs over
// total median time, so neither shape dominates by its size alone more than it does in the model.
double model_gemm_rate(core::DType dtype, const io::HfConfig& c, int64_t M, bool prepack,
                       const kernels::Context& ctx = kernels::host()) {
  const int64_t I = c.intermediate_size, C = c.hidden_size;
  const double r1 = gemm_rate(dtype, I, C, M, prepack, 3, ctx), r2 = gemm_rate(dtype, C, C, M, prepack, 3, ctx);
  const double f1 = 2.0 * double(M) * double(I) * double(C), f2 = 2.0 * double(M) * double(C) * double(C);
  return (f1 + f2) / (f1 / r1 + f2 / r2);
}

}  // namespace

int main(int argc, char** argv) {
  core::return_large_frees_to_system();  // as the zerolora binary does
  const Options o = parse(argc, argv);
  try {
    core::set_num_threads(o.threads);
    io::HfConfig config = model::preset_config(o.preset);
    if (o.layers > 0) config.num_hidden_layers = o.layers;
    const core::DType storage = o.dtype == "f32" ? core::DType::F32 : core::DType::BF16;
    const int64_t B = o.batch, T = o.seq, M = B * T;
    if (o.estimate_only) {
      model::LoraConfig lc;
      lc.r = o.lora_r;
      lc.dropout = o.lora_dropout;  // the masked-input scratch exists only with dropout
      lc.target_modules = split_targets(o.lora_targets);
      const model::LoraLayout layout(config, lc);
      const int64_t bytes =
          model::LlamaModel<float>::estimate_activation_bytes(config, &layout, train_options(o, config), B, T);
      std::printf("{\"bench\":\"activation_estimate\",\"preset\":\"%s\",\"layers\":%lld,\"batch\":%lld,\"seq\":%lld,"
                  "\"lora_r\":%lld,\"lora_targets\":\"%s\",\"checkpointing\":%s,\"device\":\"%s\","
                  "\"activation_bytes\":%lld,\"activation_gib\":%.3f}\n",
                  o.preset.c_str(), (long long)config.num_hidden_layers, (long long)B, (long long)T,
                  (long long)o.lora_r, o.lora_targets.c_str(), o.checkpointing ? "true" : "false", o.device.c_str(),
                  (long long)bytes, double(bytes) / double(1 << 30));
      return 0;
    }

    core::Timer build_timer;
    model::LlamaWeights weights =
        model::build_llama_weights(config, core::DType::F32, storage, fast_random_source(), o.dtype == "nf4");
    bool packed = false;
    if (o.prepack) {
      for (auto& layer : weights.layers)
        for (auto& p : layer.proj) packed = p.prepack(M) || packed;
      packed = weights.lm_head.prepack(M) || packed;
    }
    const double build_s = build_timer.seconds();
    std::unique_ptr<kernels::CudaContext> gpu;
    if (o.device == "cuda") gpu = std::make_unique<kernels::CudaContext>(0);
    const kernels::Context& ctx = gpu ? gpu->ctx() : kernels::host();
    if (o.offload_param && !gpu)
      throw core::Error("--offload-param", "streams the frozen weights to a GPU", "add --device cuda");
    // --offload-param: only the skeleton (config, final norm) goes to the GPU; the parts come through the stream
    std::unique_ptr<model::HostWeightStream> host_stream;
    std::unique_ptr<model::DeviceWeightStream> device_stream;
    if (o.offload_param) {
      host_stream = std::make_unique<model::HostWeightStream>(weights);
      device_stream = std::make_unique<model::DeviceWeightStream>(*host_stream, int(config.num_hidden_layers), ctx);
    }
    const model::LlamaWeights device_weights =
        gpu ? model::to_device(host_stream ? host_stream->skeleton() : weights, ctx) : model::LlamaWeights{};
    if (gpu) core::set_op_timer_sync([&ctx] { kernels::synchronize(ctx); });  // --profile: per-op device time

    model::LoraConfig lc;
    lc.r = o.lora_r;
    lc.alpha = o.lora_alpha;
    lc.dropout = o.lora_dropout;
    lc.target_modules = split_targets(o.lora_targets);
    model::LoraLayout layout(config, lc);
    std::vector<float> params(size_t(layout.numel())), grads(size_t(layout.numel()));
    model::init_lora_params(layout, params.data(), 1234);
    // PEFT starts with B = 0; give B small values so the LoRA branch carries real numbers from step one
    // (the timing does not depend on it, but a zero branch could hide a wrong benchmark).
    for (const auto& s : layout.slots())
      for (int64_t i = 0; i < s.out * s.r; ++i) params[size_t(s.b_offset + i)] = 1e-3f * float((i % 7) - 3);
    train::AdamW optimizer(layout.numel(), train::AdamWConfig{0.9, 0.999, 1e-8, 0.0});
    // on a GPU the LoRA state lives there and AdamW runs there
    kernels::DeviceArray<float> params_dev, grads_dev, m_dev, v_dev;
    float* p_ptr = params.data();
    float* g_ptr = grads.data();
    if (gpu) {
      params_dev = kernels::DeviceArray<float>(layout.numel(), ctx);
      grads_dev = kernels::DeviceArray<float>(layout.numel(), ctx);
      m_dev = kernels::DeviceArray<float>(layout.numel(), ctx);
      v_dev = kernels::DeviceArray<float>(layout.numel(), ctx);
      kernels::copy_to_device(params_dev.data(), params.data(), params.size() * sizeof(float), ctx);
      kernels::fill_zero<float>(m_dev.data(), layout.numel(), ctx);
      kernels::fill_zero<float>(v_dev.data(), layout.numel(), ctx);
      p_ptr = params_dev.data(), g_ptr = grads_dev.data();
    }

    const model::TrainOptions topt = train_options(o, config);
    model::LlamaModel<float> net(gpu ? device_weights : weights, &layout, topt, ctx);
    if (device_stream) net.set_weight_stream(device_stream.get());

    std::vector<int32_t> ids(static_cast<size_t>(M));
    for (int64_t i = 0; i < M; ++i) ids[size_t(i)] = int32_t((i * 7919 + 17) % config.vocab_size);
    model::ModelInput in;
    in.B = B, in.T = T, in.input_ids = ids.data(), in.labels = ids.data();
    const double grad_scale = 1.0 / double(B * (T - 1));  // mean loss over the B*(T-1) targets

    double last_loss = 0;
    auto step = [&](int index) {
      kernels::fill_zero<float>(g_ptr, layout.numel(), ctx);
      model::LossResult res = net.forward_backward(in, p_ptr, g_ptr, grad_scale, uint64_t(index));
      core::OpTimer ot(core::Op::Optimizer);
      if (gpu) {
        kernels::adamw_step(p_ptr, g_ptr, m_dev.data(), v_dev.data(), layout.numel(), 2e-4, 0.9, 0.999, 1e-8, 0.0,
                            index + 1, ctx);
        kernels::synchronize(ctx);
      } else {
        optimizer.step(params.data(), grads.data(), 2e-4);
      }
      last_loss = res.loss_sum / double(std::max<int64_t>(res.tokens, 1));
    };
    core::Timer warm_timer;
    step(0);
    const double warmup_s = warm_timer.seconds();
    core::set_op_profiling(o.profile);  // the timed steps only
    core::reset_op_profile();
    std::vector<double> times;
    for (int s = 1; s <= o.steps; ++s) {
      core::Timer t;
      step(s);
      times.push_back(t.seconds());
    }
    core::set_op_profiling(false);
    const int64_t peak_rss = core::peak_rss_bytes();  // before the GEMM probe allocates its own buffers
    const double med = median(times);
    const double tok_s = double(M) / med;
    const FlopCount flops = model_flops(weights, layout, B, T);
    const double achieved = flops.total() / med * 1e-9;

    double gemm_bf16 = 0, gemm_f32 = 0;
    if (o.gemm) {
      gemm_bf16 = model_gemm_rate(core::DType::BF16, config, M, o.prepack, ctx);
      gemm_f32 = model_gemm_rate(core::DType::F32, config, M, o.prepack, ctx);
      if (gpu) {  // the yardstick: bf16 8192^3 through cuBLASLt (with the input's bf16 rounding)
        const double big = gemm_rate(core::DType::BF16, 8192, 8192, 8192, false, 5, ctx);
        std::printf("  GEMM probe 8192^3 bf16 (cuBLASLt via linear_forward): %.1f GFLOP/s -> MFU vs it %.1f%%\n", big,
                    100.0 * (flops.total() / med * 1e-9) / big);
      }
    }
    const double mfu = gemm_bf16 > 0 ? achieved / gemm_bf16 : 0;
    const double gib = 1024.0 * 1024.0 * 1024.0;
    const std::string lora_name = o.lora_targets + ":r" + std::to_string(o.lora_r);

    if (!o.json_only) {
      if (gpu)
        std::printf("  device cuda:0 %s, peak GPU memory %.2f GiB; attention: %s (%lld cuDNN executions)\n",
                    gpu->name().c_str(), double(gpu->peak_allocated()) / (1024.0 * 1024.0 * 1024.0),
                    kernels::cuda_attention_library().c_str(), (long long)kernels::cuda_cudnn_attention_runs());
      std::printf("train_step %s %s layers=%lld B=%lld T=%lld lora=%s ckpt=%d threads=%d%s\n", o.preset.c_str(),
                  o.dtype.c_str(), (long long)config.num_hidden_layers, (long long)B, (long long)T, lora_name.c_str(),
                  int(o.checkpointing), core::num_threads(), o.offload_param ? " offload_param" : "");
      if (device_stream)
        std::printf("  offload_param: two device slots %.2f GiB, %.2f GiB copied per step, %lld parts loaded ahead, "
                    "%lld on demand (all steps)\n", double(device_stream->slot_bytes()) / (1024.0 * 1024.0 * 1024.0),
                    double(device_stream->copied_bytes()) / double(o.steps + 1) / (1024.0 * 1024.0 * 1024.0),
                    (long long)device_stream->prefetched_parts(), (long long)device_stream->loaded_on_demand());
      std::printf("  step %.3f s (median of %d, min %.3f; warm-up %.3f s; build %.1f s%s)  %.1f tokens/s  loss %.4f\n",
                  med, o.steps, *std::min_element(times.begin(), times.end()), warmup_s, build_s,
                  o.prepack ? (packed ? ", prepacked" : ", prepack no-op on this CPU") : "", tok_s, last_loss);
      std::printf("  model %.1f GFLOP/step (linear %.1f, attention %.1f, LoRA %.2f) -> %.1f GFLOP/s\n",
                  flops.total() * 1e-9, flops.linear * 1e-9, flops.attention * 1e-9, flops.lora * 1e-9, achieved);
      if (o.gemm)
        std::printf("  GEMM probe (linear_forward, M=%lld): bf16 %.1f GFLOP/s, f32 %.1f GFLOP/s -> MFU %.1f%% "
                    "(vs f32 rate %.1f%%)\n",
                    (long long)M, gemm_bf16, gemm_f32, 100 * mfu, gemm_f32 > 0 ? 100 * achieved / gemm_f32 : 0.0);
      if (o.profile) std::printf("  time by op over the timed steps: %s\n", core::op_profile_summary().c_str());
      std::printf("  peak RSS %.2f GiB (frozen weights %.2f GiB, activation arena %.2f GiB, LoRA %lld params)\n",
                  double(peak_rss) / gib, double(weights.frozen_bytes()) / gib, double(net.activation_bytes()) / gib,
                  (long long)layout.numel());
    }
    std::printf("{\"bench\":\"train_step\",\"impl\":\"zerolora\",\"preset\":\"%s\",\"dtype\":\"%s\",\"layers\":%lld,"
                "\"batch\":%lld,\"seq\":%lld,\"lora_r\":%lld,\"lora_targets\":\"%s\",\"checkpointing\":%s,"
                "\"threads\":%d,\"steps\":%d,\"prepacked\":%s,\"seconds_median\":%.6f,\"seconds_min\":%.6f,"
                "\"warmup_seconds\":%.6f,\"tokens_per_s\":%.3f,\"peak_rss_bytes\":%lld,\"loss\":%.6f,"
                "\"trainable_params\":%lld,\"activation_bytes\":%lld,\"frozen_bytes\":%lld,\"model_gflop\":%.3f,"
                "\"achieved_gflops\":%.3f,\"gemm_gflops_bf16\":%.3f,\"gemm_gflops_f32\":%.3f,\"mfu\":%.5f,"
                "\"offload_param\":%s,\"peak_gpu_bytes\":%lld}\n",
                o.preset.c_str(), o.dtype.c_str(), (long long)config.num_hidden_layers, (long long)B, (long long)T,
                (long long)o.lora_r, o.lora_targets.c_str(), o.checkpointing ? "true" : "false", core::num_threads(),
                o.steps, packed ? "true" : "false", med, *std::min_element(times.begin(), times.end()), warmup_s,
                tok_s, (long long)peak_rss, last_loss, (long long)layout.numel(), (long long)net.activation_bytes(),
                (long long)weights.frozen_bytes(), flops.total() * 1e-9, achieved, gemm_bf16, gemm_f32, mfu,
                o.offload_param ? "true" : "false", (long long)(gpu ? gpu->peak_allocated() : 0));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_train_step: %s\n", e.what());
    return 1;
  }
  return 0;
}
