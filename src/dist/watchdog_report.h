// What the collective watchdog prints when a rank has waited too long in a collective: which ranks it is
// waiting for and why, from the status the other ranks reported. Pure text so it is unit-tested
// without a hung job. Used by mpi_comm.cpp; not part of the trainer-facing API.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace zerolora::dist {

// What a rank can be waiting in; the number travels in watchdog status replies.
enum class CollectiveName : int64_t {
  AllReduceSum, ReduceScatterSum, AllGather, Broadcast, Barrier, AllReduceScalar, AllGatherBytes
};
const char* collective_name_text(int64_t code);  // "?" for an unknown code

// One other rank's answer to "where are you?" (answered = false: it did not reply in time).
struct RankStatus {
  bool answered = false;
  int64_t issued = 0;              // collectives it has issued; it entered #seq iff issued > seq
  int64_t waiting_seq = -1;        // the collective it is blocked in, -1 none
  int64_t waiting_name = -1;
  int64_t name_at_asked_seq = -1;  // what its collective #seq was, -1 unknown
};

// One line: "rank R: collective <name> #<seq> timed out after X s waiting for ranks A, B (rank A: why;
// rank B: why); (fix: ...)". others[r] is rank r's status; others[rank] is ignored. hosts[r] is rank r's
// host name (empty: unknown); when the ranks span several hosts each late rank is named with its host
// ("rank A on node2: why"), which says which node to look at (a dead node's own output may never reach
// mpirun).
std::string collective_timeout_message(int rank, CollectiveName name, int64_t seq, double waited_s,
                                       double timeout_s, const std::vector<RankStatus>& others,
                                       const std::vector<std::string>& hosts = {});

}  // namespace zerolora::dist
