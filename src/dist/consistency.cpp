#include "dist/consistency.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <sstream>

#include "core/error.h"

namespace zerolora::dist {

namespace fs = std::filesystem;

namespace {

uint64_t fnv1a_64(const std::string& text) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (unsigned char c : text) hash = (hash ^ c) * 0x100000001b3ull;
  return hash;
}

// A value short enough for one line: whole when short, otherwise a window around `focus`.
std::string excerpt(const std::string& value, size_t focus, bool quote) {
  constexpr size_t kShort = 120, kBefore = 40;
  const char* q = quote ? "\"" : "";
  if (value.size() <= kShort) return q + value + q;
  size_t begin = focus > kBefore ? focus - kBefore : 0;
  std::string text = (begin > 0 ? "..." : "") + value.substr(begin, kShort);
  if (begin + kShort < value.size()) text += "...";
  return q + text + q + " (" + std::to_string(value.size()) + " bytes)";
}

size_t first_difference(const std::string& a, const std::string& b) {
  auto [pa, pb] = std::mismatch(a.begin(), a.end(), b.begin(), b.end());
  return size_t(pa - a.begin());
}

// Content hash state, fed 8-byte words. Each word goes through a multiply-xorshift mix (the finaliser
// of splitmix64) before it is folded in, so every input bit reaches every output bit.
struct WordHash {
  uint64_t state = 0x9e3779b97f4a7c15ull;
  static uint64_t mix(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  }
  void add(uint64_t word) { state = mix(state ^ mix(word)) + 0x9e3779b97f4a7c15ull; }
  // bytes.size() need not be a multiple of 8: the tail is zero-padded (the length is added at the end,
  // so "a" and "a\0" differ).
  void add_bytes(const char* bytes, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, bytes + i, 8);
      add(w);
    }
    if (i < n) {
      uint64_t w = 0;
      std::memcpy(&w, bytes + i, n - i);
      add(w);
    }
  }
};

std::string hex64(uint64_t value) {
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(value));
  return text;
}

std::string join_ranks(const std::vector<int>& ranks) {
  std::string text;
  for (int r : ranks) text += (text.empty() ? "" : ",") + std::to_string(r);
  return text;
}

}  // namespace

std::string host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "?";
  return name;
}

uint64_t content_hash_64(const std::string& bytes) {
  WordHash h;
  h.add_bytes(bytes.data(), bytes.size());
  h.add(bytes.size());
  return h.state;
}

std::string describe_rank_groups(const std::vector<std::string>& values, const std::vector<std::string>& hosts,
                                 bool quote) {
  std::vector<std::string> distinct;  // in order of first appearance by rank
  std::vector<std::vector<int>> ranks_with;
  for (int r = 0; r < int(values.size()); ++r) {
    auto it = std::find(distinct.begin(), distinct.end(), values[r]);
    if (it == distinct.end()) {
      distinct.push_back(values[r]);
      ranks_with.emplace_back();
      it = distinct.end() - 1;
    }
    ranks_with[size_t(it - distinct.begin())].push_back(r);
  }
  const size_t focus = distinct.size() > 1 ? first_difference(distinct[0], distinct[1]) : 0;
  std::string groups;
  for (size_t g = 0; g < distinct.size(); ++g) {
    std::vector<std::string> group_hosts;  // distinct, in rank order
    for (int r : ranks_with[g])
      if (r < int(hosts.size()) && std::find(group_hosts.begin(), group_hosts.end(), hosts[size_t(r)]) ==
                                       group_hosts.end())
        group_hosts.push_back(hosts[size_t(r)]);
    std::string host_text;
    for (const auto& h : group_hosts) host_text += (host_text.empty() ? "" : ", ") + h;
    const bool several = ranks_with[g].size() > 1;
    groups += (g ? "; " : "") + std::string(several ? "ranks " : "rank ") + join_ranks(ranks_with[g]) +
              (several ? " have " : " has ") + excerpt(distinct[g], focus, quote);
    if (!group_hosts.empty()) groups += (group_hosts.size() > 1 ? " (hosts " : " (host ") + host_text + ")";
  }
  return groups;
}

void check_same_on_all_ranks(Comm& comm, const std::string& key, const std::string& value) {
  uint64_t hash = fnv1a_64(value);
  std::string hash_bytes(sizeof hash, '\0');
  std::memcpy(hash_bytes.data(), &hash, sizeof hash);
  std::vector<std::string> hashes = comm.all_gather_bytes(hash_bytes);
  if (std::all_of(hashes.begin(), hashes.end(), [&](const std::string& h) { return h == hashes[0]; }))
    return;

  // They differ: fetch the values themselves and the host names (every rank takes this branch, so the
  // collectives match).
  std::vector<std::string> values = comm.all_gather_bytes(value);
  std::vector<std::string> hosts = comm.all_gather_bytes(host_name());
  // A hash collision with equal values is astronomically unlikely, but then there is nothing to report.
  if (std::all_of(values.begin(), values.end(), [&](const std::string& v) { return v == values[0]; })) return;
  throw core::Error(key, "differs between ranks: " + describe_rank_groups(values, hosts),
                    "start every rank with the same " + key +
                        " (same files, flags, environment and build on every node)");
}

