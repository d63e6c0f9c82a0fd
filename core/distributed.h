// Processes of one run spread over machines: MPI when the build has it (COMPRESS_MPI) and the
// program was started by mpirun / srun with more than one rank; otherwise one process, and
// every call below is a no-op answering rank 0 of 1.
//
// compress uses it in two places: the CLI initializes it and lets only rank 0 write outputs
// and reports; the calibration driver (calibrate/calibration.cc) splits the calibration
// windows over the ranks and reduces their statistics in a fixed order, so the output is
// byte-identical whatever the number of ranks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace compress::dist {

// Starts MPI when the process was launched as one rank of several (an MPI launcher's
// environment says so: Open MPI's OMPI_COMM_WORLD_SIZE, PMI_SIZE, or Slurm's SLURM_NTASKS
// under srun). FailedPrecondition when it was, but the build has no MPI (each rank would
// run the whole job and write the same output). Call once, first.
absl::Status Init(int* argc, char*** argv);
// Ends MPI (when Init started it). Call once, last.
void Finalize();
// Stops every rank of the job with `code` (after one rank failed: the others may be waiting
// for it). Returns only when not distributed.
void AbortAll(int code);

bool Active();  // more than one rank
int Rank();     // 0 when not distributed
int Size();     // 1 when not distributed
bool Available();  // the build has MPI

// Blocking point-to-point transfer of raw bytes (any size: sent in pieces under 1 GiB).
absl::Status Send(int dest, std::span<const std::byte> bytes);
absl::Status Recv(int source, std::span<std::byte> bytes);
// A byte buffer of unknown size: its length first, then the bytes.
absl::Status SendBuffer(int dest, std::span<const std::byte> bytes);
absl::Status RecvBuffer(int source, std::vector<std::byte>& bytes);
// Rank `root`'s buffer on every rank (resized on the receivers).
absl::Status Broadcast(std::vector<std::byte>& bytes, int root = 0);
// Returns once every rank called it (no-op in one process).
absl::Status Barrier();
// The smallest of every rank's `value`, on every rank (`value` itself in one process).
absl::StatusOr<int64_t> MinAll(int64_t value);

}  // namespace compress::dist
