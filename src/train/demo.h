// `zerolora demo`: the README's main job. With no arguments it makes everything it needs itself — a
// small random Llama model, a byte-level BPE tokenizer trained on a synthetic conversation set, the
// set as FastChat JSON — then fine-tunes LoRA on it, shows the loss falling, writes the adapter and
// generates with it. --model_name_or_path / --data_path point it at real files instead.
#pragma once
#include <string>
#include <vector>

namespace zerolora::train {

// Deterministic synthetic ShareGPT rows: short questions about a small invented world (colours,
// numbers, capitals) whose answers follow from the question, so a model can learn them.
std::string synthetic_conversations_json(size_t n, uint64_t seed);

// Writes a small random Llama model + a trained BPE tokenizer.json into dir, from the given corpus.
void write_demo_model(const std::string& dir, const std::vector<std::string>& corpus, uint64_t seed);

int run_demo(const std::vector<std::string>& argv);

}  // namespace zerolora::train
