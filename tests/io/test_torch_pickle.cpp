// PyTorch .pt files (io/torch_pickle.h, io/zip_store.h): our files read back, HF Trainer's real optimizer.pt /
// scheduler.pt (tests/golden/hf_checkpoint/checkpoint-3, written by torch 2.4 through
// tools/hf_checkpoint_roundtrip.py) read, and everything that is not plain data refused with a message naming
// the file and the opcode or class.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/torch_pickle.h"
#include "io/zip_store.h"
#include "test_util.h"

using namespace zerolora;
using io::PtTensor;
using io::PtValue;
using test::error_of;
using test::TempDir;

namespace {

const std::string kHf = std::string(ZEROLORA_SOURCE_DIR) + "/tests/golden/hf_checkpoint/";

void expect_same(const PtValue& a, const PtValue& b, const std::string& at) {
  ASSERT_EQ(int(a.kind()), int(b.kind())) << at;
  switch (a.kind()) {
    case PtValue::Kind::None:
      break;
    case PtValue::Kind::Bool:
      EXPECT_EQ(a.as_bool(at), b.as_bool(at)) << at;
      break;
    case PtValue::Kind::Int:
      EXPECT_EQ(a.as_int(at), b.as_int(at)) << at;
      break;
    case PtValue::Kind::Float:
      EXPECT_EQ(a.as_number(at), b.as_number(at)) << at;
      break;
    case PtValue::Kind::String:
      EXPECT_EQ(a.as_string(at), b.as_string(at)) << at;
      break;
    case PtValue::Kind::List:
    case PtValue::Kind::Tuple:
      ASSERT_EQ(a.items(at).size(), b.items(at).size()) << at;
      for (size_t i = 0; i < a.items(at).size(); ++i)
        expect_same(a.items(at)[i], b.items(at)[i], at + "/" + std::to_string(i));
      break;
    case PtValue::Kind::Dict:
      ASSERT_EQ(a.entries(at).size(), b.entries(at).size()) << at;
      for (size_t i = 0; i < a.entries(at).size(); ++i) {
        expect_same(a.entries(at)[i].first, b.entries(at)[i].first, at + "/key");
        expect_same(a.entries(at)[i].second, b.entries(at)[i].second, at + "/value");
      }
      break;
    case PtValue::Kind::Tensor: {
      const PtTensor &x = a.as_tensor(at), &y = b.as_tensor(at);
      EXPECT_EQ(x.shape, y.shape) << at;
      EXPECT_EQ(int(x.dtype), int(y.dtype)) << at;
      EXPECT_EQ(x.to_f32(at), y.to_f32(at)) << at;
      break;
    }
  }
}

}  // namespace

TEST(TorchPickle, ZipCrc32KnownVector) {
  EXPECT_EQ(io::crc32_zip("123456789", 9), 0xCBF43926u);
  EXPECT_EQ(io::crc32_zip("", 0), 0u);
}

TEST(TorchPickle, EveryPlainKindRoundTrips) {
  PtValue d = PtValue::dict();
  d.set(PtValue::string("none"), PtValue());
  d.set(PtValue::string("t"), PtValue::boolean(true));
  d.set(PtValue::string("f"), PtValue::boolean(false));
  for (int64_t i : {int64_t(0), int64_t(255), int64_t(256), int64_t(65535), int64_t(65536), int64_t(-1),
                    int64_t(-2147483648LL), int64_t(1) << 40, -(int64_t(1) << 50)})
    d.set(PtValue::integer(i), PtValue::integer(i));
  d.set(PtValue::string("pi"), PtValue::real(3.141592653589793));
  d.set(PtValue::string("tiny"), PtValue::real(-1e-300));
  d.set(PtValue::string("unicode"), PtValue::string("naïve ✓"));
  d.set(PtValue::string("empty list"), PtValue::list());
  d.set(PtValue::string("tuple"), PtValue::tuple({PtValue::real(0.9), PtValue::real(0.999)}));
  d.set(PtValue::string("nested"),
        PtValue::list({PtValue::dict(), PtValue::tuple(), PtValue::list({PtValue::integer(7)})}));
  d.set(PtValue::string("scalar"), PtValue::tensor(PtTensor::from_f32({3.0f}, {})));
  d.set(PtValue::string("matrix"), PtValue::tensor(PtTensor::from_f32({1, 2, 3, 4, 5, 6}, {2, 3})));
  d.set(PtValue::string("empty"), PtValue::tensor(PtTensor::from_f32({}, {0, 4})));
  TempDir dir;
  const std::string path = (dir / "x.pt").string();
  io::save_torch_file(path, d);
  const PtValue back = io::load_torch_file(path);
  expect_same(d, back, "x.pt");
  // records as torch names them: <stem>/data.pkl, <stem>/data/<key>, byteorder, version; data 64-byte aligned
  const auto entries = io::read_stored_zip(path);
  ASSERT_GE(entries.size(), 4u);
  EXPECT_EQ(entries[0].name, "x/data.pkl");
  EXPECT_EQ(entries[1].name, "x/byteorder");
  EXPECT_EQ(entries.back().name, "x/version");
  const std::string bytes = test::read_file(path);
  const std::string matrix_bytes(reinterpret_cast<const char*>(std::vector<float>{1, 2, 3, 4, 5, 6}.data()), 24);
  const size_t at = bytes.find(matrix_bytes);
  ASSERT_NE(at, std::string::npos);
  EXPECT_EQ(at % 64, 0u);
}

