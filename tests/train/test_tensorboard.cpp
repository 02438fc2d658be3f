// TensorBoard event files (train/tensorboard.h): CRC32C against published vectors, the bytes against a file
// HF's own TensorBoardCallback wrote from the same log entries (tests/golden/tensorboard, made by
// tools/tensorboard_read.py golden), and a torn file end.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "test_util.h"
#include "train/tensorboard.h"

using namespace zerolora::train;
using nlohmann::json;
using zerolora::test::read_file;
using zerolora::test::TempDir;

namespace {

const std::string kGolden = std::string(ZEROLORA_SOURCE_DIR) + "/tests/golden/tensorboard/";

json read_json(const std::string& path) { return json::parse(read_file(path)); }

// A TFRecord reader that checks both CRCs and stops at the first incomplete or damaged record, as
// TensorBoard's does; returns the payloads.
std::vector<std::string> read_records(const std::string& bytes, bool* clean_end) {
  std::vector<std::string> out;
  size_t at = 0;
  *clean_end = true;
  while (at < bytes.size()) {
    if (bytes.size() - at < 12) return *clean_end = false, out;
    uint64_t len;
    uint32_t len_crc, data_crc;
    std::memcpy(&len, bytes.data() + at, 8);
    std::memcpy(&len_crc, bytes.data() + at + 8, 4);
    if (len_crc != masked_crc32c(bytes.data() + at, 8)) return *clean_end = false, out;
    if (bytes.size() - at - 12 < len + 4) return *clean_end = false, out;
    std::memcpy(&data_crc, bytes.data() + at + 12 + len, 4);
    if (data_crc != masked_crc32c(bytes.data() + at + 12, len)) return *clean_end = false, out;
    out.push_back(bytes.substr(at + 12, len));
    at += 16 + len;
  }
  return out;
}

}  // namespace

TEST(TensorBoard, Crc32cKnownVectors) {
  // RFC 3720 (iSCSI) B.4 and the usual check value of "123456789"
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  std::string zeros(32, '\0'), ones(32, '\xff'), up(32, '\0'), down(32, '\0');
  for (int i = 0; i < 32; ++i) up[size_t(i)] = char(i), down[size_t(i)] = char(31 - i);
  EXPECT_EQ(crc32c(zeros.data(), 32), 0x8A9136AAu);
  EXPECT_EQ(crc32c(ones.data(), 32), 0x62A8AB43u);
  EXPECT_EQ(crc32c(up.data(), 32), 0x46DD794Eu);
  EXPECT_EQ(crc32c(down.data(), 32), 0x113FDB5Cu);
  // continuing a CRC over a split buffer gives the CRC of the whole
  EXPECT_EQ(crc32c("6789", 4, crc32c("12345", 5)), 0xE3069283u);
  EXPECT_EQ(crc32c("", 0), 0u);
}

