#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "test_util.h"
#include "train/trainer_state.h"

using namespace zerolora::train;
using nlohmann::json;
using zerolora::test::TempDir;
using zerolora::test::write_file;

namespace {

TrainerState filled_state() {
  TrainerState s;
  s.epoch = 1.5;
  s.global_step = 95;
  s.max_steps = 189;
  s.logging_steps = 1;
  s.eval_steps = 100;
  s.save_steps = 200;
  s.train_batch_size = 2;
  s.num_train_epochs = 3;
  s.num_input_tokens_seen = 123456;
  s.total_flos = 1.25e15;
  s.log_history.push_back({{"loss", 1.4297}, {"grad_norm", 0.75}, {"learning_rate", 2e-5}, {"epoch", 0.02}, {"step", 1}});
  s.log_history.push_back({{"eval_loss", 1.1}, {"eval_runtime", 3.5}, {"epoch", 1.5}, {"step", 95}});
  s.best_metric = 1.1;
  s.best_model_checkpoint = "out/checkpoint-95";
  s.is_local_process_zero = false;
  s.is_world_process_zero = true;
  s.is_hyper_param_search = false;
  s.trial_name = "trial-1";
  s.trial_params = {{"lr", 2e-5}};
  s.stateful_callbacks = {{"TrainerControl", {{"args", {{"should_save", true}}}, {"attributes", json::object()}}}};
  s.zerolora = {{"data_position", {{"epoch", 1}, {"micro_batch", 31}}}, {"rng", "abc"}};
  return s;
}

std::string error_of_json(const std::string& text) {
  try {
    trainer_state_from_json(json::parse(text), "ckpt/trainer_state.json");
  } catch (const zerolora::core::Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace

TEST(TrainerState, SaveAndLoadRoundTrip) {
  TempDir dir;
  std::string path = (dir / "trainer_state.json").string();
  TrainerState s = filled_state();
  save_trainer_state(s, path);
  TrainerState r = load_trainer_state(path);
  EXPECT_EQ(r.epoch, 1.5);
  EXPECT_EQ(r.global_step, 95);
  EXPECT_EQ(r.max_steps, 189);
  EXPECT_EQ(r.logging_steps, 1);
  EXPECT_EQ(r.eval_steps, 100);
  EXPECT_EQ(r.save_steps, 200);
  EXPECT_EQ(r.train_batch_size, 2);
  EXPECT_EQ(r.num_train_epochs, 3);
  EXPECT_EQ(r.num_input_tokens_seen, 123456);
  EXPECT_EQ(r.total_flos, 1.25e15);
  ASSERT_EQ(r.log_history.size(), 2u);
  EXPECT_EQ(r.log_history[0]["loss"], 1.4297);
  EXPECT_EQ(r.log_history[1]["eval_loss"], 1.1);
  EXPECT_EQ(r.best_metric, 1.1);
  EXPECT_EQ(r.best_model_checkpoint, "out/checkpoint-95");
  EXPECT_FALSE(r.is_local_process_zero);
  EXPECT_TRUE(r.is_world_process_zero);
  EXPECT_EQ(r.trial_name, "trial-1");
  EXPECT_EQ(r.trial_params, s.trial_params);
  EXPECT_EQ(r.stateful_callbacks, s.stateful_callbacks);
  EXPECT_EQ(r.zerolora, s.zerolora);
  EXPECT_EQ(trainer_state_to_text(r), trainer_state_to_text(s));
  // our extras live beside the file, not in it
  EXPECT_EQ(json::parse(zerolora::test::read_file(dir / "zerolora_state.json")), s.zerolora);
  EXPECT_FALSE(json::parse(zerolora::test::read_file(path)).contains("zerolora"));
}

// HF's TrainerState.load_from_json is cls(**json.loads(text)): any key that is not a dataclass field is a
// TypeError. The file holds exactly the fields of transformers 4.41-4.50 (4.51+ only add best_global_step,
// which 4.44 would refuse and the newer ones default).
TEST(TrainerState, KeysAreExactlyHfTrainerStateFields) {
  const json j = trainer_state_to_json(filled_state());
  std::vector<std::string> keys;
  for (const auto& item : j.items()) keys.push_back(item.key());
  const std::vector<std::string> hf = {"best_metric", "best_model_checkpoint", "epoch", "eval_steps", "global_step",
                                       "is_hyper_param_search", "is_local_process_zero", "is_world_process_zero",
                                       "log_history", "logging_steps", "max_steps", "num_input_tokens_seen",
                                       "num_train_epochs", "save_steps", "stateful_callbacks", "total_flos",
                                       "train_batch_size", "trial_name", "trial_params"};
  EXPECT_EQ(keys, hf);
}

// Checkpoints written before zerolora_state.json carried the extras as a top-level "zerolora" key.
TEST(TrainerState, LegacyZeroloraKeyIsStillRead) {
  TempDir dir;
  write_file(dir / "trainer_state.json", R"({"global_step": 7, "zerolora": {"world_size": 2, "seed": 42}})");
  TrainerState s = load_trainer_state((dir / "trainer_state.json").string());
  EXPECT_EQ(s.global_step, 7);
  EXPECT_EQ(s.zerolora, json::parse(R"({"world_size": 2, "seed": 42})"));
  // the side file, when both exist, is the newer one
  write_file(dir / "zerolora_state.json", R"({"world_size": 4})");
  s = load_trainer_state((dir / "trainer_state.json").string());
  EXPECT_EQ(s.zerolora, json::parse(R"({"world_size": 4})"));
}

TEST(TrainerState, HfFolderWithoutSideFileLoads) {
  TempDir dir;
  write_file(dir / "trainer_state.json", R"({"global_step": 3, "best_global_step": null})");
  TrainerState s = load_trainer_state((dir / "trainer_state.json").string());
  EXPECT_EQ(s.global_step, 3);
  EXPECT_TRUE(s.zerolora.is_object() && s.zerolora.empty());
}

TEST(TrainerState, BrokenSideFileIsNamed) {
  TempDir dir;
  write_file(dir / "trainer_state.json", R"({"global_step": 3})");
  for (const char* text : {"{\"world_size\": ", "[1, 2]"}) {
    write_file(dir / "zerolora_state.json", text);
    try {
      load_trainer_state((dir / "trainer_state.json").string());
      ADD_FAILURE() << "expected an error for " << text;
    } catch (const zerolora::core::Error& e) {
      EXPECT_NE(std::string(e.what()).find("zerolora_state.json"), std::string::npos) << e.what();
    }
  }
}

TEST(TrainerState, TrainerControlAsHfWritesIt) {
  const json c = trainer_control_callbacks(true, false);
  EXPECT_EQ(c, json::parse(R"({"TrainerControl": {"args": {"should_epoch_stop": false, "should_evaluate": false,
      "should_log": false, "should_save": true, "should_training_stop": false}, "attributes": {}}})"));
  EXPECT_EQ(trainer_control_callbacks(false, true)["TrainerControl"]["args"]["should_training_stop"], true);
  EXPECT_EQ(trainer_control_callbacks(false, true)["TrainerControl"]["args"]["should_save"], false);
}

TEST(TrainerState, TextIsIndentedWithSortedKeys) {
  std::string text = trainer_state_to_text(filled_state());
  EXPECT_EQ(text.rfind("{\n  \"best_metric\": 1.1,\n  \"best_model_checkpoint\": ", 0), 0u) << text.substr(0, 80);
  EXPECT_EQ(text.substr(text.size() - 2), "}\n");
  const char* keys_in_order[] = {"best_metric", "best_model_checkpoint", "epoch", "eval_steps", "global_step",
                                 "is_hyper_param_search", "is_local_process_zero", "is_world_process_zero",
                                 "log_history", "logging_steps", "max_steps", "num_input_tokens_seen",
                                 "num_train_epochs", "save_steps", "stateful_callbacks", "total_flos",
                                 "train_batch_size", "trial_name", "trial_params"};
  size_t last = 0;
  for (const char* key : keys_in_order) {
    size_t at = text.find("\n  \"" + std::string(key) + "\": ");
    ASSERT_NE(at, std::string::npos) << key;
    EXPECT_GT(at, last) << key;
    last = at;
  }
  // nested objects are sorted too (log entries: epoch, grad_norm, learning_rate, loss, step)
  EXPECT_LT(text.find("\"grad_norm\""), text.find("\"learning_rate\""));
  EXPECT_NE(text.find("\n      \"epoch\": 0.02,"), std::string::npos);  // 6 spaces: indent 2 at depth 3
}

TEST(TrainerState, DefaultsWriteNulls) {
  json j = trainer_state_to_json(TrainerState{});
  EXPECT_TRUE(j["best_metric"].is_null());
  EXPECT_TRUE(j["best_model_checkpoint"].is_null());
  EXPECT_TRUE(j["trial_name"].is_null());
  EXPECT_TRUE(j["trial_params"].is_null());
  EXPECT_TRUE(j["log_history"].is_array());
  EXPECT_FALSE(j.contains("zerolora"));
}

// What transformers 4.35 wrote (no num_input_tokens_seen, train_batch_size, stateful_callbacks) plus a key
// from a newer version: both directions must load.
TEST(TrainerState, ReadsOlderAndNewerHfFiles) {
  TempDir dir;
  write_file(dir / "trainer_state.json", R"({
  "best_metric": null,
  "best_model_checkpoint": null,
  "best_global_step": null,
  "epoch": 0.38,
  "eval_steps": 500,
  "global_step": 24,
  "is_hyper_param_search": false,
  "is_local_process_zero": true,
  "is_world_process_zero": true,
  "log_history": [
    {"epoch": 0.02, "learning_rate": 0.0, "loss": 1.4297, "step": 1},
    {"epoch": 0.03, "learning_rate": 3.3333333333333333e-06, "loss": 1.3975, "step": 2}
  ],
  "logging_steps": 1,
  "max_steps": 189,
  "num_train_epochs": 3,
  "save_steps": 12,
  "total_flos": 1.2345e+16,
  "trial_name": null,
  "trial_params": null
}
)");
  TrainerState s = load_trainer_state((dir / "trainer_state.json").string());
  EXPECT_EQ(s.global_step, 24);
  EXPECT_EQ(s.epoch, 0.38);
  EXPECT_EQ(s.max_steps, 189);
  EXPECT_EQ(s.save_steps, 12);
  EXPECT_EQ(s.total_flos, 1.2345e16);
  EXPECT_EQ(s.log_history.size(), 2u);
  EXPECT_FALSE(s.best_metric.has_value());
  EXPECT_EQ(s.num_input_tokens_seen, 0);  // missing: default
  EXPECT_EQ(s.train_batch_size, 0);
  EXPECT_TRUE(s.zerolora.is_object() && s.zerolora.empty());
}

