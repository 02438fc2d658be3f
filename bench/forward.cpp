// Forward throughput of a random LLaMA model built in memory (nothing written to disk): tokens/s of
// LlamaModel<float>::forward_logits over a B x T batch, frozen weights bf16 (default) or f32.
//
//   bench_forward [--preset tinyllama-1.1b] [--seq 512] [--batch 1] [--dtype bf16|f32]
//                 [--repeats 5] [--layers N] [--threads 0] [--prepack] [--json-only]
//
// Prints one table line and one JSON line ({"bench":"forward", ...}); the timing is the median of
// --repeats calls after one warm-up call.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/runtime.h"
#include "model/llama.h"
#include "model/random_model.h"

using namespace zerolora;
using zerolora::bench::fast_random_source;
using zerolora::bench::median;

namespace {

struct Options {
  std::string preset = "tinyllama-1.1b";
  int64_t seq = 512, batch = 1, layers = 0;
  std::string dtype = "bf16";
  int repeats = 5, threads = 0;
  bool prepack = false, json_only = false;
};

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr,
               "%s\nusage: bench_forward [--preset NAME] [--seq T] [--batch B] [--dtype bf16|f32] [--repeats N]\n"
               "                     [--layers N (0 = preset's)] [--threads N (0 = all cores)] [--prepack] [--json-only]\n",
               msg);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value after " + a).c_str());
      return argv[++i];
    };
    if (a == "--preset") o.preset = value();
    else if (a == "--seq") o.seq = std::stoll(value());
    else if (a == "--batch") o.batch = std::stoll(value());
    else if (a == "--layers") o.layers = std::stoll(value());
    else if (a == "--dtype") o.dtype = value();
    else if (a == "--repeats") o.repeats = std::stoi(value());
    else if (a == "--threads") o.threads = std::stoi(value());
    else if (a == "--prepack") o.prepack = true;
    else if (a == "--json-only") o.json_only = true;
    else if (a == "-h" || a == "--help") usage("");
    else usage(("unknown argument " + a).c_str());
  }
  if (o.dtype != "bf16" && o.dtype != "f32") usage("--dtype must be bf16 or f32");
  if (o.seq < 2 || o.batch < 1 || o.repeats < 1) usage("--seq >= 2, --batch >= 1, --repeats >= 1");
  return o;
}


}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  try {
    core::set_num_threads(o.threads);
    io::HfConfig config = model::preset_config(o.preset);
    if (o.layers > 0) config.num_hidden_layers = o.layers;
    const core::DType storage = o.dtype == "bf16" ? core::DType::BF16 : core::DType::F32;

    core::Timer build_timer;
    model::LlamaWeights weights = model::build_llama_weights(config, core::DType::F32, storage, fast_random_source());
    bool packed = false;
    if (o.prepack) {
      const int64_t M = o.seq * o.batch;
      for (auto& layer : weights.layers)
        for (auto& p : layer.proj) packed = p.prepack(M) || packed;
      packed = weights.lm_head.prepack(M) || packed;
    }
    const double build_s = build_timer.seconds();

    model::LlamaModel<float> net(weights, nullptr);
    const int64_t B = o.batch, T = o.seq, M = B * T;
    std::vector<int32_t> ids(static_cast<size_t>(M));
    for (int64_t i = 0; i < M; ++i) ids[size_t(i)] = int32_t((i * 7919 + 17) % config.vocab_size);
    model::ModelInput in;
    in.B = B, in.T = T, in.input_ids = ids.data();
    std::vector<float> logits(size_t(M * config.vocab_size));

    net.forward_logits(in, nullptr, logits.data());  // warm-up: arena, rope table, oneDNN primitives
    std::vector<double> times;
    for (int r = 0; r < o.repeats; ++r) {
      core::Timer t;
      net.forward_logits(in, nullptr, logits.data());
      times.push_back(t.seconds());
    }
    const double med = median(times);
    const double tok_s = double(M) / med;
    // 2 FLOPs per linear weight (7 projections per layer + lm_head) per token + causal attention
    double lin = double(weights.lm_head.N) * double(weights.lm_head.K);
    for (const auto& layer : weights.layers)
      for (const auto& p : layer.proj) lin += double(p.N) * double(p.K);
    const double attn = 2.0 * double(config.num_hidden_layers) * double(B) * double(T) * double(T) *
                        double(config.num_attention_heads * config.head_dim);
    const double gflops = (2.0 * lin * double(M) + attn) / med * 1e-9;
    const double rss_gib = double(core::peak_rss_bytes()) / (1024.0 * 1024.0 * 1024.0);
    if (!o.json_only)
      std::printf("forward %-16s %-4s B=%lld T=%-5lld layers=%-3lld threads=%d  %9.1f tokens/s  %8.3f s/batch  "
                  "%7.1f GFLOP/s  peak RSS %.2f GiB  (build %.1f s%s)\n",
                  o.preset.c_str(), o.dtype.c_str(), (long long)B, (long long)T,
                  (long long)config.num_hidden_layers, core::num_threads(), tok_s, med, gflops, rss_gib, build_s,
                  o.prepack ? (packed ? ", prepacked" : ", prepack no-op on this CPU") : "");
    std::printf("{\"bench\":\"forward\",\"impl\":\"zerolora\",\"preset\":\"%s\",\"dtype\":\"%s\",\"batch\":%lld,"
                "\"seq\":%lld,\"layers\":%lld,\"threads\":%d,\"repeats\":%d,\"prepacked\":%s,"
                "\"seconds_median\":%.6f,\"seconds_min\":%.6f,\"tokens_per_s\":%.3f,\"gflops\":%.3f,"
                "\"peak_rss_bytes\":%lld}\n",
                o.preset.c_str(), o.dtype.c_str(), (long long)B, (long long)T, (long long)config.num_hidden_layers,
                core::num_threads(), o.repeats, packed ? "true" : "false", med,
                *std::min_element(times.begin(), times.end()), tok_s, gflops, (long long)core::peak_rss_bytes());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_forward: %s\n", e.what());
    return 1;
  }
  return 0;
}
