// One flag system for every zerolora command and benchmark: HF-style flags as FastChat's HfArgumentParser reads
// them, declared once with a type, a value hint, a help line and the default shown in --help.
//
//   --flag value | --flag=value     bools: True/False, yes/no, true/false, 1/0 (also t/f/y/n); a bare --flag
//                                   means True; lists take space-separated values (--lora_target_modules q_proj
//                                   v_proj); dashes in a name work like underscores (--learning-rate).
//   --help | -h                     the command's flags, grouped, with their defaults.
//
// A command builds a FlagSet, adds flags bound to its own variables (the shared definitions below for the
// flags several commands take, so a name means the same everywhere), and parses. Every problem is a FlagError:
// one line naming the flag, the problem and the fix (an unknown flag gets a did-you-mean).
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"

namespace zerolora::train {

// A command-line problem. The command-line front end prints it once per job (rank 0 of an mpirun launch).
class FlagError : public core::Error {
 public:
  using core::Error::Error;
};

enum class Arity { OptionalValue, One, Many };  // OptionalValue: bools, `--flag` alone means True
using FlagValues = std::vector<std::string>;

struct Flag {
  std::string name;        // without the leading --
  Arity arity = Arity::One;
  std::string value_hint;  // INT, FLOAT, DIR, {a,b,c}, ...
  std::string help;
  std::function<void(const FlagValues&)> set;
  std::string shown_default;  // "[default: X]" in --help; "" shows none
  bool required = false;      // "[required]" in --help; FlagSet::parse refuses a command line without it
  std::string required_example;  // the fix's example value ("pass --model_name_or_path ./llama-7b")
  std::string alias;             // a second name, listed in --help ("(or --eval_strategy)")
  std::string deprecated_alias;  // accepted with a note, not listed (merge's --base)
  std::string group;             // --help section; "" = "flags"

  Flag& with_help(std::string text) { help = std::move(text); return *this; }
  Flag& with_default_shown(std::string text) { shown_default = std::move(text); return *this; }
  Flag& in_group(std::string g) { group = std::move(g); return *this; }
  Flag& with_alias(std::string a) { alias = std::move(a); return *this; }
  Flag& with_deprecated_alias(std::string a) { deprecated_alias = std::move(a); return *this; }
  Flag& mark_required(std::string example = "") {
    required = true, required_example = std::move(example), shown_default.clear();
    return *this;
  }
};

// ---- value syntax (HfArgumentParser's)
std::optional<bool> bool_from_text(const std::string& text);
bool parse_bool(const std::string& flag, const std::string& text);
int64_t parse_int(const std::string& flag, const std::string& text);
uint64_t parse_uint(const std::string& flag, const std::string& text);
double parse_float(const std::string& flag, const std::string& text);
std::string show_bool(bool b);
std::string show_number(double x);  // shortest round trip: 5e-05, 0.999
std::string show_list(const std::vector<std::string>& items);

// ---- flags bound to a variable; the default shown is the variable's value now
Flag bool_flag(const std::string& name, bool& var, const std::string& help);
Flag int_flag(const std::string& name, int64_t& var, const std::string& help);
Flag uint_flag(const std::string& name, uint64_t& var, const std::string& help);
Flag float_flag(const std::string& name, double& var, const std::string& help);
Flag string_flag(const std::string& name, std::string& var, const std::string& hint, const std::string& help);
Flag list_flag(const std::string& name, std::vector<std::string>& var, const std::string& hint,
               const std::string& help);
// One of fixed words (case-insensitive, as HF's enums); any other is an error listing them.
template <class E>
Flag choice_flag(const std::string& name, E& var, std::vector<std::pair<std::string, E>> choices,
                 const std::string& help);
Flag choice_flag(const std::string& name, std::string& var, const std::vector<std::string>& choices,
                 const std::string& help);

// ---- the shared definitions: one name, value syntax and meaning for every command that takes them
Flag model_name_or_path_flag(std::string& dir);  // required
Flag adapter_flag(std::string& dir);             // a PEFT adapter folder, optional
Flag model_max_length_flag(int64_t& tokens);
Flag num_threads_flag(int64_t& threads);
Flag bf16_flag(bool& on);
Flag conv_template_flag(std::string& name);
Flag seed_flag(int64_t& seed);
Flag seed_flag(uint64_t& seed);
Flag lora_r_flag(int64_t& r);
Flag lora_alpha_flag(int64_t& alpha);
Flag lora_dropout_flag(double& p);

class FlagSet {
 public:
  // command: "zerolora generate" (errors name it); header: the --help text above the flags (usage line(s)
  // and a sentence), without a trailing newline.
  FlagSet(std::string command, std::string header);

  Flag& add(Flag flag);
  // The flag added under this name (to adjust its help, default or requirement for this command).
  Flag& flag(const std::string& name);
  // A positional model folder, the older form of `zerolora generate DIR`: taken as --<flag_name> with a note.
  void accept_positional_as(const std::string& flag_name);
  // Groups in --help in this order (a flag's group not listed here comes after them, in order of first use).
  void set_group_order(std::vector<std::string> titles) { group_order_ = std::move(titles); }

  // Parses the arguments after the command name. Returns false when --help / -h was given (nothing else is
  // parsed; print help()). Throws FlagError.
  bool parse(const std::vector<std::string>& argv);
  bool parse(int argc, char** argv) { return parse(std::vector<std::string>(argv + 1, argv + argc)); }

  // Whether the flag (by its name) was on the command line.
  bool given(const std::string& name) const { return given_.count(name) > 0; }
  const std::set<std::string>& given_flags() const { return given_; }
  // Deprecated spellings that were used, one sentence each; the command prints them ("note: ...").
  const std::vector<std::string>& notes() const { return notes_; }
  void print_notes() const;  // each note on stderr as "note: ..."

  std::string help() const;
  const std::vector<Flag>& flags() const { return flags_; }
  const std::string& command() const { return command_; }

 private:
  const Flag* find(const std::string& name, bool* deprecated) const;
  FlagError unknown_flag_error(const std::string& name) const;

  std::string command_, header_;
  std::vector<Flag> flags_;
  std::vector<std::string> group_order_;
  std::string positional_flag_;
  std::set<std::string> given_;
  std::vector<std::string> notes_;
};

// The launcher's rank of this process before MPI is initialised (OMPI_COMM_WORLD_RANK, PMIX_RANK, PMI_RANK);
// 0 outside mpirun. A flag error is printed by rank 0 only, so an mpirun job shows it once.
int launcher_rank();

// --- template definitions

std::string lower_ascii(std::string s);

template <class E>
Flag choice_flag(const std::string& name, E& var, std::vector<std::pair<std::string, E>> choices,
                 const std::string& help) {
  std::string hint, shown = "?";
  for (const auto& [text, value] : choices) {
    hint += (hint.empty() ? "{" : ",") + text;
    if (var == value) shown = text;
  }
  hint += "}";
  Flag f;
  f.name = name, f.value_hint = hint, f.help = help, f.shown_default = shown;
  f.set = [&var, name, hint, choices](const FlagValues& v) {
    for (const auto& [text, value] : choices)
      if (lower_ascii(v.front()) == text) {
        var = value;
        return;
      }
    throw FlagError("--" + name, "'" + v.front() + "' is not supported", "use one of " + hint);
  };
  return f;
}

}  // namespace zerolora::train