TEST(TrainerState, WrongTypesNameTheKey) {
  std::string msg = error_of_json(R"({"global_step": "24"})");
  EXPECT_NE(msg.find("ckpt/trainer_state.json:global_step: expected an integer, got string"), std::string::npos) << msg;
  msg = error_of_json(R"({"global_step": 2.5})");
  EXPECT_NE(msg.find(":global_step: expected an integer"), std::string::npos) << msg;
  EXPECT_EQ(trainer_state_from_json(json::parse(R"({"global_step": 24.0})"), "x").global_step, 24);
  // an integral float past int64's range (a fuzz finding: the cast was undefined behaviour)
  msg = error_of_json(R"({"logging_steps": 5E81})");
  EXPECT_NE(msg.find(":logging_steps: expected an integer"), std::string::npos) << msg;
  msg = error_of_json(R"({"log_history": {"loss": 1}})");
  EXPECT_NE(msg.find(":log_history: expected a list"), std::string::npos) << msg;
  msg = error_of_json(R"({"log_history": [{"loss": 1}, 3]})");
  EXPECT_NE(msg.find(":log_history[1]: expected an object"), std::string::npos) << msg;
  msg = error_of_json(R"({"is_world_process_zero": "yes"})");
  EXPECT_NE(msg.find(":is_world_process_zero: expected true or false"), std::string::npos) << msg;
  msg = error_of_json(R"({"zerolora": [1, 2]})");
  EXPECT_NE(msg.find(":zerolora: expected an object"), std::string::npos) << msg;
  msg = error_of_json("[1, 2]");
  EXPECT_NE(msg.find("expected a JSON object"), std::string::npos) << msg;
}

TEST(TrainerState, UnreadableFiles) {
  TempDir dir;
  EXPECT_THROW(load_trainer_state((dir / "missing.json").string()), zerolora::core::Error);
  write_file(dir / "broken.json", "{\"global_step\": 3,");
  try {
    load_trainer_state((dir / "broken.json").string());
    FAIL() << "expected an error";
  } catch (const zerolora::core::Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not valid JSON"), std::string::npos) << e.what();
  }
}
