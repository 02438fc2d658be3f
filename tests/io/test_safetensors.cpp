// safetensors reader/writer and TensorStore: hand-built byte strings, every header rule, round trips,
// sharded folders, dtype conversion, and the real stories260K checkpoint from ../shared.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <map>

#include "io/hf_config.h"
#include "io/safetensors.h"
#include "nlohmann/json.hpp"
#include "test_util.h"

namespace zerolora::io {
using zerolora::test::error_of;

namespace {

using core::DType;
using core::Tensor;
using test::TempDir;
using test::write_file;

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &v, 8);
  return s;
}

// A safetensors file from a header text and a data buffer, exactly as given (no validation).
std::string safetensors_bytes(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

template <typename T>
std::string raw_bytes(std::initializer_list<T> values) {
  std::string s(values.size() * sizeof(T), '\0');
  std::memcpy(s.data(), values.begin(), s.size());
  return s;
}


void expect_contains(const std::string& message, const std::vector<std::string>& parts) {
  for (const auto& part : parts) EXPECT_NE(message.find(part), std::string::npos) << "missing '" << part << "' in: " << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << "message is not one line: " << message;
}

// Writes a file with the given header/data and returns the error its open raises.
std::string open_error(const TempDir& dir, const std::string& header, const std::string& data) {
  const std::string path = (dir / "bad.safetensors").string();
  write_file(path, safetensors_bytes(header, data));
  return error_of([&] { SafetensorsFile::open(path); });
}

Tensor f32_tensor(core::Shape shape, float start) {
  Tensor t = Tensor::empty(DType::F32, std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = start + 0.25f * float(i);
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// ---------------------------------------------------------------------------------------------
// Reading hand-built files

TEST(Safetensors, HandBuiltBytesParse) {
  TempDir dir;
  // Header padded with spaces as the reference writer does; tensors deliberately listed out of data order.
  std::string header = R"({"b":{"dtype":"BF16","shape":[],"data_offsets":[8,10]},)"
                       R"("__metadata__":{"format":"pt","note":"x"},)"
                       R"("a":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]}})";
  header.resize((header.size() + 7) / 8 * 8, ' ');
  const std::string data = raw_bytes<float>({1.5f, -2.0f}) + raw_bytes<uint16_t>({0x4040});  // bf16 3.0
  const std::string path = (dir / "m.safetensors").string();
  write_file(path, safetensors_bytes(header, data));

  auto file = SafetensorsFile::open(path);
  ASSERT_EQ(file->tensors().size(), 2u);
  EXPECT_EQ(file->metadata().at("format"), "pt");
  EXPECT_EQ(file->metadata().at("note"), "x");
  const TensorInfo& a = file->tensors().at("a");
  EXPECT_EQ(a.dtype, DType::F32);
  EXPECT_EQ(a.shape, (core::Shape{1, 2}));
  EXPECT_EQ(a.nbytes, 8u);
  EXPECT_EQ(a.file, path);
  const TensorInfo& b = file->tensors().at("b");
  EXPECT_EQ(b.dtype, DType::BF16);
  EXPECT_TRUE(b.shape.empty());

  TensorStore store = TensorStore::open_file(path);
  EXPECT_EQ(store.names(), (std::vector<std::string>{"a", "b"}));
  Tensor ta = store.load("a", DType::F32, {1, 2});
  EXPECT_EQ(ta.data<float>()[0], 1.5f);
  EXPECT_EQ(ta.data<float>()[1], -2.0f);
  Tensor tb = store.load("b", DType::F32);
  EXPECT_EQ(tb.numel(), 1);
  EXPECT_EQ(tb.data<float>()[0], 3.0f);
}

TEST(Safetensors, EmptyTensorAndNoMetadataAccepted) {
  TempDir dir;
  const std::string header = R"({"e":{"dtype":"F16","shape":[0,4],"data_offsets":[0,0]},)"
                             R"("x":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})";
  const std::string path = (dir / "m.safetensors").string();
  write_file(path, safetensors_bytes(header, raw_bytes<int64_t>({-7})));
  TensorStore store = TensorStore::open_file(path);
  EXPECT_EQ(store.load("e", DType::F32).shape(), (core::Shape{0, 4}));
  EXPECT_EQ(store.load("x", DType::I64).data<int64_t>()[0], -7);
  EXPECT_TRUE(SafetensorsFile::open(path)->metadata().empty());
}

TEST(Safetensors, DtypeUnknownToEngineOpensButLoadRefuses) {
  TempDir dir;
  const std::string path = (dir / "q.safetensors").string();
  write_file(path, safetensors_bytes(R"({"w":{"dtype":"I8","shape":[4],"data_offsets":[0,4]}})", "abcd"));
  TensorStore store = TensorStore::open_file(path);
  EXPECT_EQ(store.info("w").dtype_name, "I8");
  EXPECT_FALSE(store.info("w").has_core_dtype);
  expect_contains(error_of([&] { store.load("w", DType::F32); }), {path, "tensor 'w'", "dtype I8", "cannot convert"});
}

// ---------------------------------------------------------------------------------------------
// One test per broken-file rule

TEST(SafetensorsErrors, MissingFile) {
  TempDir dir;
  const std::string path = (dir / "absent.safetensors").string();
  expect_contains(error_of([&] { SafetensorsFile::open(path); }), {path, "not found"});
}

TEST(SafetensorsErrors, FileShorterThanLengthField) {
  TempDir dir;
  const std::string path = (dir / "short.safetensors").string();
  write_file(path, "abc");
  expect_contains(error_of([&] { SafetensorsFile::open(path); }), {path, "truncated", "3 bytes"});
}

TEST(SafetensorsErrors, TruncatedData) {
  TempDir dir;
  const std::string path = (dir / "cut.safetensors").string();
  write_safetensors(path, {{"w", f32_tensor({4, 4}, 0.f)}});
  std::string bytes = test::read_file(path);
  write_file(path, bytes.substr(0, bytes.size() - 10));
  expect_contains(error_of([&] { SafetensorsFile::open(path); }), {path, "tensor 'w'", "truncated"});
}

TEST(SafetensorsErrors, HeaderLengthPastEndOfFile) {
  TempDir dir;
  const std::string path = (dir / "h.safetensors").string();
  write_file(path, le64(1000) + "{}");
  expect_contains(error_of([&] { SafetensorsFile::open(path); }), {path, "header length 1000", "past the end of the file"});
}

TEST(SafetensorsErrors, HeaderLengthOverLimit) {
  TempDir dir;
  const std::string path = (dir / "h.safetensors").string();
  write_file(path, le64(uint64_t(1) << 40) + "{}");
  expect_contains(error_of([&] { SafetensorsFile::open(path); }), {path, "100 MB"});
}

TEST(SafetensorsErrors, HeaderNotJson) {
  TempDir dir;
  expect_contains(open_error(dir, R"({"a": {"dtype": )", ""), {"bad.safetensors", "not valid JSON"});
}

TEST(SafetensorsErrors, HeaderNotAnObject) {
  TempDir dir;
  expect_contains(open_error(dir, "[1, 2]", ""), {"bad.safetensors", "does not start with '{'"});
}

TEST(SafetensorsErrors, OverlappingOffsets) {
  TempDir dir;
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  expect_contains(open_error(dir, header, std::string(12, '\0')),
                  {"bad.safetensors", "tensor 'b'", "overlap", "tensor 'a'"});
}

TEST(SafetensorsErrors, OffsetsOutOfRange) {
  TempDir dir;
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[100,108]}})";
  expect_contains(open_error(dir, header, std::string(8, '\0')),
                  {"bad.safetensors", "tensor 'a'", "[100, 108]", "end past the data buffer", "8 bytes"});
}

