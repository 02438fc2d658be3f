// SIGTERM / SIGINT: taken in one place, never by an asynchronous handler.
//
// A signal handler runs on whichever thread the kernel picks, and on a compute thread that can be fatal:
// Debian's oneDNN 2.6 sgemm JIT kernel points the stack pointer at a heap workspace (oneDNN #4845), so a
// handler frame written there corrupts the heap (rc 134/139 after a SIGTERM mid-GEMM). A handler also makes
// slow system calls fail with EINTR unless SA_RESTART is set (a checkpoint copy failed with "Interrupted
// system call"). So main() blocks both signals before any other thread exists (every thread inherits the
// mask) and one thread takes them with sigwait(): no handler ever runs, no system call is interrupted.
//
// What a signal does depends on the command:
//   graceful (train, demo)  the first signal asks the step loop to save a checkpoint and stop at the next step
//                           boundary (stop_requested() polls it); a second one exits at once with 128 + signal
//                           (every save is atomic, so nothing half-written survives)
//   otherwise               the process ends as the default action would (killed by the signal)
#pragma once

namespace zerolora::train {

// Blocks SIGTERM and SIGINT in the calling thread; threads it starts later inherit the mask. main() calls it
// first, before any library can start a thread.
void block_stop_signals();

// Blocks the signals in the calling thread (as above) and starts the thread that takes them, once per
// process. graceful: see above; a later call with graceful = true switches an already running taker to it.
void take_stop_signals(bool graceful);

// True once a stop signal arrived in graceful mode.
bool stop_requested();

}  // namespace zerolora::train
