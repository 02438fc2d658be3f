#include "train/trainer_state.h"

#include <cmath>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "io/checkpoint_dir.h"

namespace zerolora::train {

using nlohmann::json;

namespace {

json optional_to_json(const std::optional<double>& v) { return v ? json(*v) : json(nullptr); }
json optional_to_json(const std::optional<std::string>& v) { return v ? json(*v) : json(nullptr); }

// Reads j[key] into out when present and not null; a wrong type names the file and key.
class FieldReader {
 public:
  FieldReader(const json& j, const std::string& where) : j_(j), where_(where) {}

  void integer(const char* key, int64_t& out) const {
    if (const json* v = find(key)) {
      // HF writes integers, but a float with an integral value (e.g. 3.0 epochs) is accepted as well
      // (the range check comes before the cast: converting an out-of-range double is undefined)
      if (v->is_number_integer()) {
        out = v->get<int64_t>();
      } else if (v->is_number_float() && std::nearbyint(v->get<double>()) == v->get<double>() &&
                 std::abs(v->get<double>()) < 9e18) {
        out = static_cast<int64_t>(v->get<double>());
      } else {
        fail(key, "an integer", *v);
      }
    }
  }
  void number(const char* key, double& out) const {
    if (const json* v = find(key)) {
      if (!v->is_number()) fail(key, "a number", *v);
      out = v->get<double>();
    }
  }
  void number(const char* key, std::optional<double>& out) const {
    if (const json* v = find(key)) {
      if (!v->is_number()) fail(key, "a number or null", *v);
      out = v->get<double>();
    }
  }
  void boolean(const char* key, bool& out) const {
    if (const json* v = find(key)) {
      if (!v->is_boolean()) fail(key, "true or false", *v);
      out = v->get<bool>();
    }
  }
  void text(const char* key, std::optional<std::string>& out) const {
    if (const json* v = find(key)) {
      if (!v->is_string()) fail(key, "a string or null", *v);
      out = v->get<std::string>();
    }
  }
  void any(const char* key, json& out) const {
    if (j_.contains(key)) out = j_.at(key);
  }
  void object(const char* key, json& out) const {
    if (const json* v = find(key)) {
      if (!v->is_object()) fail(key, "an object", *v);
      out = *v;
    }
  }
  [[noreturn]] void fail(const std::string& key, const std::string& expected, const json& got) const {
    throw core::Error(where_ + ":" + key, "expected " + expected + ", got " + std::string(got.type_name()),
                      "repair or delete the file (it is rewritten at the next save)");
  }