TEST(SafetensorsErrors, HoleBetweenTensors) {
  TempDir dir;
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})";
  expect_contains(open_error(dir, header, std::string(20, '\0')), {"bad.safetensors", "tensor 'b'", "gap of 4"});
}

TEST(SafetensorsErrors, TrailingBytesAfterLastTensor) {
  TempDir dir;
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  expect_contains(open_error(dir, header, std::string(11, '\0')), {"bad.safetensors", "3 bytes follow the last"});
}

TEST(SafetensorsErrors, ByteCountNotMatchingShape) {
  TempDir dir;
  const std::string header = R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})";
  expect_contains(open_error(dir, header, std::string(8, '\0')),
                  {"bad.safetensors", "tensor 'a'", "hold 8 bytes", "need 12"});
}

TEST(SafetensorsErrors, UnknownDtype) {
  TempDir dir;
  const std::string header = R"({"a":{"dtype":"F17","shape":[2],"data_offsets":[0,8]}})";
  expect_contains(open_error(dir, header, std::string(8, '\0')), {"bad.safetensors", "tensor 'a'", "unknown dtype 'F17'"});
}

TEST(SafetensorsErrors, DuplicateTensorName) {
  TempDir dir;
  const std::string header = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                             R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";
  expect_contains(open_error(dir, header, std::string(8, '\0')), {"bad.safetensors", "tensor 'a'", "listed twice"});
}

