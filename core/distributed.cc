// MPI behind core/distributed.h; without COMPRESS_MPI every call is the one-process answer.
#include "core/distributed.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/status.h"

#ifdef COMPRESS_MPI
#include <mpi.h>
#endif

namespace compress::dist {
namespace {

bool g_active = false;
int g_rank = 0, g_size = 1;

// The number of ranks an MPI launcher started, from its environment (1 when none did).
int LauncherSize() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"}) {
    if (const char* v = std::getenv(var)) return std::max(1, std::atoi(v));
  }
  // srun without an MPI plugin environment still says how many tasks it started.
  if (std::getenv("SLURM_STEP_ID") && std::getenv("SLURM_NTASKS")) return std::max(1, std::atoi(std::getenv("SLURM_NTASKS")));
  return 1;
}

constexpr size_t kPiece = size_t{1} << 30;

#ifdef COMPRESS_MPI
absl::Status Check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return absl::OkStatus();
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  return absl::InternalError(fmt::format("MPI {} failed on rank {}: {}", what, g_rank, std::string(msg, len)));
}
#endif

}  // namespace

bool Available() {
#ifdef COMPRESS_MPI
  return true;
#else
  return false;
#endif
}

absl::Status Init(int* argc, char*** argv) {
  const int launched = LauncherSize();
  if (launched <= 1) return absl::OkStatus();
#ifdef COMPRESS_MPI
  int provided = 0;
  RETURN_IF_ERROR(Check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "init"));
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  g_active = g_size > 1;
  if (!g_active) {
    MPI_Finalize();
    g_rank = 0;
    g_size = 1;
  }
  return absl::OkStatus();
#else
  return FailedPrecondition(
      "started as one of {} MPI ranks, but this compress was built without MPI (every rank would do the whole job "
      "and write the same output); rebuild with MPI (libopenmpi-dev installed, -DCOMPRESS_MPI=ON) or run one process",
      launched);
#endif
}

void Finalize() {
#ifdef COMPRESS_MPI
  if (g_active) MPI_Finalize();
#endif
  g_active = false;
}

void AbortAll(int code) {
#ifdef COMPRESS_MPI
  if (g_active) MPI_Abort(MPI_COMM_WORLD, code);
#endif
}

bool Active() { return g_active; }
int Rank() { return g_rank; }
int Size() { return g_size; }

absl::Status Send(int dest, std::span<const std::byte> bytes) {
#ifdef COMPRESS_MPI
  for (size_t at = 0; at < bytes.size(); at += kPiece) {
    const int n = static_cast<int>(std::min(kPiece, bytes.size() - at));
    RETURN_IF_ERROR(Check(MPI_Send(bytes.data() + at, n, MPI_BYTE, dest, 0, MPI_COMM_WORLD), "send"));
  }
  return absl::OkStatus();
#else
  return FailedPrecondition("no MPI in this build");
#endif
}

absl::Status Recv(int source, std::span<std::byte> bytes) {
#ifdef COMPRESS_MPI
  for (size_t at = 0; at < bytes.size(); at += kPiece) {
    const int n = static_cast<int>(std::min(kPiece, bytes.size() - at));
    RETURN_IF_ERROR(
        Check(MPI_Recv(bytes.data() + at, n, MPI_BYTE, source, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE), "receive"));
  }
  return absl::OkStatus();
#else
  return FailedPrecondition("no MPI in this build");
#endif
}

absl::Status SendBuffer(int dest, std::span<const std::byte> bytes) {
  const uint64_t n = bytes.size();
  RETURN_IF_ERROR(Send(dest, std::as_bytes(std::span(&n, 1))));
  return Send(dest, bytes);
}

absl::Status RecvBuffer(int source, std::vector<std::byte>& bytes) {
  uint64_t n = 0;
  RETURN_IF_ERROR(Recv(source, std::as_writable_bytes(std::span(&n, 1))));
  bytes.resize(n);
  return Recv(source, bytes);
}

absl::Status Broadcast(std::vector<std::byte>& bytes, int root) {
#ifdef COMPRESS_MPI
  if (!g_active) return absl::OkStatus();
  uint64_t n = bytes.size();
  RETURN_IF_ERROR(Check(MPI_Bcast(&n, 1, MPI_UINT64_T, root, MPI_COMM_WORLD), "broadcast"));
  bytes.resize(n);
  for (size_t at = 0; at < n; at += kPiece) {
    const int len = static_cast<int>(std::min<size_t>(kPiece, n - at));
    RETURN_IF_ERROR(Check(MPI_Bcast(bytes.data() + at, len, MPI_BYTE, root, MPI_COMM_WORLD), "broadcast"));
  }
  return absl::OkStatus();
#else
  return absl::OkStatus();
#endif
}

absl::Status Barrier() {
#ifdef COMPRESS_MPI
  if (g_active) return Check(MPI_Barrier(MPI_COMM_WORLD), "barrier");
#endif
  return absl::OkStatus();
}

absl::StatusOr<int64_t> MinAll(int64_t value) {
#ifdef COMPRESS_MPI
  if (g_active) {
    int64_t out = value;
    RETURN_IF_ERROR(Check(MPI_Allreduce(&value, &out, 1, MPI_INT64_T, MPI_MIN, MPI_COMM_WORLD), "reduce"));
    return out;
  }
#endif
  return value;
}

}  // namespace compress::dist
