// TensorBoard event files, as HF Trainer's TensorBoardCallback writes them for --report_to tensorboard.
//
// Where: <logging_dir>, by default <output_dir>/runs/<Mon>DD_HH-MM-SS_<hostname> (HF's default_logdir, local
// time), one file events.out.tfevents.<%010d unix time>.<hostname>.<pid>.<uid> in it (the name
// tensorboard's EventFileWriter gives; torch's SummaryWriter uses that writer).
// What: HF's on_log passes every log entry through rewrite_logs ("eval_x" -> "eval/x", "test_x" -> "test/x",
// anything else -> "train/x") and writes each int/float value (bools included: Python's bool is an int) as a
// scalar at state.global_step. The trainer's log entries carry "step" (HF adds it to log_history only, not to
// what callbacks see): it is the step here and not a scalar.
// Format: a TFRecord stream (uint64 length, masked CRC32C of the length, payload, masked CRC32C of the
// payload; little-endian) of Event protobufs: first {wall_time, file_version: "brain.Event:2",
// source_metadata {writer}}, then one
// {wall_time, step, summary {value {tag, simple_value}}} per scalar, as SummaryWriter.add_scalar writes them.
// Each log entry is appended with one write(2) and flushed to the kernel, so a kill leaves whole records plus
// at most one torn one at the end, which TensorBoard's reader stops at.
#pragma once
#include <cstdint>
#include <ctime>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace zerolora::train {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord uses it; crc continues an earlier value.
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);
// TFRecord's masking: rotate right by 15 bits and add 0xa282ead8.
uint32_t masked_crc32c(const void* data, size_t size);

// One TFRecord frame around a payload.
std::string tfrecord_frame(std::string_view payload);

// Serialised Event protobufs (proto3: zero step and empty fields are omitted, a oneof value is always written).
// writer: Event.source_metadata.writer (tensorboard >= 2.12 names its EventFileWriter there; "" = none).
std::string file_version_event(double wall_time, const std::string& writer = "zerolora");
std::string scalar_event(double wall_time, int64_t step, const std::string& tag, float value);

struct TensorBoardScalar {
  std::string tag;
  double value = 0;
};

// HF's rewrite_logs + the numeric filter of TensorBoardCallback.on_log, over one of our log entries: the
// entry's keys in their order, "step" left out, strings/arrays/objects/null skipped.
std::vector<TensorBoardScalar> log_entry_to_scalars(const nlohmann::json& entry);

// --report_to as HF takes it: "none", "tensorboard", "all" (HF: every integration installed; here that is
// TensorBoard, the one integration that needs no service). True when TensorBoard files are to be written.
// Another HF integration (wandb, mlflow, comet_ml, ...) is a core::Error naming tensorboard as the offline
// alternative; an unknown name is a core::Error listing the accepted ones.
bool report_to_tensorboard(const std::vector<std::string>& report_to);

// HF's default logging_dir: <output_dir>/runs/<%b%d_%H-%M-%S of local time>_<hostname>.
std::string default_tensorboard_dir(const std::string& output_dir, std::time_t now);
// events.out.tfevents.<%010d wall_time>.<hostname>.<pid>.<uid>
std::string event_file_name(double wall_time, const std::string& hostname, long pid, int uid);
std::string local_hostname();

class EventWriter {
 public:
  // Creates logdir (and parents) and a new event file in it, and writes the file_version event.
  // Errors (unwritable folder) are a core::Error naming the path.
  static EventWriter open(const std::string& logdir, double wall_time);
  // The same, into a file of that exact path (tests, goldens); writer as in file_version_event.
  static EventWriter open_file(const std::string& path, double wall_time, const std::string& writer = "zerolora");

  EventWriter(EventWriter&& other) noexcept;
  EventWriter& operator=(EventWriter&& other) noexcept;
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;
  ~EventWriter();

  // Buffers one scalar; flush() writes what is buffered.
  void add_scalar(const std::string& tag, int64_t step, double value, double wall_time);
  // Every scalar of an HF-style log entry (log_entry_to_scalars) at `step`, then flush().
  void add_log_entry(const nlohmann::json& entry, int64_t step, double wall_time);
  // One write(2) of what is buffered. A failed write is a core::Error naming the file.
  void flush();
  // flush(), fsync and close; further calls are errors. The destructor flushes and closes without throwing.
  void close();
  const std::string& path() const { return path_; }

 private:
  EventWriter(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_ = -1;
  std::string pending_;
};

// Wall-clock seconds since the epoch (what time.time() returns).
double wall_time_now();

}  // namespace zerolora::train
