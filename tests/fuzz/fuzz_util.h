// Fuzz harness helper: the readers take paths, so each input is written to a scratch file.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

namespace compress::fuzz {

// Writes the input to a per-process file with the given extension and returns its path.
inline std::string InputFile(const uint8_t* data, size_t size, const std::string& ext) {
  const std::string dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
  const std::string path = dir + "/compress-fuzz-" + std::to_string(getpid()) + ext;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size) std::fwrite(data, 1, size, f);
  std::fclose(f);
  return path;
}

}  // namespace compress::fuzz