TEST(SafetensorsErrors, MetadataValueNotString) {
  TempDir dir;
  const std::string header = R"({"__metadata__":{"format":"pt","step":3}})";
  expect_contains(open_error(dir, header, ""), {"bad.safetensors", "__metadata__", "'step'", "not a string"});
}

TEST(SafetensorsErrors, EntryFieldsOfWrongType) {
  TempDir dir;
  expect_contains(open_error(dir, R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})", ""),
                  {"tensor 'a'", "shape", "non-negative integer"});
  expect_contains(open_error(dir, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", std::string(4, '\0')),
                  {"tensor 'a'", "data_offsets", "pair"});
  expect_contains(open_error(dir, R"({"a":{"dtype":"F32","shape":[1]}})", ""), {"tensor 'a'", "data_offsets"});
  expect_contains(open_error(dir, R"({"a":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')),
                  {"tensor 'a'", "dtype is not a string"});
}

// ---------------------------------------------------------------------------------------------
// Writing

TEST(SafetensorsWrite, RoundTripAllDtypes) {
  TempDir dir;
  Tensor bf16 = f32_tensor({3, 5}, -1.f).to(DType::BF16);
  Tensor f16 = f32_tensor({7}, 2.f).to(DType::F16);
  Tensor i64 = Tensor::empty(DType::I64, {2});
  i64.data<int64_t>()[0] = -5;
  i64.data<int64_t>()[1] = int64_t(1) << 40;
  Tensor scalar = f32_tensor({}, 9.f);
  Tensor empty = Tensor::empty(DType::F32, {0, 3});
  std::vector<std::pair<std::string, Tensor>> tensors = {
      {"z.weight", f32_tensor({2, 3}, 1.f)}, {"bf16", bf16}, {"f16", f16}, {"i64", i64}, {"scalar", scalar}, {"empty", empty}};
  const std::string path = (dir / "rt.safetensors").string();
  write_safetensors(path, tensors, {{"step", "12"}});
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->metadata().at("format"), "pt");
  EXPECT_EQ(file->metadata().at("step"), "12");
  TensorStore store = TensorStore::open_file(path);
  ASSERT_EQ(store.names().size(), tensors.size());
  for (const auto& [name, t] : tensors) EXPECT_TRUE(same_bytes(store.load(name, t.dtype()), t)) << name;

  // Layout: header padded to a multiple of 8 with spaces, __metadata__ first, data in the given order.
  const std::string bytes = test::read_file(path);
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.rfind(R"({"__metadata__":{"format":"pt")", 0), 0u) << header;
  EXPECT_LT(header.find("\"z.weight\""), header.find("\"bf16\""));
  EXPECT_EQ(header.find_last_not_of(' '), header.find_last_of('}'));
  const auto data_offset = [&](const std::string& name) {
    return static_cast<const char*>(file->tensors().at(name).data) - static_cast<const char*>(file->tensors().at("z.weight").data);
  };
  EXPECT_EQ(data_offset("bf16"), 24);  // right after the 6 floats of z.weight, the first tensor given
  EXPECT_EQ(data_offset("f16"), 24 + 30);
  EXPECT_EQ(bytes.substr(8 + n, 24), std::string(static_cast<const char*>(tensors[0].second.raw()), 24));
  EXPECT_EQ(bytes.size(), 8 + n + 24 + 30 + 14 + 16 + 4);
}

TEST(SafetensorsWrite, Deterministic) {
  TempDir dir;
  std::vector<std::pair<std::string, Tensor>> tensors = {{"b", f32_tensor({3}, 1.f)}, {"a", f32_tensor({2, 2}, 0.f)}};
  write_safetensors((dir / "1.safetensors").string(), tensors);
  write_safetensors((dir / "2.safetensors").string(), tensors);
  EXPECT_EQ(test::read_file(dir / "1.safetensors"), test::read_file(dir / "2.safetensors"));
}

