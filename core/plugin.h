// Out-of-tree passes: the plugin ABI and the loader.
//
// A plugin is a shared library built against this version of compress's headers and
// libcompress_core, exporting one C symbol, `compress_plugin_v1`, that returns a
// CompressPluginV1 describing it. Its `register_passes` adds passes through a
// PluginRegistrar, into the same registry built-in passes use (same options, reports,
// analyses); each pass's origin is the plugin's path. Write it with COMPRESS_PLUGIN:
//
//   absl::Status Register(compress::PluginRegistrar& r) { return r.AddPass(MyPassInfo()); }
//   COMPRESS_PLUGIN("my-plugin", Register)
//
// The loader refuses (one-line errors, exit code 2 from the CLI): a file dlopen cannot load,
// a library without the symbol, a different ABI version or compress version (C++ types cross
// the boundary, so both must match exactly), a registration error, a duplicate pass name.
// See docs/plugins.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/pass.h"
#include "core/version.h"

#define COMPRESS_PLUGIN_ABI_VERSION 3  // 2: QuantInfo format() / levels() accessors, PassReport::finish (2026-12-06); 3: PassReport::warnings (2026-12-07)

namespace compress {

class PluginRegistrar {
 public:
  virtual ~PluginRegistrar() = default;
  // Adds a pass under the plugin's origin; AlreadyExists when the name is taken.
  virtual absl::Status AddPass(PassInfo info) = 0;
};

}  // namespace compress

extern "C" {
struct CompressPluginV1 {
  uint32_t abi_version;          // COMPRESS_PLUGIN_ABI_VERSION the plugin was built with
  const char* compress_version;  // COMPRESS_VERSION of the headers it was built with
  const char* name;
  absl::Status (*register_passes)(compress::PluginRegistrar& registrar);
};
}

#define COMPRESS_PLUGIN(NAME, REGISTER_FN)                                                    \
  extern "C" __attribute__((visibility("default"))) const CompressPluginV1* compress_plugin_v1() { \
    static const CompressPluginV1 plugin{COMPRESS_PLUGIN_ABI_VERSION, COMPRESS_VERSION, NAME,    \
                                         &REGISTER_FN};                                     \
    return &plugin;                                                                         \
  }

namespace compress {

// Loads the plugin at `path` (kept loaded for the life of the process) and registers its
// passes in `registry` with origin = path.
absl::Status LoadPlugin(const std::string& path, PassRegistry& registry);

// Plugin paths from --plugin flags followed by COMPRESS_PLUGIN_PATH (':'-separated; a
// directory there contributes its *.so files in name order).
std::vector<std::string> PluginPaths(const std::vector<std::string>& flags);

}  // namespace compress
