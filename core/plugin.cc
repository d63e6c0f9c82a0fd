// Loading plugins with dlopen and registering their passes.
#include "core/plugin.h"

#include <dlfcn.h>
#include <link.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include "core/status.h"

namespace compress {
namespace {

class Registrar final : public PluginRegistrar {
 public:
  Registrar(PassRegistry& r, std::string origin) : r_(r), origin_(std::move(origin)) {}
  absl::Status AddPass(PassInfo info) override {
    info.origin = origin_;
    return r_.Register(std::move(info));
  }

 private:
  PassRegistry& r_;
  std::string origin_;
};

std::string FirstLine(std::string s) {
  if (auto nl = s.find('\n'); nl != std::string::npos) s.resize(nl);
  return s;
}

}  // namespace

absl::Status LoadPlugin(const std::string& path, PassRegistry& registry) {
  if (!std::filesystem::is_regular_file(path)) return InvalidArgument("plugin {}: no such file", path);
  // The directory part makes dlopen take the path as given rather than search for it.
  const std::string abs = std::filesystem::absolute(path).string();
  void* handle = dlopen(abs.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* e = dlerror();
    return InvalidArgument("plugin {}: cannot load: {}", path, FirstLine(e ? e : "unknown dlopen error"));
  }
  using Entry = const CompressPluginV1* (*)();
  void* sym = dlsym(handle, "compress_plugin_v1");
  if (!sym) {
    dlclose(handle);
    return InvalidArgument("plugin {}: not a compress plugin (no compress_plugin_v1 symbol)", path);
  }
  // Calling a data object as the entry point would crash: check the ELF symbol type first.
  Dl_info info;
  ElfW(Sym)* elf_sym = nullptr;
  if (!dladdr1(sym, &info, reinterpret_cast<void**>(&elf_sym), RTLD_DL_SYMENT) || !elf_sym ||
      (ELF64_ST_TYPE(elf_sym->st_info) != STT_FUNC && ELF64_ST_TYPE(elf_sym->st_info) != STT_GNU_IFUNC)) {
    dlclose(handle);
    return InvalidArgument("plugin {}: compress_plugin_v1 is not a function; not a compress plugin", path);
  }
  auto entry = reinterpret_cast<Entry>(sym);
  const CompressPluginV1* p = entry();
  if (!p || p->abi_version != COMPRESS_PLUGIN_ABI_VERSION) {
    return FailedPrecondition("plugin {}: plugin ABI version {} but this compress loads version {}; rebuild it",
                              path, p ? p->abi_version : 0, COMPRESS_PLUGIN_ABI_VERSION);
  }
  if (!p->compress_version || std::string(p->compress_version) != COMPRESS_VERSION) {
    return FailedPrecondition("plugin {}: built against compress {} but this is compress {}; rebuild it", path,
                              p->compress_version ? p->compress_version : "(unknown)", COMPRESS_VERSION);
  }
  if (!p->register_passes) return InvalidArgument("plugin {}: no register_passes function", path);
  Registrar r(registry, path);
  absl::Status s = p->register_passes(r);
  if (!s.ok()) {
    const auto code = s.code() == absl::StatusCode::kAlreadyExists ? s.code() : absl::StatusCode::kInvalidArgument;
    return absl::Status(code, fmt::format("plugin {} ({}): registration failed: {}", path,
                                              p->name ? p->name : "?", FirstLine(std::string(s.message()))));
  }
  return absl::OkStatus();  // the handle stays open: registered passes point into it
}

std::vector<std::string> PluginPaths(const std::vector<std::string>& flags) {
  std::vector<std::string> out = flags;
  const char* env = std::getenv("COMPRESS_PLUGIN_PATH");
  if (!env) return out;
  std::string list = env;
  size_t start = 0;
  while (start <= list.size()) {
    size_t end = list.find(':', start);
    if (end == std::string::npos) end = list.size();
    const std::string item = list.substr(start, end - start);
    start = end + 1;
    if (item.empty()) continue;
    std::error_code ec;
    if (std::filesystem::is_directory(item, ec)) {
      std::vector<std::string> found;
      for (const auto& e : std::filesystem::directory_iterator(item, ec)) {
        if (e.path().extension() == ".so") found.push_back(e.path().string());
      }
      std::sort(found.begin(), found.end());
      out.insert(out.end(), found.begin(), found.end());
    } else {
      out.push_back(item);
    }
  }
  return out;
}

}  // namespace compress
