// Process-wide settings (core/process_settings.h).
#include "core/process_settings.h"

#include <malloc.h>
#include <unistd.h>

#include <cstdlib>

namespace compress {

void UseProcessSettings(char** argv) {
  if (!std::getenv("COMPRESS_OMP_REEXEC")) {
    bool again = false;
    if (!std::getenv("OMP_WAIT_POLICY") && !std::getenv("GOMP_SPINCOUNT")) {
      setenv("GOMP_SPINCOUNT", "10000", 1);
      again = true;
    }
    if (!std::getenv("GLIBC_TUNABLES")) {
      setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1", 1);
      again = true;
    }
    if (again) {
      setenv("COMPRESS_OMP_REEXEC", "1", 1);
      execv("/proc/self/exe", argv);
    }
  }
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, -1);
}

}  // namespace compress
