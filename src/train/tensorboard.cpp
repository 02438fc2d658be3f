#include "train/tensorboard.h"

#include <fcntl.h>
#include <sys/time.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace zerolora::train {

namespace fs = std::filesystem;

namespace {

std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}

// Protobuf wire format: key = (field << 3) | wire type; 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32.
void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(char(uint8_t(v) | 0x80));
    v >>= 7;
  }
  out.push_back(char(uint8_t(v)));
}

template <typename T>
void put_le(std::string& out, T v) {
  unsigned char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // little-endian host (x86-64, aarch64)
  out.append(reinterpret_cast<const char*>(b), sizeof(T));
}

void put_key(std::string& out, int field, int wire_type) {
  put_varint(out, uint64_t(field) << 3 | uint64_t(wire_type));
}

void put_bytes(std::string& out, int field, std::string_view bytes) {
  put_key(out, field, 2);
  put_varint(out, bytes.size());
  out.append(bytes);
}

// Event: double wall_time = 1; int64 step = 2; oneof what { string file_version = 3; Summary summary = 5; ... }
std::string event_header(double wall_time, int64_t step) {
  std::string e;
  if (wall_time != 0) put_key(e, 1, 1), put_le<double>(e, wall_time);
  if (step != 0) put_key(e, 2, 0), put_varint(e, uint64_t(step));  // negative: ten-byte two's complement
  return e;
}

}  // namespace

uint32_t crc32c(const void* data, size_t size, uint32_t crc) {
  static const std::array<uint32_t, 256> table = make_crc32c_table();
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

uint32_t masked_crc32c(const void* data, size_t size) {
  const uint32_t c = crc32c(data, size);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string tfrecord_frame(std::string_view payload) {
  std::string out;
  out.reserve(payload.size() + 16);
  put_le<uint64_t>(out, payload.size());
  put_le<uint32_t>(out, masked_crc32c(out.data(), 8));
  out.append(payload);
  put_le<uint32_t>(out, masked_crc32c(payload.data(), payload.size()));
  return out;
}

std::string file_version_event(double wall_time, const std::string& writer) {
  std::string e = event_header(wall_time, 0);
  put_bytes(e, 3, "brain.Event:2");
  if (!writer.empty()) {  // SourceMetadata source_metadata = 10 { string writer = 1; }
    std::string meta;
    put_bytes(meta, 1, writer);
    put_bytes(e, 10, meta);
  }
  return e;
}

std::string scalar_event(double wall_time, int64_t step, const std::string& tag, float value) {
  // Summary.Value: string tag = 1; oneof value { float simple_value = 2; ... }
  std::string v;
  if (!tag.empty()) put_bytes(v, 1, tag);
  put_key(v, 2, 5), put_le<float>(v, value);
  std::string summary;  // Summary: repeated Value value = 1
  put_bytes(summary, 1, v);
  std::string e = event_header(wall_time, step);
  put_bytes(e, 5, summary);
  return e;
}

std::vector<TensorBoardScalar> log_entry_to_scalars(const nlohmann::json& entry) {
  std::vector<TensorBoardScalar> out;
  if (!entry.is_object()) return out;
  for (const auto& [key, value] : entry.items()) {
    if (key == "step") continue;
    double x;
    if (value.is_boolean())
      x = value.get<bool>() ? 1.0 : 0.0;
    else if (value.is_number())
      x = value.get<double>();
    else
      continue;  // HF warns and drops a value that is not an int or a float
    std::string tag;
    if (key.rfind("eval_", 0) == 0)
      tag = "eval/" + key.substr(5);
    else if (key.rfind("test_", 0) == 0)
      tag = "test/" + key.substr(5);
    else
      tag = "train/" + key;
    out.push_back({tag, x});
  }
  return out;
}

bool report_to_tensorboard(const std::vector<std::string>& report_to) {
  static const char* const hf_integrations[] = {"azure_ml", "clearml", "codecarbon", "comet_ml", "dagshub", "dvclive",
                                                "flyte",    "mlflow",  "neptune",    "wandb",    "ray",     "swanlab"};
  bool tensorboard = false;
  for (std::string item : report_to) {
    for (char& c : item) c = char(std::tolower(static_cast<unsigned char>(c)));
    if (item.empty() || item == "none") continue;
    if (item == "tensorboard" || item == "all") {
      tensorboard = true;
      continue;
    }
    bool known = false;
    for (const char* name : hf_integrations) known |= item == name;
    if (known)
      throw core::Error("--report_to",
                        "'" + item + "' is not available: zerolora writes no " + item +
                            " logs (it needs a service or a Python package)",
                        "use --report_to tensorboard (event files in <output_dir>/runs, offline; "
                        "`tensorboard --logdir <output_dir>/runs` shows them) or --report_to none");
    throw core::Error("--report_to", "'" + item + "' is not an integration",
                      "use tensorboard, all (= tensorboard) or none");
  }
  return tensorboard;
}

std::string local_hostname() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0) return "localhost";
  return name;
}

