// `run --stats FILE`: the calibration-statistics analysis (calibrate/stats_analysis.h) saved
// to a file and reused by a later run whose model (as the analysis sees it: every tensor's
// bytes, quantization and factors, the config and the activation / KV-cache schemes) and
// calibration (token windows, samples, seqlen, seed, expert threshold) hash the same.
//
// The file holds up to 8 entries, one per key (a pipeline that recomputes the analysis after
// a pass changed the model adds one); it is replaced atomically. A file at the path that is
// not a statistics file is an error and never overwritten.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "calibrate/stats_analysis.h"

namespace compress {

// XXH3-64 of the model state and the calibration the analysis depends on.
absl::StatusOr<uint64_t> StatisticsKey(const Model& model, const CalibrationData& data);

// The entry of `key` in `path`; nullopt when the file is absent or holds no such entry.
absl::StatusOr<std::optional<CalibrationStatistics::Result>> LoadStatistics(const std::string& path, uint64_t key);

// OK when `path` is absent or a statistics file (checked before a run's work).
absl::Status CheckStatisticsFile(const std::string& path);

// Adds (or replaces) the entry of `key`, keeping the 7 most recent others.
absl::Status SaveStatistics(const std::string& path, uint64_t key, const CalibrationStatistics::Result& r);

}  // namespace compress
