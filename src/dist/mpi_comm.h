// The MPI (OpenMPI) backend of Comm. Its class lives in mpi_comm.cpp so that only this module sees
// <mpi.h>; make_comm() is the usual way in.
//
// Failure handling, measured with OpenMPI 4.1.4 (3 ranks, one kill -9's itself mid all_reduce):
//  * a rank that dies (signal, or exit without MPI_Finalize) makes mpirun kill the whole job within
//    ~1.5 s; mpirun prints "mpirun noticed that process rank 1 with PID ... exited on signal 9
//    (Killed)" (or "...exited with non-zero status ... Process name: [[job,1],1]"). Nothing to add.
//  * a rank that throws: its MpiComm destructor runs during unwinding and skips MPI_Finalize, because
//    OpenMPI's MPI_Finalize waits for every rank (measured: it hangs while the others sit in a
//    collective); the process exits non-zero and mpirun stops the job as above.
//  * a rank that stays alive but never reaches a collective (infinite loop, deadlock, a rank stuck on
//    I/O, mismatched collective order) hangs everyone forever: MPI has no timeout. Hence the
//    watchdog here: every collective is issued non-blocking and polled with MPI_Test; past
//    CommOptions::collective_timeout_s the waiting rank asks the others (on a private communicator)
//    which collective they are in, prints
//      rank R: collective <name> #<seq> timed out after X s waiting for ranks ... (why); (fix: ...)
//    and calls MPI_Abort, which makes mpirun kill every rank.
#pragma once
#include <memory>

#include "dist/comm.h"

namespace zerolora::dist {

// Initialises MPI on first use (MPI_THREAD_FUNNELED: only the thread that created the Comm calls MPI;
// OpenMP kernel threads never do). Throws core::Error when MPI cannot give that thread level or was
// already finalised.
std::unique_ptr<Comm> make_mpi_comm(const CommOptions& options);

}  // namespace zerolora::dist
