// Start-up checks that every rank agrees on what it is about to do (same config, same data, same
// model), so a misconfigured node fails at once with a readable message instead of producing
// silently different weights or a hang hours later. On a cluster the messages name the host
// (hostname) of each rank, since "rank 5" alone does not say which node holds the stale copy.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "dist/comm.h"

namespace zerolora::dist {

// Collective: every rank must call it with the same key. Compares a 64-bit hash of `value` across
// ranks; if any differ, gathers the values and the hostnames and throws core::Error on every rank (all
// ranks see the same evidence, so all throw together and none is left waiting), naming the key, the
// ranks in each group, their values (long values shown around the first difference) and their hosts.
void check_same_on_all_ranks(Comm& comm, const std::string& key, const std::string& value);

// A file every rank is about to read. hash_content = false compares the size only: for model weights
// (gigabytes, read whole at load anyway), where a truncated or different-size copy is the common
// failure and hashing would add seconds per rank to every start.
struct FileToCompare {
  std::string path;
  bool hash_content = true;
};

// What this rank sees at `file.path`, one line: "absent", "not a regular file", "unreadable (...)",
// "<size> bytes" (size only) or "<size> bytes, content hash <16 hex digits>". The hash is a fast
// non-cryptographic 64-bit one: it tells a stale or partial copy from the right one, not an
// adversary's file.
std::string describe_file(const FileToCompare& file);

// Collective: every rank must call it with the same list (the same paths as given on the command line:
// on a cluster they name files on a shared filesystem or on each node's local copy). Compares what
// each rank sees at each path; on a difference throws core::Error on every rank naming the first
// differing file, the ranks and hosts on each side and what each sees, and how many other files
// differ. Files absent on every rank pass (the loader reports them); absent on some ranks fails here.
// A path in some ranks' lists but not in another's counts as absent on that rank (lists differ only
// where they come from a folder listing, as training_input_files' weight shards do).
void check_same_files_on_all_ranks(Comm& comm, const std::vector<FileToCompare>& files);

// The files of a Hugging Face model folder a training run reads, in a fixed order: config.json and the
// tokenizer files (tokenizer.model, tokenizer.json, tokenizer_config.json, special_tokens_map.json;
// hashed), the safetensors index if any (hashed) and every *.safetensors weight file (size only), then
// each non-empty path of `data_paths` (hashed). Paths are model_dir / name, as every rank forms them.
std::vector<FileToCompare> training_input_files(const std::string& model_dir,
                                                const std::vector<std::string>& data_paths);

// This machine's host name (gethostname), "?" when it has none.
std::string host_name();

// The text of a disagreement, shared by both checks (pure, unit-tested): one group per distinct
// value in order of first appearance by rank, e.g. `rank 1 has "b" (host node2); ranks 0,2 have "a"
// (hosts node1, node3)`. values[r] and hosts[r] are rank r's; values are shown whole when short,
// else around the first difference between the first two groups (quote = true wraps them in quotes).
std::string describe_rank_groups(const std::vector<std::string>& values, const std::vector<std::string>& hosts,
                                 bool quote = true);

// The 64-bit content hash describe_file uses (exposed for its unit test).
uint64_t content_hash_64(const std::string& bytes);

}  // namespace zerolora::dist