TEST(SafetensorsWrite, RefusedWriteLeavesExistingFileAlone) {
  TempDir dir;
  const std::string path = (dir / "keep.safetensors").string();
  write_file(path, "old contents");
  const std::string message =
      error_of([&] { write_safetensors(path, {{"a", f32_tensor({1}, 0.f)}, {"a", f32_tensor({1}, 1.f)}}); });
  expect_contains(message, {path, "tensor 'a'", "twice"});
  EXPECT_EQ(test::read_file(path), "old contents");
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  expect_contains(error_of([&] { write_safetensors((dir / "no/such/dir/x.safetensors").string(), {}); }),
                  {"no/such/dir/x.safetensors.tmp", "open for writing"});
}

// ---------------------------------------------------------------------------------------------
// Conversion at load

TEST(SafetensorsLoad, Bf16ToF32IsExact) {
  TempDir dir;
  const std::vector<uint16_t> bits = {0x0000, 0x8000, 0x3f80, 0xbf80, 0x7f7f, 0x0001, 0x7f80, 0xff80,
                                      0x4049, 0xc2f7, 0x3dcc, 0x0080, 0x8001, 0x4700, 0x1234, 0x7fc0, 0x3eaa};
  Tensor t = Tensor::empty(DType::BF16, {int64_t(bits.size())});
  std::memcpy(t.raw(), bits.data(), bits.size() * 2);
  const std::string path = (dir / "b.safetensors").string();
  write_safetensors(path, {{"t", t}});
  Tensor f = TensorStore::open_file(path).load("t", DType::F32);
  for (size_t i = 0; i < bits.size(); ++i) {
    uint32_t got;
    std::memcpy(&got, f.data<float>() + i, 4);
    EXPECT_EQ(got, uint32_t(bits[i]) << 16) << "element " << i;
  }
}

TEST(SafetensorsLoad, F32ToBf16RoundsToNearestEven) {
  TempDir dir;
  // (input bits, expected bf16): exact, below/above/at half (even and odd neighbours), overflow to inf, NaN.
  const std::vector<std::pair<uint32_t, uint16_t>> cases = {
      {0x3f800000, 0x3f80}, {0x3f807fff, 0x3f80}, {0x3f808001, 0x3f81}, {0x3f808000, 0x3f80},
      {0x3f818000, 0x3f82}, {0xbf818000, 0xbf82}, {0x7f7fffff, 0x7f80}, {0x00000001, 0x0000},
      {0x3f80ffff, 0x3f81}, {0x40490fdb, 0x4049}, {0xc2f6e979, 0xc2f7}, {0x7f800000, 0x7f80}};
  // 12 cases: the first 8 go through the vector path, the rest through the scalar tail.
  Tensor t = Tensor::empty(DType::F32, {int64_t(cases.size())});
  for (size_t i = 0; i < cases.size(); ++i) std::memcpy(t.data<float>() + i, &cases[i].first, 4);
  const std::string path = (dir / "f.safetensors").string();
  write_safetensors(path, {{"t", t}});
  TensorStore store = TensorStore::open_file(path);
  Tensor b = store.load("t", DType::BF16);
  for (size_t i = 0; i < cases.size(); ++i) EXPECT_EQ(b.bits16()[i], cases[i].second) << "case " << i;

  Tensor nan = Tensor::empty(DType::F32, {1});
  nan.data<float>()[0] = std::nanf("");
  write_safetensors(path, {{"n", nan}});
  EXPECT_TRUE(std::isnan(core::bf16_to_f32(TensorStore::open_file(path).load("n", DType::BF16).bits16()[0])));
}

TEST(SafetensorsLoad, F16AndF64Sources) {
  TempDir dir;
  Tensor f16 = Tensor::empty(DType::F16, {3});
  const uint16_t half_bits[] = {0x3c00, 0xc000, 0x3555};  // 1, -2, 0.333251953125
  std::memcpy(f16.raw(), half_bits, 6);
  Tensor f64 = Tensor::empty(DType::F64, {2});
  f64.data<double>()[0] = 0.1;
  f64.data<double>()[1] = -1e300;
  const std::string path = (dir / "m.safetensors").string();
  write_safetensors(path, {{"h", f16}, {"d", f64}});  // d starts at data offset 6: a misaligned F64
  TensorStore store = TensorStore::open_file(path);
  Tensor h = store.load("h", DType::F32);
  EXPECT_EQ(h.data<float>()[0], 1.0f);
  EXPECT_EQ(h.data<float>()[1], -2.0f);
  EXPECT_EQ(h.data<float>()[2], 0.333251953125f);
  Tensor d = store.load("d", DType::F32);
  EXPECT_EQ(d.data<float>()[0], 0.1f);
  EXPECT_TRUE(std::isinf(d.data<float>()[1]) && d.data<float>()[1] < 0);
}

