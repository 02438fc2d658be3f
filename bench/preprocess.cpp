// Preprocessing throughput: dummy_conversation.json repeated to 50,000 samples, rendered, tokenised
// and masked as the trainer does at start-up (eager Dataset), for
//   Llama-2 SentencePiece + vicuna_v1.1 (FastChat's exact offsets, both legacy modes) and
//   Llama-3 byte-level BPE + llama-3 (labels from turn boundaries),
// on 1 thread and on all threads; plus plain tokenisation of the rendered prompts for comparison.
// Needs ../shared (or ZEROLORA_SHARED_DIR); prints a message and exits 0 without it.
//   bench_preprocess [samples=50000]
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/runtime.h"
#include "data/dataset.h"
#include "data/templates.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/sentencepiece_tokenizer.h"

using namespace zerolora;

namespace {

std::filesystem::path shared_dir() {
  if (const char* env = std::getenv("ZEROLORA_SHARED_DIR")) return env;
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "shared";
}

std::vector<data::Conversation> repeated(const std::vector<data::Conversation>& base, size_t n) {
  std::vector<data::Conversation> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    data::Conversation c = base[i % base.size()];
    c.row = i;
    c.id += "#" + std::to_string(i / base.size());
    out.push_back(std::move(c));
  }
  return out;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

// Process CPU seconds: on a shared machine, single-thread throughput per CPU second is steadier than
// per wall second.
double cpu_seconds() { return static_cast<double>(std::clock()) / CLOCKS_PER_SEC; }

void run(const char* label, const std::vector<data::Conversation>& convs, const tokenizer::Tokenizer& tok,
         const std::string& conv_template, int threads) {
  core::set_num_threads(threads);
  data::DataOptions opt;
  opt.conv_template = conv_template;
  opt.model_max_length = 2048;
  core::Timer timer;
  const double cpu0 = cpu_seconds();
  data::Dataset ds = data::Dataset::from_conversations(convs, "bench", tok, opt);
  const double s = timer.seconds(), cpu = cpu_seconds() - cpu0;
  const auto& rep = ds.report();
  std::printf("%-40s threads %2d  %7.0f samples/s %9.0f tokens/s (wall %.2f s, cpu %.2f s: %.0f samples per cpu-s)\n",
              label, core::num_threads(), convs.size() / s, rep.tokens / s, s, cpu, convs.size() / cpu);
  std::printf("%-40s %zu samples, %lld tokens, %lld trained, %zu masked out\n", "", convs.size(),
              static_cast<long long>(rep.tokens), static_cast<long long>(rep.trained_tokens), rep.masked_out);
}

void run_tokenize_only(const char* label, const std::vector<data::Conversation>& convs, const tokenizer::Tokenizer& tok,
                       data::TemplateStyle style) {
  std::vector<std::string> prompts;
  prompts.reserve(convs.size());
  for (const auto& c : convs) prompts.push_back(data::render_prompt(style, c));
  const bool add_bos = !data::template_renders_bos(style);
  core::Timer timer;
  const double cpu0 = cpu_seconds();
  size_t tokens = 0;
  for (const auto& p : prompts) tokens += tok.encode(p, add_bos).size();
  const double s = timer.seconds(), cpu = cpu_seconds() - cpu0;
  std::printf("%-40s threads  1  %7.0f samples/s %9.0f tokens/s (wall %.2f s, cpu %.2f s: encode only)\n", label,
              convs.size() / s, tokens / s, s, cpu);
}

}  // namespace

int main(int argc, char** argv) {
  const size_t n = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 50000;
  const auto shared = shared_dir();
  const auto data_path = shared / "data" / "dummy_conversation.json";
  const auto llama2 = shared / "models" / "llama2-tokenizer" / "tokenizer.model";
  const auto llama3 = shared / "models" / "llama3-tokenizer";
  if (!std::filesystem::exists(data_path) || !std::filesystem::exists(llama2) || !std::filesystem::exists(llama3)) {
    std::printf("bench_preprocess: skipped, needs %s (set ZEROLORA_SHARED_DIR)\n", shared.string().c_str());
    return 0;
  }
  const int all_threads = core::num_threads();
  std::printf("bench_preprocess: %zu samples, %s, %d threads available\n", n, cpu_model().c_str(), all_threads);
  const auto convs = repeated(data::read_conversations(data_path.string()), n);

  std::string model_bytes;
  {
    std::FILE* f = std::fopen(llama2.string().c_str(), "rb");
    char buf[1 << 16];
    size_t got;
    while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) model_bytes.append(buf, got);
    std::fclose(f);
  }
  for (bool legacy : {true, false}) {
    tokenizer::SentencePieceConfig config;
    config.legacy = legacy;
    tokenizer::SentencePieceTokenizer sp(model_bytes, config, llama2.string());
    const char* label = legacy ? "llama-2 SP legacy, vicuna_v1.1" : "llama-2 SP non-legacy, vicuna_v1.1";
    run(label, convs, sp, "vicuna_v1.1", 1);
    if (all_threads > 1) run(label, convs, sp, "vicuna_v1.1", all_threads);
    if (legacy) run_tokenize_only("llama-2 SP legacy, vicuna prompt", convs, sp, data::TemplateStyle::VicunaV11);
  }

  core::Timer load_timer;
  const auto bpe = tokenizer::BpeTokenizer::from_folder(llama3.string());
  std::printf("llama-3 tokenizer.json loaded in %.2f s\n", load_timer.seconds());
  run("llama-3 BPE, llama-3 template", convs, *bpe, "llama-3", 1);
  if (all_threads > 1) run("llama-3 BPE, llama-3 template", convs, *bpe, "llama-3", all_threads);
  run_tokenize_only("llama-3 BPE, llama-3 prompt", convs, *bpe, data::TemplateStyle::Llama3);
  return 0;
}
