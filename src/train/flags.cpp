#include "train/flags.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>

namespace zerolora::train {

// ---------------------------------------------------------------------------------------------
// Value syntax

std::string lower_ascii(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::optional<bool> bool_from_text(const std::string& text) {
  // transformers.hf_argparser.string_to_bool
  static const std::set<std::string> yes = {"yes", "true", "t", "y", "1"};
  static const std::set<std::string> no = {"no", "false", "f", "n", "0"};
  std::string t = lower_ascii(text);
  if (yes.count(t)) return true;
  if (no.count(t)) return false;
  return std::nullopt;
}

bool parse_bool(const std::string& flag, const std::string& text) {
  auto value = bool_from_text(text);
  if (!value)
    throw FlagError("--" + flag, "'" + text + "' is not a bool", "write True or False (or a bare --" + flag + ")");
  return *value;
}

int64_t parse_int(const std::string& flag, const std::string& text) {
  int64_t value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, err] = std::from_chars(text.data(), end, value);
  if (text.empty() || err != std::errc() || ptr != end)
    throw FlagError("--" + flag, "'" + text + "' is not an integer", "write a whole number, e.g. --" + flag + " 8");
  return value;
}

uint64_t parse_uint(const std::string& flag, const std::string& text) {
  uint64_t value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, err] = std::from_chars(text.data(), end, value);
  if (text.empty() || err != std::errc() || ptr != end)
    throw FlagError("--" + flag, "'" + text + "' is not a whole number >= 0",
                    "write a whole number, e.g. --" + flag + " 42");
  return value;
}

double parse_float(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  double value = std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(value))
    throw FlagError("--" + flag, "'" + text + "' is not a number", "write a number, e.g. --" + flag + " 2e-5");
  return value;
}

std::string show_bool(bool b) { return b ? "True" : "False"; }

std::string show_number(double x) {
  char buf[64];
  auto [ptr, err] = std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, ptr);
}

std::string show_list(const std::vector<std::string>& items) {
  std::string s;
  for (const auto& item : items) s += (s.empty() ? "" : " ") + item;
  return s;
}

// ---------------------------------------------------------------------------------------------
// Bound flags

namespace {

Flag make_flag(const std::string& name, Arity arity, const std::string& hint, const std::string& help,
               std::function<void(const FlagValues&)> set, const std::string& shown) {
  Flag f;
  f.name = name, f.arity = arity, f.value_hint = hint, f.help = help, f.set = std::move(set), f.shown_default = shown;
  return f;
}

}  // namespace

Flag bool_flag(const std::string& name, bool& var, const std::string& help) {
  return make_flag(name, Arity::OptionalValue, "BOOL", help,
                   [&var, name](const FlagValues& v) { var = v.empty() ? true : parse_bool(name, v.front()); },
                   show_bool(var));
}

Flag int_flag(const std::string& name, int64_t& var, const std::string& help) {
  return make_flag(name, Arity::One, "INT", help,
                   [&var, name](const FlagValues& v) { var = parse_int(name, v.front()); }, std::to_string(var));
}

Flag uint_flag(const std::string& name, uint64_t& var, const std::string& help) {
  return make_flag(name, Arity::One, "INT", help,
                   [&var, name](const FlagValues& v) { var = parse_uint(name, v.front()); }, std::to_string(var));
}

Flag float_flag(const std::string& name, double& var, const std::string& help) {
  return make_flag(name, Arity::One, "FLOAT", help,
                   [&var, name](const FlagValues& v) { var = parse_float(name, v.front()); }, show_number(var));
}

Flag string_flag(const std::string& name, std::string& var, const std::string& hint, const std::string& help) {
  return make_flag(name, Arity::One, hint, help, [&var](const FlagValues& v) { var = v.front(); },
                   var.empty() ? std::string("\"\"") : var);
}

Flag list_flag(const std::string& name, std::vector<std::string>& var, const std::string& hint,
               const std::string& help) {
  return make_flag(name, Arity::Many, hint, help, [&var](const FlagValues& v) { var = v; }, show_list(var));
}

Flag choice_flag(const std::string& name, std::string& var, const std::vector<std::string>& choices,
                 const std::string& help) {
  std::vector<std::pair<std::string, std::string>> pairs;
  for (const auto& c : choices) pairs.push_back({c, c});
  return choice_flag<std::string>(name, var, pairs, help);
}

// ---------------------------------------------------------------------------------------------
// Shared definitions

Flag model_name_or_path_flag(std::string& dir) {
  return string_flag("model_name_or_path", dir, "DIR", "HF model folder: config.json, *.safetensors, tokenizer")
      .mark_required("./llama-7b");
}

Flag adapter_flag(std::string& dir) {
  return string_flag("adapter", dir, "DIR",
                     "PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors), applied unmerged; "
                     "\"\" = the base model alone");
}

