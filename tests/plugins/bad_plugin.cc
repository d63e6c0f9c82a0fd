// Deliberately broken plugins for the loader's error tests; BAD_KIND picks the defect:
// 1 wrong ABI version, 2 wrong compress version, 3 registration fails, 4 registers a
// built-in pass name, 5 a valid plugin adding pass 'noop-plugin' (loading it twice is a
// duplicate), 6 exports compress_plugin_v1 as a data object instead of a function.
#include "core/plugin.h"

namespace {

using namespace compress;

class NoopPass final : public Pass {
 public:
  absl::StatusOr<PreservedAnalyses> Run(Model&, PassContext&) override { return PreservedAnalyses::All(); }
};

[[maybe_unused]] PassInfo Info(const char* name) {
  PassInfo info;
  info.name = name;
  info.summary = "does nothing (test plugin)";
  info.selects_tensors = false;
  info.create = [](const OptionValues&) -> absl::StatusOr<std::unique_ptr<Pass>> {
    return std::make_unique<NoopPass>();
  };
  return info;
}

[[maybe_unused]] absl::Status Register(PluginRegistrar& r) {
#if BAD_KIND == 3
  return absl::InternalError("the test plugin refuses to register");
#elif BAD_KIND == 4
  return r.AddPass(Info("cast"));
#else
  return r.AddPass(Info("noop-plugin"));
#endif
}

}  // namespace

#if BAD_KIND == 6
extern "C" __attribute__((visibility("default"))) const char compress_plugin_v1[64] = "not a function";
#elif BAD_KIND == 1 || BAD_KIND == 2
extern "C" __attribute__((visibility("default"))) const CompressPluginV1* compress_plugin_v1() {
  static const CompressPluginV1 p{BAD_KIND == 1 ? 99u : COMPRESS_PLUGIN_ABI_VERSION,
                                  BAD_KIND == 2 ? "0.0.0-other" : COMPRESS_VERSION, "bad", &Register};
  return &p;
}
#else
COMPRESS_PLUGIN("test-plugin", Register)
#endif
