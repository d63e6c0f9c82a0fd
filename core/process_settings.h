// Process-wide settings that compress (and the benchmarks measuring its floors) runs under.
#pragma once

namespace compress {

// libgomp and glibc read their settings once, when the process starts, so this starts the
// process again (once; a failed exec just runs on) with those not set by the user:
// - GOMP_SPINCOUNT=10000 unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is set: libgomp's default
//   spin of 300,000 iterations per wait takes the cores a busy machine's other programs need
//   (beside two busy loops on 2 cores `compress eval` ran 1.3x faster, no slower idle;
//   bench/README.md busy_machine.sh). Every parallel region works on at least a grain of
//   data, so short spins cost nothing where regions are many.
// - GLIBC_TUNABLES=glibc.malloc.hugetlb=1 unless GLIBC_TUNABLES is set: malloc asks for
//   transparent huge pages. A GPTQ run allocates and frees matrices of hundreds of MB per layer
//   and Eigen's product buffers per call; in 4 KiB pages the faults took as much time as the
//   arithmetic (bench/README.md, session 17).
// Then sets malloc's thresholds: freed memory stays in the heap for the next tensor (never
// trimmed: a 1 GiB threshold still gave back, and faulted in again, every GPTQ layer's
// matrices of a 1.1B model); blocks over 32 MB are fresh mmaps, in huge pages, which fault 512x
// less often than the heap's 4 KiB pages (serving them from the heap ran GPTQ 1.4x slower).
// Call first thing in main(), before any thread starts.
void UseProcessSettings(char** argv);

}  // namespace compress
