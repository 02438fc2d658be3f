// Start-up checks on a cluster: every rank reads the same model and data files (size + content hash), and
// a disagreement names the host of each rank, as does the collective watchdog when the ranks span hosts.
// The DistFilesWorker.* tests run under mpirun (DistMpi.FilesChecked* launch them), each rank reading
// "the same path" relative to its own working folder: what a node with a stale local copy looks like.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "core/error.h"
#include "dist/consistency.h"
#include "dist/solo_comm.h"
#include "dist/watchdog_report.h"
#include "mpi_test_support.h"
#include "test_util.h"

using namespace zerolora;
using namespace zerolora::dist;
using zerolora::test::TempDir;
using zerolora::test::write_file;
namespace fs = std::filesystem;

TEST(FileConsistency, ContentHashSeesEveryByteAndTheLength) {
  const std::string a = "{\"conversations\": []}";
  EXPECT_EQ(content_hash_64(a), content_hash_64(a));
  std::string flipped = a;
  flipped[7] ^= 1;  // one bit anywhere, here inside the first 8-byte word
  EXPECT_NE(content_hash_64(flipped), content_hash_64(a));
  flipped = a;
  flipped.back() ^= 0x20;  // in the zero-padded tail word
  EXPECT_NE(content_hash_64(flipped), content_hash_64(a));
  EXPECT_NE(content_hash_64("a"), content_hash_64(std::string("a\0", 2)));  // padding is not content
  EXPECT_NE(content_hash_64(""), content_hash_64(std::string(8, '\0')));
}

TEST(FileConsistency, DescribesWhatThisRankSees) {
  TempDir dir;
  EXPECT_EQ(describe_file({(dir / "missing.json").string()}), "absent");
  EXPECT_EQ(describe_file({dir.str()}), "not a regular file");

  // Larger than describe_file's 1 MiB read buffer, and not a multiple of 8: the hash of the file read in
  // pieces equals the hash of its bytes in one string.
  std::string bytes(size_t(3) << 20, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = char((i * 2654435761u) >> 13);
  bytes += "tail";
  write_file(dir / "data.json", bytes);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(content_hash_64(bytes)));
  EXPECT_EQ(describe_file({(dir / "data.json").string()}),
            std::to_string(bytes.size()) + " bytes, content hash " + hex);
  EXPECT_EQ(describe_file({(dir / "data.json").string(), /*hash_content=*/false}),
            std::to_string(bytes.size()) + " bytes");
}

TEST(FileConsistency, GroupsNameRanksAndHosts) {
  EXPECT_EQ(describe_rank_groups({"a", "b", "a", "a"}, {"n1", "n1", "n2", "n2"}),
            "ranks 0,2,3 have \"a\" (hosts n1, n2); rank 1 has \"b\" (host n1)");
  EXPECT_EQ(describe_rank_groups({"10 bytes", "absent"}, {"n1", "n2"}, /*quote=*/false),
            "rank 0 has 10 bytes (host n1); rank 1 has absent (host n2)");
  EXPECT_EQ(describe_rank_groups({"x", "y"}, {}), "rank 0 has \"x\"; rank 1 has \"y\"");  // hosts unknown
}

TEST(FileConsistency, OneRankAgreesWithItself) {
  TempDir dir;
  write_file(dir / "config.json", "{}");
  SoloComm comm;
  EXPECT_NO_THROW(check_same_files_on_all_ranks(comm, training_input_files(dir.str(), {"/no/such/data.json"})));
  EXPECT_NO_THROW(check_same_on_all_ranks(comm, "model", "llama"));
}

