// What a run shows while it trains: a live bar on a terminal; without one (a log file; any rank under mpirun,
// whose stdout is mpirun's pseudo-terminal even when mpirun writes to a file) a plain
// progress line at a time interval instead (every 30 s; ZEROLORA_PROGRESS_SECONDS=N changes it, 0 = every
// step), never the bar's control codes; a line per logging step either way; every log entry appended to a
// JSON-lines metrics file; loss and learning-rate curves as an SVG.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/tensorboard.h"

namespace zerolora::train {

class Progress {
 public:
  // quiet: not rank 0 (prints nothing). metrics_path "" = no metrics file. tensorboard_dir: where every log
  // entry's scalars also go as TensorBoard events (HF's TensorBoardCallback); "" = none.
  Progress(bool quiet, int64_t total_steps, const std::string& metrics_path, const std::string& tensorboard_dir = "");
  // After every optimizer step: the bar on a terminal is redrawn; otherwise a plain line when the interval
  // has passed since the last one (or since the start).
  void step(int64_t step, double loss, double lr, double tokens_per_second, double seconds_left);
  // A log entry (training or evaluation): printed as a line and appended to the metrics file.
  void log(const nlohmann::json& entry);
  void message(const std::string& text);  // a line of its own (clears the bar first)
  bool is_terminal() const { return tty_; }

 private:
  void clear_bar();
  bool quiet_, tty_;
  int64_t total_;
  std::string metrics_path_;
  bool bar_shown_ = false;
  double line_interval_s_ = 30;
  std::chrono::steady_clock::time_point last_line_;
  std::unique_ptr<EventWriter> tensorboard_;
};

// Writes an SVG with the training loss (and eval loss) and the learning rate against the step, from
// an HF log_history. Written atomically.
void write_loss_curve_svg(const std::vector<nlohmann::json>& log_history, const std::string& path);

std::string format_duration(double seconds);

}  // namespace zerolora::train