TEST(TensorBoard, ProtobufEncodingByHand) {
  // Event{wall_time: 1.0, file_version: "brain.Event:2"}: 09 <double 1.0> 1a 0d "brain.Event:2"
  const std::string fv = file_version_event(1.0, "");
  const std::string expect_fv = std::string("\x09\x00\x00\x00\x00\x00\x00\xf0\x3f\x1a\x0d", 11) + "brain.Event:2";
  EXPECT_EQ(fv, expect_fv);
  // with source_metadata {writer: "w"}: 52 03 0a 01 "w" (field 10), as tensorboard's event_pb2 serialises it
  EXPECT_EQ(file_version_event(1.0, "w"), expect_fv + std::string("\x52\x03\x0a\x01w", 5));
  // Event{step: 300, summary{value{tag "a", simple_value 0}}}: the zero value is written (a oneof member)
  const std::string s = scalar_event(0.0, 300, "a", 0.0f);
  const std::string expect_s(
      "\x10\xac\x02\x2a\x0a\x0a\x08\x0a\x01"
      "a"
      "\x15\x00\x00\x00\x00",
      15);
  EXPECT_EQ(s, expect_s);
  // a negative step is a ten-byte varint (int64 two's complement)
  EXPECT_EQ(scalar_event(0.0, -1, "", 1.0f).substr(0, 11),
            std::string("\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 11));
}

TEST(TensorBoard, LogEntryTagsAreHfRewriteLogs) {
  // scalars.json: what HF's rewrite_logs + TensorBoardCallback's int/float filter made of each entry
  const json entries = read_json(kGolden + "entries.json");
  const json expected = read_json(kGolden + "scalars.json");
  ASSERT_EQ(entries["logs"].size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    const auto got = log_entry_to_scalars(entries["logs"][i]["entry"]);
    ASSERT_EQ(got.size(), expected[i].size()) << "entry " << i;
    for (size_t k = 0; k < got.size(); ++k) {
      EXPECT_EQ(got[k].tag, expected[i][k][0].get<std::string>()) << "entry " << i;
      // the value as a float32 (simple_value), which is what both write
      EXPECT_EQ(float(got[k].value), expected[i][k][1].get<float>()) << got[k].tag;
    }
  }
  EXPECT_TRUE(log_entry_to_scalars(json::array()).empty());
}

TEST(TensorBoard, FileEqualsHfTensorBoardCallbackBytes) {
  const json entries = read_json(kGolden + "entries.json");
  TempDir dir;
  const std::string path = (dir / "events.out.tfevents.test").string();
  {
    // HF's file names tensorboard's writer in source_metadata; ours says "zerolora" (the test takes HF's name)
    EventWriter w = EventWriter::open_file(path, entries["file_version_wall_time"].get<double>(),
                                           "tensorboard.summary.writer.event_file_writer");
    for (const json& log : entries["logs"])
      w.add_log_entry(log["entry"], log["entry"]["step"].get<int64_t>(), log["wall_time"].get<double>());
    w.close();
  }
  const std::string ours = read_file(path), golden = read_file(kGolden + "events.golden");
  ASSERT_EQ(ours.size(), golden.size());
  EXPECT_TRUE(ours == golden) << "the event file differs from the one HF's TensorBoardCallback wrote";
  bool clean = false;
  const auto records = read_records(ours, &clean);
  EXPECT_TRUE(clean);
  EXPECT_EQ(records.size(), 1u + 6 + 4 + 7 + 6 + 5);  // file_version + each entry's numeric keys but step
}

TEST(TensorBoard, TornEndKeepsEveryWholeRecord) {
  // a kill in the middle of a write(2) leaves a prefix: every complete record before it stays readable
  TempDir dir;
  const std::string path = (dir / "ev").string();
  {
    EventWriter w = EventWriter::open_file(path, 100.0);
    for (int step = 1; step <= 5; ++step)
      w.add_log_entry({{"loss", 1.0 / step}, {"learning_rate", 1e-3}, {"step", step}}, step, 100.0 + step);
  }  // the destructor flushes and closes
  const std::string full = read_file(path);
  bool clean = false;
  const size_t total = read_records(full, &clean).size();
  ASSERT_TRUE(clean);
  ASSERT_EQ(total, 11u);
  size_t boundary = 0, whole = 0;
  for (size_t cut = 0; cut <= full.size(); ++cut) {
    const auto got = read_records(full.substr(0, cut), &clean);
    // records fully inside the prefix
    while (whole < total) {
      uint64_t len;
      std::memcpy(&len, full.data() + boundary, 8);
      if (boundary + 16 + len > cut) break;
      boundary += 16 + len, ++whole;
    }
    ASSERT_EQ(got.size(), whole) << "cut at " << cut;
    EXPECT_EQ(clean, cut == boundary) << "cut at " << cut;
  }
}

TEST(TensorBoard, NamesFollowHf) {
  EXPECT_EQ(event_file_name(1765108753.9, "host", 4242, 0), "events.out.tfevents.1765108753.host.4242.0");
  const std::string d = default_tensorboard_dir("out", std::time_t(0));
  // out/runs/<Mon><DD>_<HH>-<MM>-<SS>_<host> in local time
  ASSERT_EQ(d.rfind("out/runs/", 0), 0u) << d;
  const std::string stamp = d.substr(9);
  ASSERT_GE(stamp.size(), 16u);
  EXPECT_EQ(stamp[5], '_');
  EXPECT_EQ(stamp[8], '-');
  EXPECT_EQ(stamp[11], '-');
  EXPECT_EQ(stamp.substr(14), "_" + local_hostname());
}

TEST(TensorBoard, OpenCreatesFolderAndUnwritableIsOneLineError) {
  TempDir dir;
  const std::string logdir = (dir / "out" / "runs" / "x").string();
  std::string path;
  {
    EventWriter w = EventWriter::open(logdir, 1765108753.0);
    path = w.path();
  }
  EXPECT_EQ(std::filesystem::path(path).parent_path().string(), logdir);
  EXPECT_EQ(std::filesystem::path(path).filename().string().rfind("events.out.tfevents.1765108753.", 0), 0u);
  zerolora::test::write_file(dir / "file", "x");
  const std::string e = zerolora::test::error_of([&] { EventWriter::open((dir / "file" / "runs").string(), 1.0); });
  EXPECT_NE(e.find("cannot create the TensorBoard folder"), std::string::npos) << e;
  EXPECT_NE(e.find("--report_to none"), std::string::npos) << e;
}

TEST(TensorBoard, ReportToAcceptsTensorboardAllNoneAndNamesTheAlternative) {
  EXPECT_FALSE(report_to_tensorboard({"none"}));
  EXPECT_FALSE(report_to_tensorboard({}));
  EXPECT_TRUE(report_to_tensorboard({"tensorboard"}));
  EXPECT_TRUE(report_to_tensorboard({"all"}));
  EXPECT_TRUE(report_to_tensorboard({"TensorBoard"}));
  std::string e = zerolora::test::error_of([] { report_to_tensorboard({"tensorboard", "wandb"}); });
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  EXPECT_NE(e.find("--report_to: 'wandb' is not available"), std::string::npos) << e;
  EXPECT_NE(e.find("--report_to tensorboard"), std::string::npos) << e;
  e = zerolora::test::error_of([] { report_to_tensorboard({"mlflow"}); });
  EXPECT_NE(e.find("'mlflow' is not available"), std::string::npos) << e;
  e = zerolora::test::error_of([] { report_to_tensorboard({"tensorbord"}); });
  EXPECT_NE(e.find("'tensorbord' is not an integration"), std::string::npos) << e;
}
