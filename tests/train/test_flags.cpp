// The one flag parser every command uses (train/flags.h): HF value syntax, help, errors, the older spellings.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "test_util.h"
#include "train/flags.h"

using namespace zerolora::train;
using zerolora::test::error_of;

namespace {

struct Opts {
  std::string dir, adapter, name = "x";
  int64_t n = 4;
  uint64_t seed = 7;
  double rate = 0.5;
  bool on = false;
  std::vector<std::string> list = {"a", "b"};
};

FlagSet make(Opts& o) {
  FlagSet fs("zerolora thing", "usage: zerolora thing --model_name_or_path DIR [flags]");
  fs.add(model_name_or_path_flag(o.dir));
  fs.add(adapter_flag(o.adapter));
  fs.add(int_flag("n", o.n, "a count")).in_group("numbers");
  fs.add(seed_flag(o.seed)).in_group("numbers");
  fs.add(float_flag("rate", o.rate, "a rate")).in_group("numbers");
  fs.add(bool_flag("on", o.on, "a switch"));
  fs.add(list_flag("list", o.list, "NAME...", "names"));
  fs.add(choice_flag("name", o.name, {"x", "y"}, "a choice")).with_deprecated_alias("old_name");
  return fs;
}

std::string parse_error(const std::vector<std::string>& argv) {
  Opts o;
  FlagSet fs = make(o);
  return error_of([&] { fs.parse(argv); });
}

}  // namespace

TEST(FlagSet, HfValueSyntax) {
  Opts o;
  FlagSet fs = make(o);
  ASSERT_TRUE(fs.parse(std::vector<std::string>{"--model_name_or_path", "m", "--n=12", "--rate", "2e-5", "--on",
                                                "--list", "c", "d", "e", "--seed", "3", "--name", "Y"}));
  EXPECT_EQ(o.dir, "m");
  EXPECT_EQ(o.n, 12);
  EXPECT_DOUBLE_EQ(o.rate, 2e-5);
  EXPECT_TRUE(o.on);
  EXPECT_EQ(o.list, (std::vector<std::string>{"c", "d", "e"}));
  EXPECT_EQ(o.seed, 3u);
  EXPECT_EQ(o.name, "y");  // choices are case-insensitive, as HF's enums
  EXPECT_TRUE(fs.given("n"));
  EXPECT_FALSE(fs.given("adapter"));
  EXPECT_TRUE(fs.notes().empty());
  // dashes work like underscores; bools take a value
  Opts p;
  FlagSet fs2 = make(p);
  ASSERT_TRUE(fs2.parse(std::vector<std::string>{"--model-name-or-path", "m", "--on", "False"}));
  EXPECT_EQ(p.dir, "m");
  EXPECT_FALSE(p.on);
}

TEST(FlagSet, HelpRequestedAnywhere) {
  Opts o;
  FlagSet fs = make(o);
  EXPECT_FALSE(fs.parse(std::vector<std::string>{"--n", "3", "--help"}));
  EXPECT_FALSE(fs.parse(std::vector<std::string>{"-h"}));
}

TEST(FlagSet, HelpGroupsDefaultsRequired) {
  Opts o;
  const std::string help = make(o).help();
  EXPECT_EQ(help.rfind("usage: zerolora thing --model_name_or_path DIR [flags]\n", 0), 0u) << help;
  for (const char* fragment : {"\nflags:\n", "\nnumbers:\n", "--model_name_or_path DIR", "[required]",
                               "--n INT", "[default: 4]", "--seed INT", "[default: 7]", "--rate FLOAT",
                               "[default: 0.5]", "--on BOOL", "[default: False]", "--list NAME...",
                               "[default: a b]", "--name {x,y}", "[default: x]", "--adapter DIR"})
    EXPECT_NE(help.find(fragment), std::string::npos) << fragment << "\n" << help;
  EXPECT_EQ(help.find("old_name"), std::string::npos) << "a deprecated spelling is not advertised";
}