TEST(FileConsistency, TrainingInputsOfAModelFolder) {
  TempDir dir;
  write_file(dir / "config.json", "{}");
  write_file(dir / "model-00002-of-00002.safetensors", "x");
  write_file(dir / "model-00001-of-00002.safetensors", "x");
  write_file(dir / "notes.txt", "not read by training");
  const auto files = training_input_files(dir.str(), {"/d/train.json", "", "/d/eval.json"});
  std::vector<std::string> names;
  std::vector<bool> hashed;
  for (const auto& f : files) {
    names.push_back(f.path.rfind(dir.str(), 0) == 0 ? fs::path(f.path).filename().string() : f.path);
    hashed.push_back(f.hash_content);
  }
  EXPECT_EQ(names, (std::vector<std::string>{"config.json", "tokenizer.model", "tokenizer.json",
                                             "tokenizer_config.json", "special_tokens_map.json",
                                             "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                                             "model-00002-of-00002.safetensors", "/d/train.json", "/d/eval.json"}));
  EXPECT_EQ(hashed, (std::vector<bool>{true, true, true, true, true, true, false, false, true, true}));
}

TEST(WatchdogMessage, NamesTheHostOfEachLateRankWhenRanksSpanHosts) {
  std::vector<RankStatus> others(3);
  others[1] = {true, 5, 4, int64_t(CollectiveName::AllReduceSum), int64_t(CollectiveName::AllReduceSum)};
  // others[2]: no answer
  const std::string m =
      collective_timeout_message(0, CollectiveName::AllReduceSum, 4, 12.0, 10, others, {"zlh1", "zlh1", "zlh2"});
  EXPECT_NE(m.find("waiting for ranks 2 (rank 2 on zlh2: no answer"), std::string::npos) << m;
  // On one host the host name says nothing: the message stays as before.
  const std::string one =
      collective_timeout_message(0, CollectiveName::AllReduceSum, 4, 12.0, 10, others, {"n", "n", "n"});
  EXPECT_NE(one.find("waiting for ranks 2 (rank 2: no answer"), std::string::npos) << one;
  EXPECT_EQ(one, collective_timeout_message(0, CollectiveName::AllReduceSum, 4, 12.0, 10, others));
}

// ---- under mpirun ------------------------------------------------------------------------------------

namespace {

// Runs fn with the working folder set to <ZL_FILES_TEST_DIR>/rank<r>, holding data.json with `content`.
template <class Fn>
void in_rank_folder(int rank, const std::string& content, Fn fn) {
  const char* root = std::getenv("ZL_FILES_TEST_DIR");
  ASSERT_TRUE(root) << "ZL_FILES_TEST_DIR unset (the launcher sets it)";
  const fs::path mine = fs::path(root) / ("rank" + std::to_string(rank));
  fs::create_directories(mine);
  write_file(mine / "data.json", content);
  const fs::path before = fs::current_path();
  fs::current_path(mine);
  fn();
  fs::current_path(before);
}

}  // namespace

TEST(DistFilesWorker, SameFilesPass) {
  ZL_REQUIRE_MPI_WORKER();
  Comm& comm = zerolora::test::worker_comm();
  in_rank_folder(comm.rank(), "[{\"id\": 1}]", [&] {
    EXPECT_NO_THROW(check_same_files_on_all_ranks(comm, {{"data.json"}, {"absent-everywhere.json"}}));
  });
}

TEST(DistFilesWorker, AStaleCopyOnOneRankIsNamedWithItsHost) {
  ZL_REQUIRE_MPI_WORKER();
  Comm& comm = zerolora::test::worker_comm();
  const int last = comm.size() - 1;
  // Same size, one byte different: only the content hash can tell.
  in_rank_folder(comm.rank(), comm.rank() == last ? "[{\"id\": 2}]" : "[{\"id\": 1}]", [&] {
    const std::string m = zerolora::test::error_of([&] {
      check_same_files_on_all_ranks(comm, {{"data.json"}});
    });
    const std::string size = "11 bytes, content hash ";
    EXPECT_EQ(m.rfind("data.json: differs between ranks: rank", 0), 0u) << m;
    const std::string others = last == 1 ? "rank 0 has " : "ranks 0," + std::string(last == 2 ? "1" : "1,2") + " have ";
    EXPECT_NE(m.find(others + size), std::string::npos) << m;
    EXPECT_NE(m.find("rank " + std::to_string(last) + " has " + size), std::string::npos) << m;
    EXPECT_NE(m.find("(host " + host_name() + ")"), std::string::npos) << m;  // this rank's own group
    EXPECT_NE(m.find("(fix: give every node the same copy"), std::string::npos) << m;
  });
}

TEST(DistFilesWorker, AFileMissingOnOneRankIsNamed) {
  ZL_REQUIRE_MPI_WORKER();
  Comm& comm = zerolora::test::worker_comm();
  in_rank_folder(comm.rank(), "[]", [&] {
    std::vector<FileToCompare> files = {{"data.json"}, {"config.json"}};
    if (comm.rank() == 1) fs::remove("data.json");
    // Rank 0's folder listing holds one more weight shard than the others': absent on every other rank.
    if (comm.rank() == 0) {
      write_file("model-00009.safetensors", "w");
      files.push_back({"model-00009.safetensors", false});
    }
    const std::string m = zerolora::test::error_of([&] { check_same_files_on_all_ranks(comm, files); });
    EXPECT_EQ(m.rfind("data.json: differs between ranks: ", 0), 0u) << m;  // the first file in the list
    EXPECT_NE(m.find("rank 1 has absent (host "), std::string::npos) << m;
    EXPECT_NE(m.find("; and 1 other input file(s) differ too"), std::string::npos) << m;
  });
}

TEST(DistFilesWorker, ValueDisagreementNamesTheHost) {
  ZL_REQUIRE_MPI_WORKER();
  Comm& comm = zerolora::test::worker_comm();
  const std::string m = zerolora::test::error_of(
      [&] { check_same_on_all_ranks(comm, "data_path", comm.rank() == 1 ? "b.json" : "a.json"); });
  EXPECT_NE(m.find("rank 1 has \"b.json\" (host "), std::string::npos) << m;
  // Each rank sees its own host in its group (under tests/multihost/run.sh the ranks are on different hosts).
  EXPECT_NE(m.find(" (host " + host_name() + ")"), std::string::npos) << m;
}

TEST(DistMpi, FilesCheckedOnTwoRanks) {
  ZL_SKIP_IN_MPI_WORKER();
  TempDir dir;
  auto run = zerolora::test::run_mpi_workers(2, "DistFilesWorker.*",
                                             {"ZEROLORA_COLLECTIVE_TIMEOUT_S=30", "ZL_FILES_TEST_DIR=" + dir.str()}, 120);
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(zerolora::test::count_passed_ranks(run.output), 2) << run.output;
  EXPECT_EQ(run.output.find("SKIPPED ]"), std::string::npos) << "worker tests did not run:\n" << run.output;
}

TEST(DistMpi, FilesCheckedOnThreeRanks) {
  ZL_SKIP_IN_MPI_WORKER();
  TempDir dir;
  auto run = zerolora::test::run_mpi_workers(3, "DistFilesWorker.*",
                                             {"ZEROLORA_COLLECTIVE_TIMEOUT_S=30", "ZL_FILES_TEST_DIR=" + dir.str()}, 120);
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(zerolora::test::count_passed_ranks(run.output), 3) << run.output;
  EXPECT_EQ(run.output.find("SKIPPED ]"), std::string::npos) << "worker tests did not run:\n" << run.output;
}
