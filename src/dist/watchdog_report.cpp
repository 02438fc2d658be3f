#include "dist/watchdog_report.h"

#include <algorithm>
#include <cstdio>
#include <iterator>

namespace zerolora::dist {

namespace {

constexpr const char* kCollectiveNames[] = {"all_reduce_sum", "reduce_scatter_sum", "all_gather",
                                            "broadcast",      "barrier",            "all_reduce_scalar",
                                            "all_gather_bytes"};

std::string format_seconds(double seconds) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f", seconds);
  return text;
}

// Why rank r holds up collective #seq, or "" when it does not (it is inside the same collective).
std::string why_late(const RankStatus& status, CollectiveName name, int64_t seq) {
  if (!status.answered) return "no answer (busy outside MPI, stuck, or dead)";
  if (status.issued <= seq) {
    std::string why = "has not reached it";
    if (status.waiting_seq >= 0)
      why += std::string(", waiting in ") + collective_name_text(status.waiting_name) + " #" +
             std::to_string(status.waiting_seq);
    return why;
  }
  if (status.name_at_asked_seq >= 0 && status.name_at_asked_seq != int64_t(name))
    return std::string("its collective #") + std::to_string(seq) + " is " +
           collective_name_text(status.name_at_asked_seq) +
           " (the ranks called collectives in different orders)";
  return "";
}

}  // namespace

const char* collective_name_text(int64_t code) {
  if (code < 0 || code >= int64_t(std::size(kCollectiveNames))) return "?";
  return kCollectiveNames[code];
}

std::string collective_timeout_message(int rank, CollectiveName name, int64_t seq, double waited_s,
                                       double timeout_s, const std::vector<RankStatus>& others,
                                       const std::vector<std::string>& hosts) {
  // Host names only help when there is more than one: on one machine "rank 2 on node1" is noise.
  const bool name_hosts = int(hosts.size()) == int(others.size()) &&
                          std::any_of(hosts.begin(), hosts.end(), [&](const std::string& h) { return h != hosts[0]; });
  std::string late_ranks, details;
  for (int r = 0; r < int(others.size()); ++r) {
    if (r == rank) continue;
    std::string why = why_late(others[r], name, seq);
    if (why.empty()) continue;
    if (!late_ranks.empty()) late_ranks += ", ";
    late_ranks += std::to_string(r);
    if (!details.empty()) details += "; ";
    details += "rank " + std::to_string(r);
    if (name_hosts && !hosts[size_t(r)].empty()) details += " on " + hosts[size_t(r)];
    details += ": " + why;
  }
  std::string message = "rank " + std::to_string(rank) + ": collective " +
                        collective_name_text(int64_t(name)) + " #" + std::to_string(seq) +
                        " timed out after " + format_seconds(waited_s) + " s waiting for ranks ";
  message += late_ranks.empty() ? "(none identified: every rank entered it; the network may be stalled)"
                                : late_ranks + " (" + details + ")";
  message += "; (fix: if those ranks are legitimately slow here (loading a model, a long evaluation), "
             "raise ZEROLORA_COLLECTIVE_TIMEOUT_S (now " + format_seconds(timeout_s) +
             " s); otherwise look in their output for what stopped them)";
  return message;
}

}  // namespace zerolora::dist
