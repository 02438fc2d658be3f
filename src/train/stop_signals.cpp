#include "train/stop_signals.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <thread>

namespace zerolora::train {

namespace {

std::atomic<int> g_stop_signals{0};
std::atomic<bool> g_graceful{false};

sigset_t stop_signal_set() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}

// Ends the process the way the signal's default action would (a parent sees it killed by `sig`): the
// signal is unblocked in this thread only and sent to it.
[[noreturn]] void end_as_default_action(int sig) {
  signal(sig, SIG_DFL);
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, sig);
  pthread_sigmask(SIG_UNBLOCK, &one, nullptr);
  raise(sig);
  _exit(128 + sig);  // not reached: the default action of SIGTERM/SIGINT ends the process
}

[[noreturn]] void take_signals_forever() {
  const sigset_t set = stop_signal_set();
  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    if (!g_graceful.load()) end_as_default_action(sig);
    if (g_stop_signals.fetch_add(1) >= 1) _exit(128 + sig);  // second signal: now (saves are atomic)
  }
}

}  // namespace

void block_stop_signals() {
  const sigset_t set = stop_signal_set();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

void take_stop_signals(bool graceful) {
  block_stop_signals();
  if (graceful) g_graceful.store(true);  // before the taker starts: a signal already pending counts as a stop
  static std::once_flag started;
  std::call_once(started, [] { std::thread(take_signals_forever).detach(); });
}

bool stop_requested() { return g_stop_signals.load() > 0; }

}  // namespace zerolora::train