std::string describe_file(const FileToCompare& file) {
  std::error_code ec;
  const fs::file_status status = fs::status(file.path, ec);
  if (ec || !fs::exists(status)) return "absent";
  if (!fs::is_regular_file(status)) return "not a regular file";
  std::FILE* f = std::fopen(file.path.c_str(), "rb");
  if (!f) return std::string("unreadable (") + std::strerror(errno) + ")";
  uint64_t size = 0;
  bool failed = false;
  if (file.hash_content) {  // the size read, not stat's: what this rank would actually load
    WordHash h;
    std::vector<char> buffer(size_t(1) << 20);  // a multiple of 8: words never straddle two reads
    size_t n = 0;
    do {
      n = std::fread(buffer.data(), 1, buffer.size(), f);
      h.add_bytes(buffer.data(), n);
      size += n;
    } while (n == buffer.size());
    h.add(size);
    failed = std::ferror(f) != 0;
    std::fclose(f);
    if (failed) return "unreadable (read error)";
    return std::to_string(size) + " bytes, content hash " + hex64(h.state);
  }
  failed = std::fseek(f, 0, SEEK_END) != 0;
  const long end = std::ftell(f);
  std::fclose(f);
  if (failed || end < 0) return "unreadable (cannot seek)";
  return std::to_string(end) + " bytes";
}

void check_same_files_on_all_ranks(Comm& comm, const std::vector<FileToCompare>& files) {
  // One blob per rank: the host name, then "path\tdescription" per file.
  std::string mine = host_name() + "\n";
  for (const auto& file : files) mine += file.path + "\t" + describe_file(file) + "\n";
  const std::vector<std::string> blobs = comm.all_gather_bytes(mine);
  if (std::all_of(blobs.begin(), blobs.end(), [&](const std::string& b) {
        return b.substr(b.find('\n')) == blobs[0].substr(blobs[0].find('\n'));
      }))
    return;

  // Parse every rank's view. A path missing from a rank's list is absent there: with the same arguments
  // on every rank, lists differ only where a folder listing (the weight shards) does.
  const int world = int(blobs.size());
  std::vector<std::string> hosts(static_cast<size_t>(world));
  std::vector<std::string> order;  // paths in order of first appearance, rank 0's list first
  std::vector<std::map<std::string, std::string>> seen(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r) {
    std::istringstream in(blobs[size_t(r)]);
    std::getline(in, hosts[size_t(r)]);
    std::string line;
    while (std::getline(in, line)) {
      const size_t tab = line.rfind('\t');  // descriptions hold no tab
      const std::string path = line.substr(0, tab), what = line.substr(tab + 1);
      if (std::find(order.begin(), order.end(), path) == order.end()) order.push_back(path);
      seen[size_t(r)][path] = what;
    }
  }
  std::string first_path, first_groups;
  int differing = 0;
  for (const auto& path : order) {
    std::vector<std::string> values(static_cast<size_t>(world));
    for (int r = 0; r < world; ++r) {
      auto it = seen[size_t(r)].find(path);
      values[size_t(r)] = it == seen[size_t(r)].end() ? "absent (not in this rank's list)" : it->second;
    }
    if (std::all_of(values.begin(), values.end(), [&](const std::string& v) { return v == values[0]; })) continue;
    if (differing++ == 0) first_path = path, first_groups = describe_rank_groups(values, hosts, /*quote=*/false);
  }
  if (differing == 0) return;  // only the host names differ
  std::string what = "differs between ranks: " + first_groups;
  if (differing > 1) what += "; and " + std::to_string(differing - 1) + " other input file(s) differ too";
  throw core::Error(first_path, what,
                    "give every node the same copy (a shared filesystem, or copy the files again: "
                    "the sizes or contents above disagree), then start again");
}

std::vector<FileToCompare> training_input_files(const std::string& model_dir,
                                                const std::vector<std::string>& data_paths) {
  const fs::path dir(model_dir);
  std::vector<FileToCompare> files;
  for (const char* name : {"config.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                           "special_tokens_map.json", "model.safetensors.index.json"})
    files.push_back({(dir / name).string(), true});
  // Weight files: whatever this rank's listing shows (a rank that lacks a shard reports it "not checked
  // by this rank", the others give its size), sorted so every rank lists them in the same order.
  std::vector<std::string> weights;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (it->path().extension() == ".safetensors") weights.push_back(it->path().string());
  std::sort(weights.begin(), weights.end());
  for (auto& w : weights) files.push_back({std::move(w), false});
  for (const auto& p : data_paths)
    if (!p.empty()) files.push_back({p, true});
  return files;
}

}  // namespace zerolora::dist