 private:
  const json* find(const char* key) const {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return nullptr;
    return &*it;
  }
  const json& j_;
  const std::string& where_;
};

}  // namespace

json trainer_state_to_json(const TrainerState& s) {
  json j = json::object();  // nlohmann's default object is a std::map: keys come out sorted
  j["epoch"] = s.epoch;
  j["global_step"] = s.global_step;
  j["max_steps"] = s.max_steps;
  j["logging_steps"] = s.logging_steps;
  j["eval_steps"] = s.eval_steps;
  j["save_steps"] = s.save_steps;
  j["train_batch_size"] = s.train_batch_size;
  j["num_train_epochs"] = s.num_train_epochs;
  j["num_input_tokens_seen"] = s.num_input_tokens_seen;
  j["total_flos"] = s.total_flos;
  j["log_history"] = json::array();
  for (const auto& entry : s.log_history) j["log_history"].push_back(entry);
  j["best_metric"] = optional_to_json(s.best_metric);
  j["best_model_checkpoint"] = optional_to_json(s.best_model_checkpoint);
  j["is_local_process_zero"] = s.is_local_process_zero;
  j["is_world_process_zero"] = s.is_world_process_zero;
  j["is_hyper_param_search"] = s.is_hyper_param_search;
  j["trial_name"] = optional_to_json(s.trial_name);
  j["trial_params"] = s.trial_params;
  j["stateful_callbacks"] = s.stateful_callbacks;
  return j;
}

TrainerState trainer_state_from_json(const json& j, const std::string& where) {
  if (!j.is_object())
    throw core::Error(where, "expected a JSON object, got " + std::string(j.type_name()),
                      "repair or delete the file (it is rewritten at the next save)");
  TrainerState s;
  FieldReader r(j, where);
  r.number("epoch", s.epoch);
  r.integer("global_step", s.global_step);
  r.integer("max_steps", s.max_steps);
  r.integer("logging_steps", s.logging_steps);
  r.integer("eval_steps", s.eval_steps);
  r.integer("save_steps", s.save_steps);
  r.integer("train_batch_size", s.train_batch_size);
  r.integer("num_train_epochs", s.num_train_epochs);
  r.integer("num_input_tokens_seen", s.num_input_tokens_seen);
  r.number("total_flos", s.total_flos);
  json history = json::array();
  r.any("log_history", history);
  if (!history.is_null() && !history.is_array()) r.fail("log_history", "a list", history);
  if (history.is_array()) {
    for (size_t i = 0; i < history.size(); ++i) {
      if (!history[i].is_object())
        r.fail("log_history[" + std::to_string(i) + "]", "an object", history[i]);
      s.log_history.push_back(history[i]);
    }
  }
  r.number("best_metric", s.best_metric);
  r.text("best_model_checkpoint", s.best_model_checkpoint);
  r.boolean("is_local_process_zero", s.is_local_process_zero);
  r.boolean("is_world_process_zero", s.is_world_process_zero);
  r.boolean("is_hyper_param_search", s.is_hyper_param_search);
  r.text("trial_name", s.trial_name);
  r.any("trial_params", s.trial_params);
  r.object("stateful_callbacks", s.stateful_callbacks);
  r.object("zerolora", s.zerolora);  // legacy: zerolora_state.json since; load_trainer_state prefers that file
  return s;
}

json trainer_control_callbacks(bool should_save, bool should_training_stop) {
  json args = {{"should_epoch_stop", false}, {"should_evaluate", false}, {"should_log", false},
               {"should_save", should_save}, {"should_training_stop", should_training_stop}};
  return {{"TrainerControl", {{"args", args}, {"attributes", json::object()}}}};
}

std::string trainer_state_to_text(const TrainerState& state) {
  return trainer_state_to_json(state).dump(2) + "\n";
}

std::string zerolora_state_path(const std::string& trainer_state_path) {
  return (std::filesystem::path(trainer_state_path).parent_path() / kZeroloraStateFile).string();
}

void save_trainer_state(const TrainerState& state, const std::string& path) {
  io::write_file_synced(zerolora_state_path(path), state.zerolora.dump(2) + "\n");
  io::write_file_synced(path, trainer_state_to_text(state));
}

namespace {

json parse_json_file(const std::string& path, std::ifstream& file) {
  std::stringstream text;
  text << file.rdbuf();
  try {
    return json::parse(text.str());
  } catch (const json::exception& e) {  // parse errors and numbers out of range
    throw core::Error(path, std::string("is not valid JSON: ") + e.what(),
                      "repair it, or resume from an earlier checkpoint-<step>");
  }
}

}  // namespace

TrainerState load_trainer_state(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file)
    throw core::Error(path, "cannot open trainer_state.json",
                      "check the checkpoint folder; a complete checkpoint always has one");
  TrainerState s = trainer_state_from_json(parse_json_file(path, file), path);
  const std::string extras_path = zerolora_state_path(path);
  std::ifstream extras(extras_path, std::ios::binary);
  if (extras) {
    json j = parse_json_file(extras_path, extras);
    if (!j.is_object())
      throw core::Error(extras_path, "expected a JSON object, got " + std::string(j.type_name()),
                        "repair or delete the file (it is rewritten at the next save)");
    s.zerolora = std::move(j);
  }
  return s;
}

}  // namespace zerolora::train
