// --report_to tensorboard through the zerolora binary: event files where HF puts them (<output_dir>/runs/<date>_<host>
// or --logging_dir), holding, for every metrics.jsonl entry, the scalars HF's TensorBoardCallback writes for it
// (train/loss, train/learning_rate, train/grad_norm, eval/loss, ... at the entry's step). The bytes of the
// format against HF's own file: tests/train/test_tensorboard.cpp.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "e2e_util.h"
#include "train/tensorboard.h"

using namespace zerolora;
using namespace zerolora::test;
namespace fs = std::filesystem;

namespace {

struct Scalar {
  std::string tag;
  int64_t step;
  float value;
  bool operator==(const Scalar& o) const { return tag == o.tag && step == o.step && std::memcmp(&value, &o.value, 4) == 0; }
};

uint64_t varint(const std::string& b, size_t* at) {
  uint64_t v = 0;
  for (int shift = 0;; shift += 7) {
    const uint8_t c = uint8_t(b.at((*at)++));
    v |= uint64_t(c & 0x7f) << shift;
    if (!(c & 0x80)) return v;
  }
}

// The scalars of an event file (records checked with their masked CRC32C; Event/Summary fields decoded).
std::vector<Scalar> read_scalars(const std::string& bytes) {
  std::vector<Scalar> out;
  for (size_t at = 0; at < bytes.size();) {
    uint64_t len;
    std::memcpy(&len, bytes.data() + at, 8);
    uint32_t crc;
    std::memcpy(&crc, bytes.data() + at + 12 + len, 4);
    EXPECT_EQ(crc, train::masked_crc32c(bytes.data() + at + 12, len));
    const std::string e = bytes.substr(at + 12, len);
    at += 16 + len;
    int64_t step = 0;
    std::string tag;
    float value = 0;
    bool scalar = false;
    for (size_t p = 0; p < e.size();) {
      const uint64_t key = varint(e, &p);
      if (key == (1 << 3 | 1)) p += 8;                            // wall_time
      else if (key == (2 << 3 | 0)) step = int64_t(varint(e, &p));  // step
      else if ((key & 7) == 2) {
        const uint64_t n = varint(e, &p);
        if (key >> 3 == 5) {  // summary { value { tag, simple_value } }
          const std::string summary = e.substr(p, n);
          size_t q = 0;
          EXPECT_EQ(varint(summary, &q), uint64_t(1 << 3 | 2));
          const uint64_t vn = varint(summary, &q);
          const std::string v = summary.substr(q, vn);
          for (size_t r = 0; r < v.size();) {
            const uint64_t k = varint(v, &r);
            if (k == (1 << 3 | 2)) {
              const uint64_t tn = varint(v, &r);
              tag = v.substr(r, tn), r += tn;
            } else if (k == (2 << 3 | 5)) {
              std::memcpy(&value, v.data() + r, 4), r += 4, scalar = true;
            } else {
              ADD_FAILURE() << "unexpected Summary.Value field " << (k >> 3);
              return out;
            }
          }
        }
        p += n;
      } else {
        ADD_FAILURE() << "unexpected Event field " << (key >> 3);
        return out;
      }
    }
    if (scalar) out.push_back({tag, step, value});
  }
  return out;
}

std::vector<fs::path> event_files(const fs::path& dir) {
  std::vector<fs::path> files;
  if (fs::is_directory(dir))
    for (const auto& e : fs::recursive_directory_iterator(dir))
      if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0) files.push_back(e.path());
  return files;
}

}  // namespace

TEST(TensorBoardE2E, ReportToTensorboardWritesHfScalarsForEveryLogEntry) {
  TinyRun run;
  const fs::path out = run.dir / "out";
  std::string log;
  ASSERT_EQ(run_command(run.train_cmd(out.string(), "--max_steps 4 --per_device_train_batch_size 4 --report_to "
                                                    "tensorboard --eval_data_path " + run.data + " --eval_steps 2"),
                        &log),
            0)
      << log;
  const auto files = event_files(out / "runs");
  ASSERT_EQ(files.size(), 1u) << log;
  // <output_dir>/runs/<Mon><DD>_<HH>-<MM>-<SS>_<host>/
  const std::string run_dir = files[0].parent_path().filename().string();
  EXPECT_EQ(run_dir.size(), 15 + train::local_hostname().size()) << run_dir;
  std::vector<Scalar> expected;
  std::ifstream metrics(out / "metrics.jsonl");
  for (std::string line; std::getline(metrics, line);) {
    if (line.empty()) continue;
    const auto entry = nlohmann::json::parse(line);
    for (const auto& s : train::log_entry_to_scalars(entry))
      expected.push_back({s.tag, entry["step"].get<int64_t>(), float(s.value)});
  }
  const std::vector<Scalar> got = read_scalars(read_file(files[0]));
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_TRUE(got[i] == expected[i]) << i << ": " << got[i].tag << "@" << got[i].step << " vs " << expected[i].tag;
  bool loss = false, lr = false, eval = false;
  for (const auto& s : got) loss |= s.tag == "train/loss", lr |= s.tag == "train/learning_rate", eval |= s.tag == "eval/loss";
  EXPECT_TRUE(loss && lr && eval);
}

TEST(TensorBoardE2E, LoggingDirAndOtherIntegrations) {
  TinyRun run;
  const fs::path out = run.dir / "out", tb = run.dir / "tb";
  std::string log;
  ASSERT_EQ(run_command(run.train_cmd(out.string(), "--max_steps 2 --report_to all --logging_dir " + tb.string()), &log), 0)
      << log;
  EXPECT_EQ(event_files(tb).size(), 1u) << log;
  EXPECT_FALSE(fs::exists(out / "runs"));
  EXPECT_NE(run_command(run.train_cmd((run.dir / "w").string(), "--max_steps 2 --report_to wandb"), &log), 0);
  EXPECT_NE(log.find("--report_to: 'wandb' is not available"), std::string::npos) << log;
  EXPECT_NE(log.find("--report_to tensorboard"), std::string::npos) << log;
}