Flag model_max_length_flag(int64_t& tokens) {
  Flag f = int_flag("model_max_length", tokens, "tokens per sample: longer ones are truncated, shorter ones padded");
  f.set = [&tokens](const FlagValues& v) {
    tokens = parse_int("model_max_length", v.front());
    if (tokens < 2)
      throw FlagError("--model_max_length", v.front() + " is out of range: must be >= 2 (one input token and one "
                      "target)", "pass a value that is >= 2 (one input token and one target)");
  };
  return f;
}

Flag num_threads_flag(int64_t& threads) {
  Flag f = int_flag("num_threads", threads, "CPU threads per rank, 0 = OMP_NUM_THREADS if set, else the cores this rank may run on");
  f.set = [&threads](const FlagValues& v) {
    threads = parse_int("num_threads", v.front());
    if (threads < 0)
      throw FlagError("--num_threads", v.front() + " is out of range: must be >= 0 (0 = the default)",
                      "pass a value that is >= 0 (0 = the default)");
  };
  return f;
}

Flag bf16_flag(bool& on) {
  return bool_flag("bf16", on, "bf16 frozen weights and GEMM inputs, fp32 accumulation");
}

Flag conv_template_flag(std::string& name) {
  return string_flag("conv_template", name, "NAME",
                     "conversation template: vicuna_v1.1, llama-2, llama-3, chatml or mistral");
}

Flag seed_flag(int64_t& seed) { return int_flag("seed", seed, "random seed"); }
Flag seed_flag(uint64_t& seed) { return uint_flag("seed", seed, "random seed"); }

Flag lora_r_flag(int64_t& r) { return int_flag("lora_r", r, "LoRA rank r"); }
Flag lora_alpha_flag(int64_t& alpha) {
  return int_flag("lora_alpha", alpha, "LoRA alpha (scaling = alpha / r; alpha / sqrt(r) with rsLoRA)");
}
Flag lora_dropout_flag(double& p) { return float_flag("lora_dropout", p, "dropout on the LoRA input, in [0, 1)"); }

// ---------------------------------------------------------------------------------------------
// FlagSet

FlagSet::FlagSet(std::string command, std::string header) : command_(std::move(command)), header_(std::move(header)) {}

Flag& FlagSet::add(Flag flag) {
  flags_.push_back(std::move(flag));
  return flags_.back();
}

Flag& FlagSet::flag(const std::string& name) {
  for (auto& f : flags_)
    if (f.name == name) return f;
  throw core::Error(command_, "declares no flag --" + name);
}

void FlagSet::accept_positional_as(const std::string& flag_name) { positional_flag_ = flag_name; }

const Flag* FlagSet::find(const std::string& name, bool* deprecated) const {
  *deprecated = false;
  for (const auto& flag : flags_)
    if (flag.name == name || (!flag.alias.empty() && flag.alias == name)) return &flag;
  for (const auto& flag : flags_)
    if (!flag.deprecated_alias.empty() && flag.deprecated_alias == name) return *deprecated = true, &flag;
  return nullptr;
}

namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

size_t common_prefix_length(const std::string& a, const std::string& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
  return n;
}

bool is_flag_token(const std::string& token) { return token.size() > 2 && token.rfind("--", 0) == 0; }

}  // namespace

FlagError FlagSet::unknown_flag_error(const std::string& name) const {
  // Names people reach for that edit distance would not lead to the right flag (FastChat#2943).
  static const std::map<std::string, std::string> known_misnames = {
      {"evaluation_data_file", "eval_data_path"}, {"eval_data_file", "eval_data_path"},
      {"validation_data_path", "eval_data_path"}, {"train_data_path", "data_path"},
      {"base", "model_name_or_path"},            {"model", "model_name_or_path"},
      {"model_dir", "model_name_or_path"},       {"lora", "adapter"},
      {"adapter_path", "adapter"},               {"adapter_dir", "adapter"}};
  bool unused = false;
  std::string best;
  size_t best_distance = SIZE_MAX;
  int64_t best_score = INT64_MAX;
  for (const auto& flag : flags_)
    for (const auto& candidate : {flag.name, flag.alias}) {
      if (candidate.empty()) continue;
      // edit distance first, a longer shared prefix breaks near-ties (--lora_rank: --lora_r, not --local_rank)
      size_t d = edit_distance(name, candidate);
      int64_t score = 2 * static_cast<int64_t>(d) - static_cast<int64_t>(common_prefix_length(name, candidate));
      if (score < best_score) best_score = score, best_distance = d, best = candidate;
    }
  std::string what = "unknown flag --" + name;
  if (auto it = known_misnames.find(name); it != known_misnames.end() && find(it->second, &unused))
    what += "; did you mean --" + it->second + "?";
  else if (!best.empty() && best_distance <= std::max<size_t>(3, name.size() / 2))
    what += "; did you mean --" + best + "?";
  return FlagError(command_, what, "see " + command_ + " --help for the flags");
}

