// train/stop_signals.h: no asynchronous handler is ever installed (a handler frame written on a thread whose
// stack pointer oneDNN moved into the heap corrupted it; a handler without SA_RESTART made a checkpoint copy
// fail with EINTR); the signals are blocked in the caller and in threads it starts, and one thread takes them.
// Each case runs in a child process (gtest's EXPECT_EXIT): a stop request would otherwise stay set for the
// other tests of this executable that train.
#include <gtest/gtest.h>

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "train/stop_signals.h"

using namespace zerolora;

namespace {

bool blocked_here(int sig) {
  sigset_t now;
  pthread_sigmask(SIG_BLOCK, nullptr, &now);
  return sigismember(&now, sig) == 1;
}

bool default_disposition(int sig) {
  struct sigaction sa {};
  sigaction(sig, nullptr, &sa);
  return !(sa.sa_flags & SA_SIGINFO) && sa.sa_handler == SIG_DFL;
}

// 0 when everything holds, else the number of the first check that failed
int graceful_mode_checks() {
  train::take_stop_signals(true);
  if (!default_disposition(SIGTERM) || !default_disposition(SIGINT)) return 1;  // no handler
  if (!blocked_here(SIGTERM) || !blocked_here(SIGINT)) return 2;
  bool worker_blocked = false;
  std::thread([&] { worker_blocked = blocked_here(SIGTERM) && blocked_here(SIGINT); }).join();
  if (!worker_blocked) return 3;
  // a blocking read in this thread is not interrupted by the signal (no handler: no EINTR)
  int fds[2];
  if (pipe(fds) != 0) return 4;
  std::thread writer([&] {
    kill(getpid(), SIGTERM);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    (void)!write(fds[1], "x", 1);
  });
  char c = 0;
  const ssize_t n = read(fds[0], &c, 1);
  writer.join();
  if (n != 1 || c != 'x') return 5;
  for (int i = 0; i < 500 && !train::stop_requested(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (!train::stop_requested()) return 6;
  return 0;
}

}  // namespace

TEST(StopSignalTaker, GracefulModeHasNoHandlerBlocksEverywhereAndSetsTheStopFlag) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // a fresh process: the taker thread is per process
  EXPECT_EXIT(std::exit(graceful_mode_checks()), testing::ExitedWithCode(0), "");
}

TEST(StopSignalTaker, SecondSignalExitsAtOnceWith128PlusTheSignal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        train::take_stop_signals(true);
        kill(getpid(), SIGINT);
        for (int i = 0; i < 500 && !train::stop_requested(); ++i)
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
        kill(getpid(), SIGTERM);
        std::this_thread::sleep_for(std::chrono::seconds(10));
        std::exit(1);
      },
      testing::ExitedWithCode(128 + SIGTERM), "");
}

TEST(StopSignalTaker, OtherwiseTheSignalEndsTheProcessAsByDefault) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        train::take_stop_signals(false);
        kill(getpid(), SIGTERM);
        std::this_thread::sleep_for(std::chrono::seconds(10));
        std::exit(1);
      },
      testing::KilledBySignal(SIGTERM), "");
}
