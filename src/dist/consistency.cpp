#include "dist/consistency.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "core/error.h"

namespace zerolora::dist {

namespace {

uint64_t fnv1a_64(const std::string& text) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (unsigned char c : text) hash = (hash ^ c) * 0x100000001b3ull;
  return hash;
}

// A value short enough for one line: whole when short, otherwise a window around `focus`.
std::string excerpt(const std::string& value, size_t focus) {
  constexpr size_t kShort = 120, kBefore = 40;
  if (value.size() <= kShort) return "\"" + value + "\"";
  size_t begin = focus > kBefore ? focus - kBefore : 0;
  std::string text = (begin > 0 ? "..." : "") + value.substr(begin, kShort);
  if (begin + kShort < value.size()) text += "...";
  return "\"" + text + "\" (" + std::to_string(value.size()) + " bytes)";
}

size_t first_difference(const std::string& a, const std::string& b) {
  auto [pa, pb] = std::mismatch(a.begin(), a.end(), b.begin(), b.end());
  return size_t(pa - a.begin());
}

}  // namespace

void check_same_on_all_ranks(Comm& comm, const std::string& key, const std::string& value) {
  uint64_t hash = fnv1a_64(value);
  std::string hash_bytes(sizeof hash, '\0');
  std::memcpy(hash_bytes.data(), &hash, sizeof hash);
  std::vector<std::string> hashes = comm.all_gather_bytes(hash_bytes);
  if (std::all_of(hashes.begin(), hashes.end(), [&](const std::string& h) { return h == hashes[0]; }))
    return;

  // They differ: fetch the values themselves (every rank takes this branch, so the collective matches).
  std::vector<std::string> values = comm.all_gather_bytes(value);
  std::vector<std::string> distinct;  // in order of first appearance by rank
  std::vector<std::vector<int>> ranks_with;
  for (int r = 0; r < int(values.size()); ++r) {
    auto it = std::find(distinct.begin(), distinct.end(), values[r]);
    if (it == distinct.end()) {
      distinct.push_back(values[r]);
      ranks_with.emplace_back();
      it = distinct.end() - 1;
    }
    ranks_with[it - distinct.begin()].push_back(r);
  }
  // A hash collision with equal values is astronomically unlikely, but then there is nothing to report.
  if (distinct.size() < 2) return;

  size_t focus = first_difference(distinct[0], distinct[1]);
  std::string groups;
  for (size_t g = 0; g < distinct.size(); ++g) {
    std::string ranks;
    for (int r : ranks_with[g]) {
      if (!ranks.empty()) ranks += ",";
      ranks += std::to_string(r);
    }
    bool several = ranks_with[g].size() > 1;
    groups += (g ? "; " : "") + std::string(several ? "ranks " : "rank ") + ranks +
              (several ? " have " : " has ") + excerpt(distinct[g], focus);
  }
  throw core::Error(key, "differs between ranks: " + groups,
                    "start every rank with the same " + key +
                        " (same files, flags, environment and build on every node)");
}

}  // namespace zerolora::dist