TEST(FlagSet, ErrorsAreOneLineWithAFix) {
  EXPECT_EQ(parse_error({}), "--model_name_or_path: is required (fix: pass --model_name_or_path ./llama-7b)");
  EXPECT_EQ(parse_error({"--model_name_or_path", "m", "--nn", "3"}),
            "zerolora thing: unknown flag --nn; did you mean --n? (fix: see zerolora thing --help for the flags)");
  EXPECT_EQ(parse_error({"--model_name_or_path", "m", "--n", "3.5"}),
            "--n: '3.5' is not an integer (fix: write a whole number, e.g. --n 8)");
  EXPECT_EQ(parse_error({"--model_name_or_path", "m", "--seed", "-1"}),
            "--seed: '-1' is not a whole number >= 0 (fix: write a whole number, e.g. --seed 42)");
  EXPECT_EQ(parse_error({"--model_name_or_path", "m", "--name", "z"}), "--name: 'z' is not supported (fix: use one of {x,y})");
  EXPECT_EQ(parse_error({"--model_name_or_path", "m", "--rate"}), "--rate: needs a value (fix: write --rate FLOAT)");
  EXPECT_NE(parse_error({"--model_name_or_path", "m", "stray"}).find("unexpected argument 'stray' after "
                                                                   "--model_name_or_path"),
            std::string::npos);
  // names people reach for from other tools
  EXPECT_NE(parse_error({"--base", "m"}).find("did you mean --model_name_or_path?"), std::string::npos);
  EXPECT_NE(parse_error({"--model_name_or_path", "m", "--lora", "a"}).find("did you mean --adapter?"),
            std::string::npos);
  for (const auto& msg : {parse_error({}), parse_error({"--x"})}) EXPECT_EQ(msg.find('\n'), std::string::npos);
  // a FlagError is what the command line prints once per mpirun job
  Opts o;
  FlagSet fs = make(o);
  EXPECT_THROW(fs.parse(std::vector<std::string>{"--bogus"}), FlagError);
}

TEST(FlagSet, SharedDefinitionsCheckTheirRanges) {
  int64_t threads = 0, length = 512;
  FlagSet fs("zerolora t", "usage");
  fs.add(num_threads_flag(threads));
  fs.add(model_max_length_flag(length));
  EXPECT_EQ(error_of([&] { fs.parse(std::vector<std::string>{"--num_threads", "-2"}); }),
            "--num_threads: -2 is out of range: must be >= 0 (0 = the default) (fix: pass a value that is >= 0 (0 = "
            "the default))");
  EXPECT_NE(error_of([&] { fs.parse(std::vector<std::string>{"--model_max_length", "1"}); })
                .find("--model_max_length: 1 is out of range: must be >= 2"),
            std::string::npos);
}

TEST(FlagSet, OlderSpellingsWorkWithANote) {
  Opts o;
  FlagSet fs = make(o);
  fs.accept_positional_as("model_name_or_path");
  ASSERT_TRUE(fs.parse(std::vector<std::string>{"./model", "--old_name", "y", "--n", "2"}));
  EXPECT_EQ(o.dir, "./model");
  EXPECT_EQ(o.name, "y");
  ASSERT_EQ(fs.notes().size(), 2u);
  EXPECT_EQ(fs.notes()[0], "a positional model folder is the older form; write --model_name_or_path ./model");
  EXPECT_EQ(fs.notes()[1], "--old_name is the older name of --name; write --name");
  // a second folder, or one after the flag was given, is an error
  Opts p;
  FlagSet fs2 = make(p);
  fs2.accept_positional_as("model_name_or_path");
  EXPECT_NE(error_of([&] { fs2.parse(std::vector<std::string>{"--model_name_or_path", "a", "--n", "1", "b"}); })
                .find("unexpected argument 'b'"),
            std::string::npos);
}

TEST(FlagSet, LauncherRankFromTheEnvironment) {
  // saved and restored: this process may itself be a rank that tests/dist's helpers launched
  const char* names[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"};
  std::vector<std::pair<std::string, std::string>> saved;
  for (const char* var : names)
    if (const char* v = std::getenv(var)) saved.push_back({var, v});
  for (const char* var : names) unsetenv(var);
  EXPECT_EQ(launcher_rank(), 0);
  setenv("PMIX_RANK", "3", 1);
  EXPECT_EQ(launcher_rank(), 3);
  setenv("OMPI_COMM_WORLD_RANK", "1", 1);
  EXPECT_EQ(launcher_rank(), 1);
  for (const char* var : names) unsetenv(var);
  for (const auto& [var, value] : saved) setenv(var.c_str(), value.c_str(), 1);
}