TEST(TorchPickle, ReadsHfTrainersOptimizerAndScheduler) {
  const auto golden = nlohmann::json::parse(test::read_file(kHf + "golden.json"));
  const PtValue opt = io::load_torch_file(kHf + "checkpoint-3/optimizer.pt");
  const PtValue& state = opt.at("state", "optimizer.pt");
  ASSERT_EQ(int64_t(state.entries("state").size()), golden["optimizer_pt"]["num_states"].get<int64_t>());
  double m = 0, v = 0;
  for (const auto& [k, st] : state.entries("state")) {
    EXPECT_EQ(st.at("step", "st").as_tensor("step").to_f32("step"), std::vector<float>{3.0f});
    EXPECT_TRUE(st.at("step", "st").as_tensor("step").shape.empty());
    for (float x : st.at("exp_avg", "st").as_tensor("m").to_f32("m")) m += x;
    for (float x : st.at("exp_avg_sq", "st").as_tensor("v").to_f32("v")) v += x;
  }
  // sums in double of the same floats (torch sums per tensor first): equal to 1e-12 relative
  EXPECT_NEAR(m, golden["optimizer_pt"]["exp_avg_sum"].get<double>(), 1e-12 * std::abs(m));
  EXPECT_NEAR(v, golden["optimizer_pt"]["exp_avg_sq_sum"].get<double>(), 1e-12 * std::abs(v));
  const auto& groups = opt.at("param_groups", "optimizer.pt").items("param_groups");
  ASSERT_EQ(groups.size(), 2u);
  const auto& g0 = golden["optimizer_pt"]["param_groups"][0];
  EXPECT_EQ(groups[0].at("lr", "g").as_number("lr"), g0["lr"].get<double>());
  EXPECT_EQ(groups[0].at("weight_decay", "g").as_number("wd"), g0["weight_decay"].get<double>());
  EXPECT_EQ(groups[0].at("betas", "g").items("betas").size(), 2u);
  EXPECT_TRUE(groups[0].at("foreach", "g").is_none());
  EXPECT_EQ(groups[0].at("params", "g").items("params").size(), 70u);
  EXPECT_TRUE(groups[1].at("params", "g").items("params").empty());

  const PtValue sch = io::load_torch_file(kHf + "checkpoint-3/scheduler.pt");
  EXPECT_EQ(sch.at("last_epoch", "s").as_int("last_epoch"), 3);
  EXPECT_EQ(sch.at("_step_count", "s").as_int("_step_count"), 4);
  EXPECT_EQ(sch.at("base_lrs", "s").items("b")[0].as_number("b"), 0.005);
  EXPECT_EQ(sch.at("_last_lr", "s").items("l")[0].as_number("l"), golden["scheduler_pt"]["_last_lr"][0].get<double>());
}