// ---------------------------------------------------------------------------------------------
// Model folders

TEST(TensorStoreDir, NoWeightsInFolder) {
  TempDir dir;
  write_file(dir / "config.json", "{}");
  expect_contains(error_of([&] { TensorStore::open_model_dir(dir.str()); }),
                  {dir.str(), "no model.safetensors or model.safetensors.index.json", "pytorch_model.bin", "save_pretrained"});
  write_file(dir / "pytorch_model.bin", "pickle");
  expect_contains(error_of([&] { TensorStore::open_model_dir(dir.str()); }), {"it has pytorch_model.bin"});
}

TEST(TensorStoreDir, MissingFolder) {
  TempDir dir;
  const std::string missing = (dir / "nope").string();
  expect_contains(error_of([&] { TensorStore::open_model_dir(missing); }), {missing, "not found"});
}

TEST(TensorStoreDir, MissingTensorAndShapeMismatch) {
  TempDir dir;
  write_safetensors((dir / "model.safetensors").string(), {{"w", f32_tensor({2, 3}, 0.f)}});
  TensorStore store = TensorStore::open_model_dir(dir.str());
  const std::string file = (dir / "model.safetensors").string();
  expect_contains(error_of([&] { store.load("lm_head.weight", DType::F32); }),
                  {file, "tensor 'lm_head.weight' is missing", "config.json"});
  expect_contains(error_of([&] { store.load("w", DType::F32, {3, 3}); }),
                  {file, "tensor 'w' has shape [2, 3], config.json implies [3, 3]"});
  EXPECT_EQ(store.load("w", DType::F32, {2, 3}).numel(), 6);
}

