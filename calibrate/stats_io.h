// Calibration statistics as bytes, and the sum of two sets of them: how the ranks of a
// distributed run (core/distributed.h) hand their shares of the statistics to rank 0 and how
// rank 0 hands the total back.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "calibrate/calibration.h"

namespace compress {

// One shard's (or the total's) statistics of a block: per-weight sums, and which weights
// read the same input as another (alias -> the weight whose statistics they share).
struct BlockStats {
  std::map<std::string, LinearStats> layers;
  std::map<std::string, std::string> aliases;
};

// Little-endian-native bytes of `s` (the machines of one job share their byte order).
std::vector<std::byte> SerializeStats(const BlockStats& s);
// InvalidArgument when the bytes are not what SerializeStats wrote.
absl::StatusOr<BlockStats> DeserializeStats(std::span<const std::byte> bytes);

// total += part, weight by weight: row counts and sums added element by element in one fixed
// order, maxima taken; a weight only `part` has is moved over. `part`'s kept sample rows are
// appended. Used in shard order, it makes the total independent of which process summed
// which shard.
void MergeStats(BlockStats& total, BlockStats&& part);

}  // namespace compress