TEST(TorchPickle, RefusesWhatIsNotPlainData) {
  // rng_state.pth holds numpy's generator state: its bytes come through _codecs.encode (protocol 2), its
  // arrays through numpy functions
  const std::string rng = kHf + "checkpoint-3/rng_state.pth";
  std::string e = error_of([&] { io::load_torch_file(rng); });
  EXPECT_NE(e.find(rng), std::string::npos) << e;
  EXPECT_NE(e.find("calls _codecs.encode"), std::string::npos) << e;
  // training_args.bin: a pickled TrainingArguments object
  const std::string targs = kHf + "checkpoint-3/training_args.bin";
  e = error_of([&] { io::load_torch_file(targs); });
  EXPECT_NE(e.find(targs), std::string::npos) << e;
  EXPECT_TRUE(e.find("TrainingArguments") != std::string::npos || e.find("NEWOBJ") != std::string::npos ||
              e.find("copyreg") != std::string::npos)
      << e;
  // an object restored with BUILD: named by opcode
  e = error_of([&] { io::unpickle_torch(std::string("\x80\x02}b.", 5), {}, "hand.pkl"); });
  EXPECT_NE(e.find("hand.pkl"), std::string::npos) << e;
  EXPECT_NE(e.find("BUILD (0x62)"), std::string::npos) << e;
  // a global that is not on the list
  e = error_of([&] {
    io::unpickle_torch(std::string("\x80\x02"
                                   "cos\nsystem\n(X\x02\x00\x00\x00lstR.",
                                   24),
                       {}, "evil.pkl");
  });
  EXPECT_NE(e.find("calls os.system"), std::string::npos) << e;
  // a class kept as a value
  e = error_of([&] {
    io::unpickle_torch(std::string("\x80\x02"
                                   "cbuiltins\nset\n.",
                                   17),
                       {}, "c.pkl");
  });
  EXPECT_NE(e.find("builtins.set"), std::string::npos) << e;
  // truncated pickle
  e = error_of([&] { io::unpickle_torch(std::string("\x80\x02}(X\x05\x00\x00", 8), {}, "t.pkl"); });
  EXPECT_NE(e.find("ends before STOP"), std::string::npos) << e;
}

TEST(TorchPickle, RefusesDamagedOrCompressedZip) {
  TempDir dir;
  PtValue d = PtValue::dict();
  d.set(PtValue::string("w"), PtValue::tensor(PtTensor::from_f32({1, 2}, {2})));
  const std::string good = io::torch_file_bytes(d, "f");
  // truncated: no end record
  test::write_file(dir / "cut.pt", good.substr(0, good.size() / 2));
  std::string e = error_of([&] { io::load_torch_file((dir / "cut.pt").string()); });
  EXPECT_NE(e.find("cut.pt"), std::string::npos) << e;
  // a flipped data byte: CRC-32
  std::string bad = good;
  const size_t at = bad.find(std::string("\x00\x00\x80\x3f", 4));  // 1.0f
  ASSERT_NE(at, std::string::npos);
  bad[at + 3] = '\x40';
  test::write_file(dir / "crc.pt", bad);
  e = error_of([&] { io::load_torch_file((dir / "crc.pt").string()); });
  EXPECT_NE(e.find("CRC-32"), std::string::npos) << e;
  // method 8 (deflate) in the central directory: refused by name
  std::string deflated = good;
  const size_t cd = deflated.find("PK\x01\x02");
  ASSERT_NE(cd, std::string::npos);
  deflated[cd + 10] = 8;
  test::write_file(dir / "z.pt", deflated);
  e = error_of([&] { io::load_torch_file((dir / "z.pt").string()); });
  EXPECT_NE(e.find("compressed (zip method 8)"), std::string::npos) << e;
  EXPECT_NE(e.find("f/data.pkl"), std::string::npos) << e;
}

TEST(TorchPickle, Zip64RecordsReadBack) {
  // zip64 sizes, offsets and end records, as an archive past 4 GiB has them (forced from 100 bytes on). torch 2.4's
  // reader (miniz) loads HF's optimizer.pt rewritten this way with the same tensors (checked by hand: it needs
  // sizes and offset together in the zip64 field of an entry)
  std::vector<io::ZipEntry> entries = {
      {"a/data.pkl", std::string(50, 'x')}, {"a/data/0", std::string(300, 'y')}, {"a/version", "3\n"}};
  const std::string zip = io::make_stored_zip(entries, 100);
  TempDir dir;
  test::write_file(dir / "big.zip", zip);
  const auto back = io::read_stored_zip((dir / "big.zip").string());
  ASSERT_EQ(back.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(back[i].name, entries[i].name);
    EXPECT_EQ(back[i].data, entries[i].data);
  }
  EXPECT_NE(zip.find("PK\x06\x06"), std::string::npos);  // zip64 end of central directory
  EXPECT_NE(zip.find("PK\x06\x07"), std::string::npos);  // and its locator
  // the normal form has neither
  EXPECT_EQ(io::make_stored_zip(entries).find("PK\x06\x06"), std::string::npos);
}