TEST(TensorStoreDir, ShardedRoundTrip) {
  TempDir dir;
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (int i = 0; i < 5; ++i) tensors.emplace_back("layer" + std::to_string(i) + ".w", f32_tensor({4, 4}, float(i)));
  tensors.emplace_back("big", f32_tensor({64}, 7.f));  // 256 bytes: larger than the limit, alone in its shard
  write_safetensors_sharded(dir.str(), tensors, 150);
  // 64 bytes each: shards {0,1}, {2,3}, {4}, {big}
  EXPECT_TRUE(std::filesystem::exists(dir / "model-00001-of-00004.safetensors"));
  EXPECT_TRUE(std::filesystem::exists(dir / "model-00004-of-00004.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir / "model.safetensors"));
  auto index = nlohmann::json::parse(test::read_file(dir / "model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 5 * 64 + 256);
  EXPECT_EQ(index["weight_map"]["layer2.w"], "model-00002-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["big"], "model-00004-of-00004.safetensors");

  TensorStore store = TensorStore::open_model_dir(dir.str());
  EXPECT_EQ(store.source(), (dir / "model.safetensors.index.json").string());
  ASSERT_EQ(store.names().size(), tensors.size());
  for (const auto& [name, t] : tensors) EXPECT_TRUE(same_bytes(store.load(name, DType::F32, t.shape()), t)) << name;
  EXPECT_NE(store.info("big").file.find("model-00004-of-00004.safetensors"), std::string::npos);

  // Everything under the limit: one model.safetensors, and the stale index goes.
  write_safetensors_sharded(dir.str(), tensors, size_t(1) << 20);
  EXPECT_TRUE(std::filesystem::exists(dir / "model.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir / "model.safetensors.index.json"));
  EXPECT_EQ(TensorStore::open_model_dir(dir.str()).names().size(), tensors.size());
}

TEST(TensorStoreDir, IndexNamingMissingShard) {
  TempDir dir;
  write_safetensors((dir / "model-00001-of-00002.safetensors").string(), {{"a", f32_tensor({2}, 0.f)}});
  write_file(dir / "model.safetensors.index.json",
             R"({"metadata":{"total_size":16},"weight_map":{"a":"model-00001-of-00002.safetensors",)"
             R"("b":"model-00002-of-00002.safetensors","c":"model-00002-of-00002.safetensors"}})");
  expect_contains(error_of([&] { TensorStore::open_model_dir(dir.str()); }),
                  {"model.safetensors.index.json", "shard 'model-00002-of-00002.safetensors'", "tensor 'b' and 1 more",
                   "missing"});
}

TEST(TensorStoreDir, IndexNamingTensorAbsentFromShard) {
  TempDir dir;
  write_safetensors((dir / "s1.safetensors").string(), {{"a", f32_tensor({2}, 0.f)}});
  write_file(dir / "model.safetensors.index.json", R"({"weight_map":{"a":"s1.safetensors","ghost":"s1.safetensors"}})");
  expect_contains(error_of([&] { TensorStore::open_model_dir(dir.str()); }),
                  {"model.safetensors.index.json", "tensor 'ghost'", "shard 's1.safetensors'", "does not contain it"});
}

TEST(TensorStoreDir, IndexWithoutWeightMap) {
  TempDir dir;
  write_file(dir / "model.safetensors.index.json", R"({"metadata":{}})");
  expect_contains(error_of([&] { TensorStore::open_model_dir(dir.str()); }),
                  {"model.safetensors.index.json", "weight_map"});
}

// ---------------------------------------------------------------------------------------------
// The real tiny checkpoint

// The weights an HF LlamaForCausalLM without biases has (spec §4.2), written out here on purpose
// rather than taken from the model module, so these tests check the file against the spec.
std::map<std::string, core::Shape> llama_weight_shapes(const HfConfig& c) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  std::map<std::string, core::Shape> out = {{"model.embed_tokens.weight", {V, H}}, {"model.norm.weight", {H}}};
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string l = "model.layers." + std::to_string(i) + ".";
    out[l + "self_attn.q_proj.weight"] = {q, H};
    out[l + "self_attn.k_proj.weight"] = {kv, H};
    out[l + "self_attn.v_proj.weight"] = {kv, H};
    out[l + "self_attn.o_proj.weight"] = {H, q};
    out[l + "mlp.gate_proj.weight"] = {I, H};
    out[l + "mlp.up_proj.weight"] = {I, H};
    out[l + "mlp.down_proj.weight"] = {H, I};
    out[l + "input_layernorm.weight"] = {H};
    out[l + "post_attention_layernorm.weight"] = {H};
  }
  if (!c.tie_word_embeddings) out["lm_head.weight"] = {V, H};
  return out;
}

TEST(TensorStoreShared, Stories260K) {
  ZL_REQUIRE_SHARED(config_path, "models/stories260K-hf/config.json");
  const std::string dir = std::filesystem::path(config_path).parent_path().string();
  HfConfig config = load_hf_config(config_path);
  TensorStore store = TensorStore::open_model_dir(dir);
  ASSERT_EQ(store.names().size(), 47u);
  auto expected = llama_weight_shapes(config);
  ASSERT_EQ(expected.size(), 47u);
  EXPECT_FALSE(store.has("lm_head.weight"));
  for (const auto& [name, shape] : expected) {
    ASSERT_TRUE(store.has(name)) << name;
    EXPECT_EQ(store.info(name).dtype_name, "F32") << name;
    Tensor t = store.load(name, DType::F32, shape);
    EXPECT_EQ(std::memcmp(t.raw(), store.info(name).data, t.nbytes()), 0) << name;
  }
  EXPECT_EQ(SafetensorsFile::open(dir + "/model.safetensors")->metadata().at("format"), "pt");
  // Norm weights of a trained model are not all zero: the data really is the checkpoint's.
  Tensor norm = store.load("model.norm.weight", DType::F32, {64});
  double sum = 0;
  for (int i = 0; i < 64; ++i) sum += std::abs(norm.data<float>()[i]);
  EXPECT_GT(sum, 1.0);
}

TEST(TensorStoreShared, Stories260KUntied) {
  ZL_REQUIRE_SHARED(config_path, "models/stories260K-hf-untied/config.json");
  const std::string dir = std::filesystem::path(config_path).parent_path().string();
  HfConfig config = load_hf_config(config_path);
  EXPECT_FALSE(config.tie_word_embeddings);
  TensorStore store = TensorStore::open_model_dir(dir);
  ASSERT_EQ(store.names().size(), 48u);
  auto expected = llama_weight_shapes(config);
  ASSERT_EQ(expected.size(), 48u);
  for (const auto& [name, shape] : expected) EXPECT_EQ(store.info(name).shape, shape) << name;
  Tensor head = store.load("lm_head.weight", DType::F32, {512, 64});
  Tensor embed = store.load("model.embed_tokens.weight", DType::F32, {512, 64});
  EXPECT_TRUE(same_bytes(head, embed));  // the untied twin holds a copy of the embedding
}

}  // namespace
}  // namespace zerolora::io
