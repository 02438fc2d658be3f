// Start-up checks that every rank agrees on what it is about to do (same config, same data, same
// model), so a misconfigured node fails at once with a readable message instead of producing
// silently different weights or a hang hours later.
#pragma once
#include <string>

#include "dist/comm.h"

namespace zerolora::dist {

// Collective: every rank must call it with the same key. Compares a 64-bit hash of `value` across
// ranks; if any differ, gathers the values and throws core::Error on every rank (all ranks see the
// same evidence, so all throw together and none is left waiting), naming the key, the ranks in each
// group and their values (long values shown around the first difference).
void check_same_on_all_ranks(Comm& comm, const std::string& key, const std::string& value);

}  // namespace zerolora::dist