bool FlagSet::parse(const std::vector<std::string>& argv) {
  for (const auto& token : argv)
    if (token == "--help" || token == "-h") return false;
  std::string previous_flag;
  for (size_t i = 0; i < argv.size();) {
    const std::string& token = argv[i];
    if (!is_flag_token(token)) {
      bool unused = false;
      const Flag* target = positional_flag_.empty() ? nullptr : find(positional_flag_, &unused);
      if (target && !given(target->name) && token.rfind("-", 0) != 0) {
        notes_.push_back("a positional model folder is the older form; write --" + target->name + " " + token);
        target->set({token});
        given_.insert(target->name);
        previous_flag.clear();
        ++i;
        continue;
      }
      std::string after = previous_flag.empty() ? "" : " after --" + previous_flag;
      throw FlagError(command_, "unexpected argument '" + token + "'" + after +
                      (previous_flag.empty() ? "" : " (that flag takes one value)"),
                      "flags are written --name value; list values only follow list flags such as "
                      "--lora_target_modules");
    }
    std::string name = token.substr(2);
    std::optional<std::string> inline_value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    std::replace(name.begin(), name.end(), '-', '_');  // HfArgumentParser accepts --learning-rate too
    bool deprecated = false;
    const Flag* flag = find(name, &deprecated);
    if (!flag) throw unknown_flag_error(name);
    if (deprecated)
      notes_.push_back("--" + name + " is the older name of --" + flag->name + "; write --" + flag->name);
    ++i;
    FlagValues values;
    if (inline_value) {
      values.push_back(*inline_value);
    } else {
      while (i < argv.size() && !is_flag_token(argv[i])) {
        values.push_back(argv[i++]);
        if (flag->arity != Arity::Many) break;
      }
      if (values.empty() && flag->arity != Arity::OptionalValue)
        throw FlagError("--" + flag->name, "needs a value", "write --" + flag->name + " " + flag->value_hint);
    }
    flag->set(values);
    given_.insert(flag->name);
    previous_flag = flag->name;
  }
  for (const auto& flag : flags_)
    if (flag.required && !given(flag.name))
      throw FlagError("--" + flag.name, "is required",
                      "pass --" + flag.name + " " + (flag.required_example.empty() ? flag.value_hint : flag.required_example));
  return true;
}

void FlagSet::print_notes() const {
  for (const auto& n : notes_) std::fprintf(stderr, "note: %s\n", n.c_str());
}

namespace {

// "  --flag HINT" then the help text from column kHelpColumn, wrapped at kHelpWidth characters; a flag too
// long for its column gets the text on the next line.
std::string wrap_help_line(const std::string& left, const std::string& text) {
  constexpr size_t kHelpColumn = 38, kHelpWidth = 110;
  std::string out = left;
  size_t column = left.size();
  if (column + 2 > kHelpColumn) out += "\n", column = 0;
  std::istringstream words(text);
  std::string word;
  bool line_empty = true;
  while (words >> word) {
    if (!line_empty && column + 1 + word.size() > kHelpWidth) out += "\n", column = 0, line_empty = true;
    if (line_empty) out += std::string(kHelpColumn - column, ' '), column = kHelpColumn;
    else out += " ", ++column;
    std::replace(word.begin(), word.end(), '\x1f', ' ');
    out += word;
    column += word.size();
    line_empty = false;
  }
  return out + "\n";
}

}  // namespace

std::string FlagSet::help() const {
  std::vector<std::string> groups = group_order_;
  for (const auto& flag : flags_) {
    const std::string g = flag.group.empty() ? "flags" : flag.group;
    if (std::find(groups.begin(), groups.end(), g) == groups.end()) groups.push_back(g);
  }
  std::ostringstream out;
  out << header_ << "\n";
  for (const auto& group : groups) {
    bool any = false;
    for (const auto& flag : flags_) {
      if ((flag.group.empty() ? "flags" : flag.group) != group) continue;
      if (!any) out << "\n" << group << ":\n", any = true;
      std::string left = "  --" + flag.name + " " + flag.value_hint;
      if (!flag.alias.empty()) left += " (or --" + flag.alias + ")";
      std::string text = flag.help;
      // \x1f keeps "[default: X]" on one line when wrapping
      if (flag.required) text += " [required]";
      else if (!flag.shown_default.empty()) text += " [default:\x1f" + flag.shown_default + "]";
      out << wrap_help_line(left, text);
    }
  }
  return out.str();
}

int launcher_rank() {
  for (const char* var : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"})
    if (const char* v = std::getenv(var); v && *v) return std::atoi(v);
  return 0;
}

}  // namespace zerolora::train