std::string default_tensorboard_dir(const std::string& output_dir, std::time_t now) {
  std::tm tm{};
  localtime_r(&now, &tm);
  static const char* months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  char stamp[32];
  std::snprintf(stamp, sizeof stamp, "%s%02d_%02d-%02d-%02d", months[tm.tm_mon % 12], tm.tm_mday, tm.tm_hour, tm.tm_min,
                tm.tm_sec);  // %b%d_%H-%M-%S in the C locale, as Python's strftime
  return (fs::path(output_dir) / "runs" / (std::string(stamp) + "_" + local_hostname())).string();
}

std::string event_file_name(double wall_time, const std::string& hostname, long pid, int uid) {
  char head[64];
  std::snprintf(head, sizeof head, "events.out.tfevents.%010lld.", (long long)std::floor(wall_time));
  return head + hostname + "." + std::to_string(pid) + "." + std::to_string(uid);
}

double wall_time_now() {
  timeval tv{};
  gettimeofday(&tv, nullptr);
  return double(tv.tv_sec) + double(tv.tv_usec) * 1e-6;
}

EventWriter EventWriter::open(const std::string& logdir, double wall_time) {
  std::error_code ec;
  fs::create_directories(logdir, ec);
  core::check(!ec && fs::is_directory(logdir), logdir,
              "cannot create the TensorBoard folder" + (ec ? " (" + ec.message() + ")" : std::string()),
              "pass a writable --logging_dir or --report_to none");
  static int uid = 0;  // tensorboard's _global_uid: one number per writer in this process
  return open_file((fs::path(logdir) / event_file_name(wall_time, local_hostname(), long(getpid()), uid++)).string(),
                   wall_time);
}

EventWriter EventWriter::open_file(const std::string& path, double wall_time, const std::string& writer) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  core::check(fd >= 0, path, std::string("cannot create the TensorBoard event file: ") + std::strerror(errno),
              "pass a writable --logging_dir or --report_to none");
  EventWriter w(path, fd);
  w.pending_ = tfrecord_frame(file_version_event(wall_time, writer));
  w.flush();
  return w;
}

EventWriter::EventWriter(EventWriter&& o) noexcept
    : path_(std::move(o.path_)), fd_(o.fd_), pending_(std::move(o.pending_)) {
  o.fd_ = -1;
}

EventWriter& EventWriter::operator=(EventWriter&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(o.path_), fd_ = o.fd_, pending_ = std::move(o.pending_);
    o.fd_ = -1;
  }
  return *this;
}

EventWriter::~EventWriter() {
  if (fd_ < 0) return;
  try {
    flush();
  } catch (...) {
  }
  ::close(fd_);
}

void EventWriter::add_scalar(const std::string& tag, int64_t step, double value, double wall_time) {
  core::check(fd_ >= 0, path_, "internal: add_scalar after close");
  pending_ += tfrecord_frame(scalar_event(wall_time, step, tag, float(value)));
}

void EventWriter::add_log_entry(const nlohmann::json& entry, int64_t step, double wall_time) {
  for (const TensorBoardScalar& s : log_entry_to_scalars(entry)) add_scalar(s.tag, step, s.value, wall_time);
  flush();
}

void EventWriter::flush() {
  core::check(fd_ >= 0, path_, "internal: flush after close");
  size_t done = 0;
  while (done < pending_.size()) {
    const ssize_t n = ::write(fd_, pending_.data() + done, pending_.size() - done);
    if (n < 0 && errno == EINTR) continue;
    core::check(n > 0, path_, std::string("cannot write the TensorBoard event file: ") + std::strerror(errno),
                "free disk space, or pass --report_to none");
    done += size_t(n);
  }
  pending_.clear();
}

void EventWriter::close() {
  flush();
  ::fsync(fd_);
  ::close(fd_);
  fd_ = -1;
}

}  // namespace zerolora::train
