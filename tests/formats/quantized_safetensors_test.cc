// Quantized checkpoints: every layout (compressed-tensors int-/pack-quantized, compress's own
// for codebooks, odd bit widths and LLM.int8() outliers) round-trips exactly; decompress; bad files.
#include "formats/quantized_safetensors.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>

#include "core/block_quant.h"
#include "core/pass_manager.h"
#include "core/quant.h"
#include "formats/model_io.h"
#include "formats/safetensors.h"
#include "passes/registry.h"
#include "tests/pipeline_util.h"
#include "tests/test_util.h"

namespace compress {
namespace {
namespace fs = std::filesystem;
using testing::ScratchDir;
using testing::SharedModel;

absl::Status RunPipeline(Model& m, const std::string& text) { return testing::RunPipeline(m, text).status(); }

struct LayoutCase {
  const char* pipeline;
  const char* quant_method;
  const char* format;  // compressed-tensors format, or "" for compress's layout
};

TEST(QuantizedSafetensors, EveryLayoutRoundTripsExactly) {
  REQUIRE_SHARED(SharedModel("pycode-tiny"));
  for (LayoutCase c :
       {LayoutCase{"quantize-int8", "compressed-tensors", "int-quantized"},
        LayoutCase{"quantize-int{bits=4,group-size=32}", "compressed-tensors", "pack-quantized"},
        LayoutCase{"quantize-int{bits=4,group-size=32,symmetric=false}", "compress", ""},
        LayoutCase{"quantize-int{bits=3,group-size=0}", "compress", ""},
        LayoutCase{"quantize-fp4{group-size=64}", "compress", ""}, LayoutCase{"quantize-nf4", "compress", ""},
        LayoutCase{"quantize-mxfp4", "compress", ""},
        LayoutCase{"llm-int8{weight-threshold=2}", "compress", ""}}) {
    SCOPED_TRACE(c.pipeline);
    auto m = LoadModel(SharedModel("pycode-tiny"));
    ASSERT_TRUE(m.ok());
    ASSERT_TRUE(RunPipeline(*m, c.pipeline).ok());
    ScratchDir d;
    ASSERT_TRUE(SaveModel(*m, d / "q", {}).ok());
    auto back = LoadModel(d / "q");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_FALSE(back->config.contains("quantization_config")) << "folded into the tensors";
    ASSERT_EQ(back->tensors.names(), m->tensors.names());
    int quantized = 0;
    int64_t outliers = 0, stored = 0;
    for (const auto& n : m->tensors.names()) {
      const Tensor& a = m->tensors.at(n);
      const Tensor& b = back->tensors.at(n);
      ASSERT_EQ(a.quant() != nullptr, b.quant() != nullptr) << n;
      if (a.quant()) {
        ++quantized;
        EXPECT_EQ(a.quant()->bits, b.quant()->bits);
        EXPECT_EQ(a.quant()->format(), b.quant()->format());
        EXPECT_EQ(a.quant()->levels(), b.quant()->levels());
        EXPECT_EQ(a.quant()->group_size, b.quant()->group_size);
        EXPECT_EQ(a.quant()->scales(), b.quant()->scales());
        EXPECT_EQ(a.quant()->zero_points(), b.quant()->zero_points());
        EXPECT_EQ(a.quant()->outlier_inputs, b.quant()->outlier_inputs);
        const auto ca = *a.Data(), cb = *b.Data();
        ASSERT_EQ(ca->size(), cb->size());
        EXPECT_EQ(std::memcmp(ca->data(), cb->data(), ca->size()), 0) << n << ": codes";
        outliers += static_cast<int64_t>(a.quant()->outlier_inputs.size());
        stored += a.storage_bytes();
      } else {
        stored += a.nbytes();
      }
      EXPECT_EQ(*a.ToF32(), *b.ToF32()) << n;
    }
    EXPECT_EQ(quantized, 28);
    // As the run's read-back loads its own output (LoadOptions{check_codes = false}): no scale,
    // zero point or code is read at load; each weight's values come from one read when asked
    // (its codes first, or its scales first), equal to the checked load's.
    const int64_t produced = DeferredQuant::counts().produced;
    auto lazy = LoadModel(d / "q", LoadOptions{.check_codes = false});
    ASSERT_TRUE(lazy.ok()) << lazy.status();
    EXPECT_EQ(DeferredQuant::counts().produced, produced) << "nothing produced at load";
    int deferred = 0;
    for (const auto& n : m->tensors.names()) {
      const Tensor& a = m->tensors.at(n);
      const Tensor& l = lazy->tensors.at(n);
      ASSERT_EQ(a.quant() != nullptr, l.quant() != nullptr) << n;
      if (!a.quant()) continue;
      EXPECT_TRUE(l.quant()->deferred()) << n;
      EXPECT_EQ(l.storage_bytes(), a.storage_bytes()) << n;
      const bool codes_first = deferred++ % 2 == 0;
      std::shared_ptr<const Buffer> codes;
      if (codes_first) codes = *l.Data();
      EXPECT_EQ(l.quant()->scales(), a.quant()->scales()) << n;
      EXPECT_EQ(l.quant()->zero_points(), a.quant()->zero_points()) << n;
      EXPECT_EQ(l.quant()->outlier_inputs, a.quant()->outlier_inputs) << n;
      if (!codes_first) codes = *l.Data();
      const auto ca = *a.Data();
      ASSERT_EQ(codes->size(), ca->size()) << n;
      EXPECT_EQ(std::memcmp(codes->data(), ca->data(), ca->size()), 0) << n << ": codes";
    }
    EXPECT_EQ(DeferredQuant::counts().produced, produced + deferred) << "one production per weight";
    if (std::string(c.pipeline).starts_with("llm-int8")) {
      EXPECT_GT(outliers, 0);
    }
    // storage_bytes() is what the file holds, up to the header and int32 row padding.
    const int64_t file = static_cast<int64_t>(fs::file_size(d / "q/model.safetensors"));
    EXPECT_GE(file, stored);
    EXPECT_LT(file, stored + stored / 50 + 65536) << "file " << file << " vs stored " << stored;
    auto cfg = nlohmann::json::parse(testing::ReadFile(d / "q/config.json"));
    const auto& qc = cfg["quantization_config"];
    EXPECT_EQ(qc["quant_method"], c.quant_method);
    if (*c.format) {
      EXPECT_EQ(qc["format"], c.format);
      EXPECT_EQ(qc["config_groups"]["group_0"]["targets"].size(), 28u);
    } else {
      EXPECT_EQ(qc["layers"].size(), 28u);
    }
    // decompress: dense bf16 equal to bf16(dequantized values).
    ASSERT_TRUE(RunPipeline(*back, "dequantize").ok());
    ASSERT_TRUE(SaveModel(*back, d / "dense", {}).ok());
    auto dense = LoadModel(d / "dense");
    ASSERT_TRUE(dense.ok());
    EXPECT_FALSE(
        nlohmann::json::parse(testing::ReadFile(d / "dense/config.json")).contains("quantization_config"));
    for (const auto& n : m->tensors.names()) {
      const Tensor& t = dense->tensors.at(n);
      EXPECT_EQ(t.dtype(), DType::kBF16) << n;
      auto want = *m->tensors.at(n).ToF32();
      auto got = *t.ToF32();
      for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(got[i], BF16ToF32(F32ToBF16(want[i]))) << n;
    }
  }
}

TEST(QuantizedSafetensors, PackBitsIsALittleEndianBitstream) {
  const std::vector<uint8_t> v = {1, 2, 3, 4, 5, 6, 7, 0, 5};
  const auto p3 = PackBits(v, 3);
  ASSERT_EQ(p3.size(), 4u);      // 27 bits
  EXPECT_EQ(p3[0], 0b11010001);  // 1 | 2<<3 | (3 & 3)<<6
  std::vector<uint8_t> back(v.size());
  UnpackBits(p3.data(), static_cast<int64_t>(v.size()), 3, back.data());
  EXPECT_EQ(back, v);
  const auto p4 = PackBits({{0x3, 0xA}}, 4);
  EXPECT_EQ(p4, std::vector<uint8_t>{0xA3});  // low nibble first
  // Every width and length (odd ones too) against the definition, bit by bit.
  std::mt19937 rng(3);
  for (int bits = 1; bits <= 8; ++bits) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{2}, size_t{7}, size_t{63}, size_t{64}, size_t{1001}}) {
      std::vector<uint8_t> values(n);
      for (auto& x : values) x = static_cast<uint8_t>(rng() & ((1u << bits) - 1));
      std::vector<uint8_t> want((n * bits + 7) / 8, 0);
      for (size_t i = 0; i < n; ++i) {
        for (int b = 0; b < bits; ++b) {
          const size_t bit = i * bits + b;
          if ((values[i] >> b) & 1) want[bit / 8] |= static_cast<uint8_t>(1u << (bit % 8));
        }
      }
      ASSERT_EQ(PackBits(values, bits), want) << bits << " bits, " << n;
      std::vector<uint8_t> again(n);
      UnpackBits(want.data(), static_cast<int64_t>(n), bits, again.data());
      ASSERT_EQ(again, values) << bits << " bits, " << n;
    }
  }
}

// FirstBadCode against its definition: every byte value, each code range the readers use,
// the bad code placed at chunk edges and past them.
TEST(QuantizedSafetensors, FirstBadCodeFindsTheFirstOutOfRangeCode) {
  auto naive = [](const std::vector<uint8_t>& c, bool fp8, int lo, int hi) -> int64_t {
    for (size_t i = 0; i < c.size(); ++i) {
      const int v = static_cast<int8_t>(c[i]);
      if (fp8 ? (c[i] & 0x7F) == 0x7F : (v < lo || v > hi)) return static_cast<int64_t>(i);
    }
    return -1;
  };
  struct Range { bool fp8; int lo, hi; };
  for (const Range& r : {Range{true, 0, 0}, Range{false, -8, 7}, Range{false, -7, 7}, Range{false, -128, 127},
                         Range{false, 0, 15}, Range{false, -4, 3}}) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{4095}, size_t{4096}, size_t{4097}, size_t{10000}}) {
      std::vector<uint8_t> c(n, static_cast<uint8_t>(r.fp8 ? 0x38 : r.lo));  // all valid
      EXPECT_EQ(FirstBadCode(c.data(), static_cast<int64_t>(n), r.fp8, r.lo, r.hi), -1);
      for (int v = 0; v < 256; ++v) {
        for (size_t at : {size_t{0}, size_t{4095}, size_t{4096}, n - 1}) {
          if (at >= n) continue;
          std::vector<uint8_t> d = c;
          d[at] = static_cast<uint8_t>(v);
          if (at + 1 < n) d[n - 1] = 0xFF;  // a later code that may be bad too
          ASSERT_EQ(FirstBadCode(d.data(), static_cast<int64_t>(n), r.fp8, r.lo, r.hi), naive(d, r.fp8, r.lo, r.hi))
              << "value " << v << " at " << at << " of " << n << " lo " << r.lo << " hi " << r.hi;
        }
      }
    }
  }
}

TEST(QuantizedSafetensors, LyingCompressLayoutsAreRejected) {
  REQUIRE_SHARED(SharedModel("pycode-tiny"));
  auto m = LoadModel(SharedModel("pycode-tiny"));
  ASSERT_TRUE(RunPipeline(*m, "quantize-mxfp4").ok());
  ScratchDir d;
  ASSERT_TRUE(SaveModel(*m, d / "q", {}).ok());
  const std::string cfg_text = testing::ReadFile(d / "q/config.json");
  const std::string layer = "model.layers.0.mlp.up_proj";
  auto expect_error = [&](const std::function<void(nlohmann::json&)>& edit, const std::string& needle) {
    auto j = nlohmann::json::parse(cfg_text);
    edit(j);
    testing::WriteFile(d / "q/config.json", j.dump());
    auto r = LoadModel(d / "q");
    ASSERT_FALSE(r.ok()) << needle;
    EXPECT_NE(std::string(r.status().message()).find(needle), std::string::npos) << r.status();
    EXPECT_EQ(std::string(r.status().message()).find('\n'), std::string::npos);
  };
  expect_error([&](auto& j) { j["quantization_config"]["layers"][layer]["group_size"] = 64; },
               "weight_packed");
  expect_error([&](auto& j) { j["quantization_config"]["layers"][layer]["format"] = "fp5"; },
               "unknown 4-bit codebook");
  expect_error([&](auto& j) { j["quantization_config"]["layers"][layer]["bits"] = 8; }, "4-bit codes");
  expect_error([&](auto& j) { j["quantization_config"]["layers"][layer]["outliers"] = 3; },
               "declares 3 outliers");
  expect_error([&](auto& j) { j["quantization_config"]["format_version"] = 2; }, "format_version 2");
  expect_error(
      [&](auto& j) {
        j["quantization_config"]["layers"][layer + "x"] = j["quantization_config"]["layers"][layer];
      },
      "needs a 2-D U8 weight_packed");
}

TEST(QuantizedSafetensors, CodesOutsideTheDeclaredRangeAreRejected) {
  REQUIRE_SHARED(SharedModel("pycode-tiny"));
  auto m = LoadModel(SharedModel("pycode-tiny"));
  ASSERT_TRUE(RunPipeline(*m, "quantize-int8").ok());
  ScratchDir d;
  ASSERT_TRUE(SaveModel(*m, d / "q", {}).ok());
  // Claim 4 bits while the codes use the int8 range.
  std::string cfg = testing::ReadFile(d / "q/config.json");
  auto j = nlohmann::json::parse(cfg);
  j["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] = 4;
  testing::WriteFile(d / "q/config.json", j.dump());
  auto bad = LoadModel(d / "q");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(bad.status().message().find("outside the 4-bit range [-7, 7]"), std::string::npos)
      << bad.status();
  // Without the load's check (LoadOptions{check_codes = false}) the same codes are still refused,
  // when they are used.
  auto unchecked = LoadModel(d / "q", LoadOptions{.check_codes = false});
  ASSERT_TRUE(unchecked.ok()) << unchecked.status();
  auto used = unchecked->tensors.at("model.layers.0.mlp.up_proj.weight").Data();
  EXPECT_EQ(used.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(used.status().message().find("outside the 4-bit range [-7, 7]"), std::string::npos) << used.status();
}

// pack-quantized 4-bit symmetric codes are checked on the packed words: a 0 nibble (code -8,
// outside [-7, 7]) anywhere in a weight is refused at load with its position's code.
TEST(QuantizedSafetensors, PackedCodesOutsideTheSymmetricRangeAreRejected) {
  REQUIRE_SHARED(SharedModel("pycode-tiny"));
  auto m = LoadModel(SharedModel("pycode-tiny"));
  ASSERT_TRUE(RunPipeline(*m, "quantize-int{bits=4,group-size=32}").ok());
  ScratchDir d;
  ASSERT_TRUE(SaveModel(*m, d / "q", {}).ok());
  ASSERT_TRUE(LoadModel(d / "q").ok());  // as written: every code in range
  std::string file = testing::ReadFile(d / "q/model.safetensors");
  uint64_t header_len = 0;
  std::memcpy(&header_len, file.data(), 8);
  const auto header = nlohmann::json::parse(file.substr(8, header_len));
  const std::string name = "model.layers.1.mlp.down_proj.weight_packed";
  ASSERT_TRUE(header.contains(name));
  const uint64_t begin = header[name]["data_offsets"][0], end = header[name]["data_offsets"][1];
  const uint64_t at = 8 + header_len + (begin + end) / 2;
  file[at] = static_cast<char>((file[at] & 0xF0) | 0x0);  // low nibble 0: code -8
  testing::WriteFile(d / "q/model.safetensors", file);
  auto bad = LoadModel(d / "q");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(bad.status().message().find("code -8 outside the 4-bit range [-7, 7]"), std::string::npos)
      << bad.status();
}

// AnyPackedFieldZero against unpacking: widths 1-8 that divide a byte, counts that end inside a
// byte (the unused fields of the last byte are 0 and must not count).
TEST(QuantizedSafetensors, AnyPackedFieldZeroMatchesUnpacking) {
  std::mt19937 rng(7);
  for (int bits : {1, 2, 4, 8}) {
    for (size_t n : {size_t{1}, size_t{3}, size_t{63}, size_t{64}, size_t{1001}}) {
      for (int trial = 0; trial < 20; ++trial) {
        std::vector<uint8_t> values(n);
        for (auto& x : values) x = static_cast<uint8_t>(1 + rng() % ((1u << bits) - 1));  // never 0
        if (trial % 2) values[rng() % n] = 0;
        const std::vector<uint8_t> packed = PackBits(values, bits);
        const bool want = std::find(values.begin(), values.end(), 0) != values.end();
        ASSERT_EQ(AnyPackedFieldZero(packed.data(), static_cast<int64_t>(n), bits), want) << bits << " " << n;
      }
    }
  }
}

TEST(QuantizedSafetensors, DequantizeWithoutQuantizedWeightsFails) {
  REQUIRE_SHARED(SharedModel("pycode-tiny"));
  auto m = LoadModel(SharedModel("pycode-tiny"));
  auto s = RunPipeline(*m, "dequantize");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
}

TEST(QuantizedSafetensors, GroupSizeMustDivideInFeatures) {
  REQUIRE_SHARED(SharedModel("stories260K"));
  auto m = LoadModel(SharedModel("stories260K"));
  ASSERT_TRUE(m.ok());
  auto s = RunPipeline(*m, "quantize-int{group-size=128}");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("tensor 'model.layers.0.mlp.down_proj.weight': in_features 172 is not a "
                             "multiple of group-size 128"),
            std::string::npos)
      << s;
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

// The model with every tensor's bytes copied into memory (not mapped from its file).
Model InMemory(Model m) {
  for (const auto& n : m.tensors.names()) {
    const Tensor& t = m.tensors.at(n);
    m.tensors.Set(n, Tensor(t.dtype(), t.shape(), *t.ReadCopy()));
  }
  return m;
}

// `pipeline` run on pycode-tiny's weights mapped from its file and on the same weights held in
// memory.
struct MappedAndHeld {
  Model mapped, held;
  RunReport report, held_report;
};
std::optional<MappedAndHeld> RunMappedAndHeld(const std::string& pipeline) {
  auto m = LoadModel(SharedModel("pycode-tiny"));
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return std::nullopt;
  MappedAndHeld r{*std::move(m), Model(), {}, {}};
  r.held = InMemory(r.mapped);
  auto report = testing::RunPipeline(r.mapped, pipeline);
  auto held_report = testing::RunPipeline(r.held, pipeline);
  EXPECT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(held_report.ok()) << held_report.status();
  if (!report.ok() || !held_report.ok()) return std::nullopt;
  r.report = *std::move(report);
  r.held_report = *std::move(held_report);
  return r;
}

// The last pass's entries of the run on mapped weights (its pending metrics resolved) against
// the run on held ones: names, metrics, sizes and stats equal.
void ExpectSameChanges(RunReport& report, const RunReport& held_report) {
  ASSERT_TRUE(ResolvePendingMetrics(report).ok());
  ASSERT_EQ(report.passes.size(), held_report.passes.size());
  const auto& got = report.passes.back().tensors;
  const auto& want = held_report.passes.back().tensors;
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].name, want[i].name);
    EXPECT_EQ(got[i].metrics, want[i].metrics) << got[i].name;
    EXPECT_EQ(got[i].dtype_after, want[i].dtype_after) << got[i].name;
    EXPECT_EQ(got[i].bytes_after, want[i].bytes_after) << got[i].name;
  }
  EXPECT_EQ(report.passes.back().stats, held_report.passes.back().stats);
}

// The data-free quantizers on weights mapped from a file defer their work to the writer
// (DeferredQuant): each weight is read once, for its scales, codes and metrics together (fp4
// choosing among three formats chooses in the same production: the format is pending until the
// writer asks, and config.json and the report name it after). The files and the report's
// metrics, types and stats are those of the same pass on weights held in memory (which quantizes
// in the pass), byte for byte and bit for bit.
TEST(QuantizedSafetensors, DataFreeQuantizersReadEachWeightOnceWhileWriting) {
  REQUIRE_SHARED(SharedModel("pycode-tiny"));
  for (const char* out : {"q", "q.gguf"}) {
    for (const char* p : {"quantize-int8", "quantize-int{bits=4,group-size=32,scale-dtype=f16}",
                          "quantize-int{bits=8,group-size=32,scale-dtype=f16}",
                          "quantize-int{bits=4,group-size=32,symmetric=false}", "quantize-nf4", "quantize-mxfp4",
                          "quantize-fp4{format=e2m1,search=false,group-size=32}", "quantize-fp4{search=false}",
                          "quantize-fp4{search=false,group-size=32}"}) {
      const bool gguf = std::string(out).ends_with(".gguf");
      const std::string pipeline = p;
      if (gguf && pipeline.find("scale-dtype=f16") == std::string::npos && pipeline != "quantize-mxfp4") continue;
      SCOPED_TRACE(std::string(p) + " -> " + out);
      auto run = RunMappedAndHeld(p);
      ASSERT_TRUE(run.has_value());
      Model* m = &run->mapped;
      Model& held = run->held;
      int deferred = 0;
      for (const auto& n : m->tensors.names()) {
        const QuantInfo* q = m->tensors.at(n).quant();
        if (!q) continue;
        EXPECT_TRUE(q->deferred()) << n;
        EXPECT_EQ(q->format_pending(), pipeline == "quantize-fp4{search=false}" ||
                                           pipeline == "quantize-fp4{search=false,group-size=32}")
            << n;
        EXPECT_FALSE(held.tensors.at(n).quant()->deferred()) << n;
        EXPECT_EQ(m->tensors.at(n).storage_bytes(), held.tensors.at(n).storage_bytes()) << n;
        ++deferred;
      }
      EXPECT_EQ(deferred, 28);
      ScratchDir d;
      const DeferredQuant::Counts before = DeferredQuant::counts();
      ASSERT_TRUE(SaveModel(*m, d / out, {}).ok());
      const DeferredQuant::Counts after = DeferredQuant::counts();
      EXPECT_EQ(after.produced - before.produced, 28) << "one production per weight";
      EXPECT_EQ(after.coded_again - before.coded_again, 0) << "no weight read a second time";
      ASSERT_TRUE(SaveModel(held, d / ("held_" + std::string(out)), {}).ok());
      const std::string mine = d / out, held_out = d / ("held_" + std::string(out));
      EXPECT_EQ(testing::ReadFile(gguf ? mine : mine + "/model.safetensors"),
                testing::ReadFile(gguf ? held_out : held_out + "/model.safetensors"))
          << "the same bytes";
      if (!gguf) {
        EXPECT_EQ(testing::ReadFile(mine + "/config.json"), testing::ReadFile(held_out + "/config.json"));
      }
      ExpectSameChanges(run->report, run->held_report);
    }
  }
}

// quantize-gguf on weights mapped from a file makes each weight's blocks when the writer asks
// (a lazy tensor, one read): the same GGUF bytes, report metrics and stats as the pass on the
// weights held in memory, which makes them in the pass.
TEST(QuantizedSafetensors, QuantizeGgufMakesBlocksWhileWriting) {
  REQUIRE_SHARED(SharedModel("pycode-tiny"));
  for (const char* p : {"quantize-gguf{type=Q4_0,search=false}", "quantize-gguf{type=Q8_0}",
                        "quantize-gguf{type=Q4_K_M,search=false}"}) {
    SCOPED_TRACE(p);
    auto run = RunMappedAndHeld(p);
    ASSERT_TRUE(run.has_value());
    Model* m = &run->mapped;
    Model& held = run->held;
    int lazy = 0;
    for (const auto& n : m->tensors.names()) {
      const Tensor& t = m->tensors.at(n);
      if (!IsBlockType(t.dtype())) continue;
      EXPECT_TRUE(t.is_lazy()) << n;
      EXPECT_FALSE(held.tensors.at(n).is_lazy()) << n;
      ++lazy;
    }
    EXPECT_GE(lazy, 28);
    ScratchDir d;
    ASSERT_TRUE(SaveModel(*m, d / "q.gguf", {}).ok());
    ASSERT_TRUE(SaveModel(held, d / "held.gguf", {}).ok());
    EXPECT_EQ(testing::ReadFile(d / "q.gguf"), testing::ReadFile(d / "held.gguf")) << "the same bytes";
    ExpectSameChanges(run->report, run->held_report);
  }
}

// A non-finite weight found while writing fails the write, naming the tensor and where, as
// the pass does when it quantizes in memory.
TEST(QuantizedSafetensors, ADeferredQuantizerNamesANonFiniteWeightWhenItWrites) {
  REQUIRE_SHARED(SharedModel("pycode-tiny"));
  ScratchDir d;
  auto m = LoadModel(SharedModel("pycode-tiny"));
  ASSERT_TRUE(m.ok());
  const std::string bad = "model.layers.1.mlp.up_proj.weight";
  std::vector<float> w = *m->tensors.at(bad).ToF32();
  w[5 * m->tensors.at(bad).shape()[1] + 3] = std::numeric_limits<float>::quiet_NaN();
  m->tensors.Set(bad, *Tensor::FromF32(w, m->tensors.at(bad).shape(), DType::kF32));
  ASSERT_TRUE(SaveModel(*m, d / "nan", {}).ok());
  for (const char* p : {"quantize-int8", "quantize-nf4"}) {
    SCOPED_TRACE(p);
    auto nan = LoadModel(d / "nan");
    ASSERT_TRUE(nan.ok());
    ASSERT_TRUE(testing::RunPipeline(*nan, p).ok());
    auto w2 = SaveModel(*nan, d / "out", {});
    ASSERT_FALSE(w2.ok());
    EXPECT_EQ(w2.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(w2.status().message().find("tensor '" + bad + "' holds nan at [5, 3]"), std::string::npos)
        << w2.status();
    EXPECT_FALSE(fs::exists(d / "out"));
  }
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

// compressed-tensors config groups may target layers by "re:" regular expressions (as
// llm-compressor recipes write them): matched from the name's start like Python's re.match,
// after exact names and before the class "Linear".
TEST(QuantizedSafetensors, CompressedTensorsRegexTargetsSelectTheirGroups) {
  REQUIRE_SHARED(SharedModel("pycode-tiny"));
  auto m = LoadModel(SharedModel("pycode-tiny"));
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(RunPipeline(*m, "quantize-int8").ok());
  ScratchDir d;
  ASSERT_TRUE(SaveModel(*m, d / "q", {}).ok());
  const auto written = nlohmann::json::parse(testing::ReadFile(d / "q/config.json"));
  auto want = LoadModel(d / "q");
  ASSERT_TRUE(want.ok());
  auto with_groups = [&](const nlohmann::json& groups) {
    auto j = written;
    j["quantization_config"]["config_groups"] = groups;
    testing::WriteFile(d / "q/config.json", j.dump());
    return LoadModel(d / "q");
  };
  const nlohmann::json args = written["quantization_config"]["config_groups"]["group_0"]["weights"];
  nlohmann::json four = args;
  four["num_bits"] = 4;
  // Two regex groups covering attention and MLP; then a regex over a "Linear" group whose 4 bits
  // would refuse these int8 codes (the regex must win).
  for (const nlohmann::json& groups :
       {nlohmann::json{{"attn", {{"targets", {R"(re:model\.layers\.\d+\.self_attn\..*)"}}, {"weights", args}}},
                       {"mlp", {{"targets", {"re:.*mlp"}}, {"weights", args}}}},
        nlohmann::json{{"all", {{"targets", {"Linear"}}, {"weights", four}}},
                       {"some", {{"targets", {"re:.*_proj$"}}, {"weights", args}}}}}) {
    SCOPED_TRACE(groups.dump());
    auto got = with_groups(groups);
    ASSERT_TRUE(got.ok()) << got.status();
    int quantized = 0;
    for (const auto& n : want->tensors.names()) {
      const Tensor& a = want->tensors.at(n);
      if (!a.quant()) continue;
      ++quantized;
      ASSERT_TRUE(got->tensors.at(n).quant()) << n;
      EXPECT_EQ(got->tensors.at(n).quant()->bits, 8) << n;
      EXPECT_EQ(*got->tensors.at(n).ToF32(), *a.ToF32()) << n;
    }
    EXPECT_EQ(quantized, 28);
  }
  // re.match anchors at the name's start: "self_attn" alone takes no layer.
  auto unanchored = with_groups({{"g", {{"targets", {"re:self_attn"}}, {"weights", args}}}});
  EXPECT_EQ(unanchored.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(unanchored.status().message().find("no config group targets"), std::string::npos) << unanchored.status();
  auto bad = with_groups({{"g", {{"targets", {"re:(unclosed"}}, {"weights", args}}}});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(bad.status().message().find("'re:(unclosed' is not a regular expression"), std::string::npos)
      << bad.status();
}

// Hugging Face's fine-grained FP8 form (quant_method fp8: DeepSeek-V3, Qwen3-FP8): e4m3
// weights with one weight_scale_inv per block. pycode-tiny's linear weights written that way
// with blocks of 48 x 96 (partial blocks in both directions; groups of gcd(in, 96) inputs)
// load as fp8 weights whose values are e4m3(code) x the block's scale, bit for bit, and
// evaluate within FP8's rounding of the original; other quant_methods are refused by name.
TEST(QuantizedSafetensors, BlockFp8CheckpointsLoadWithTheirBlockScales) {
  REQUIRE_SHARED(SharedModel("pycode-tiny"));
  auto m = LoadModel(SharedModel("pycode-tiny"));
  ASSERT_TRUE(m.ok());
  const int64_t bo = 48, bi = 96;
  TensorStore store;
  std::map<std::string, std::vector<float>> want;
  for (const auto& name : m->tensors.names()) {
    const Tensor& t = m->tensors.at(name);
    auto v = t.ToF32();
    ASSERT_TRUE(v.ok());
    const bool linear = name.find("_proj.weight") != std::string::npos;
    if (!linear) {
      store.Set(name, *Tensor::FromF32(*v, t.shape(), DType::kBF16));
      continue;
    }
    const int64_t out = t.shape()[0], in = t.shape()[1], br = (out + bo - 1) / bo, bc = (in + bi - 1) / bi;
    std::vector<float> scale(br * bc, 0.f), back(v->size());
    std::vector<uint8_t> codes(v->size());
    for (int64_t r = 0; r < out; ++r)
      for (int64_t c = 0; c < in; ++c) {
        float& s = scale[(r / bo) * bc + c / bi];
        s = std::max(s, std::abs((*v)[r * in + c]) / 448.f);
      }
    for (int64_t r = 0; r < out; ++r)
      for (int64_t c = 0; c < in; ++c) {
        const float s = scale[(r / bo) * bc + c / bi];
        codes[r * in + c] = MiniFloatEncode((*v)[r * in + c] / s, kE4M3, true);
        back[r * in + c] = MiniFloatDecode(codes[r * in + c], kE4M3) * s;
      }
    want[name] = back;
    store.Set(name, Tensor(DType::kF8E4M3, t.shape(), std::make_shared<OwnedBuffer>(std::move(codes))));
    store.Set(name.substr(0, name.size() - 7) + ".weight_scale_inv", *Tensor::FromF32(scale, {br, bc}, DType::kF32));
  }
  ASSERT_EQ(want.size(), 28u);  // 7 projections x 4 blocks
  ScratchDir d;
  std::filesystem::create_directories(d / "fp8");
  ASSERT_TRUE(WriteSafetensors(store, d / "fp8", {}).ok());
  nlohmann::json cfg = m->config;
  cfg["quantization_config"] = {{"quant_method", "fp8"}, {"activation_scheme", "dynamic"}, {"fmt", "e4m3"},
                                {"weight_block_size", {bo, bi}}};
  testing::WriteFile(d / "fp8/config.json", cfg.dump());
  std::filesystem::copy_file(SharedModel("pycode-tiny") + "/tokenizer.json", d / "fp8/tokenizer.json");
  auto fp8 = LoadModel(d / "fp8");
  ASSERT_TRUE(fp8.ok()) << fp8.status();
  // The runtime evaluates the block-scaled weights: the same perplexity as a dense f32
  // checkpoint of their values (f32 products), and the native products within rounding.
  TensorStore dense = store;
  for (const auto& [name, values] : want) {
    dense.Erase(name.substr(0, name.size() - 7) + ".weight_scale_inv");
    dense.Set(name, *Tensor::FromF32(values, store.at(name).shape(), DType::kF32));
  }
  std::filesystem::create_directories(d / "dense");
  ASSERT_TRUE(WriteSafetensors(dense, d / "dense", {}).ok());
  testing::WriteFile(d / "dense/config.json", m->config.dump());
  std::filesystem::copy_file(SharedModel("pycode-tiny") + "/tokenizer.json", d / "dense/tokenizer.json");
  auto ppl = [&](const std::string& dir, const std::string& matmul) {
    auto r = testing::RunCompress("eval '" + dir + "' --text '" + std::string(COMPRESS_SOURCE_DIR) +
                                      "/samples/eval/pycode-sample.txt' --ctx 128 --max-tokens 512 --json -q --matmul " + matmul,
                                  d.path().string());
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.exit_code == 0 ? nlohmann::json::parse(r.out)["perplexity"].get<double>() : -1.0;
  };
  const double f32 = ppl(d / "fp8", "f32");
  EXPECT_EQ(f32, ppl(d / "dense", "f32"));
  EXPECT_NEAR(ppl(d / "fp8", "native"), f32, 2e-3 * f32);
  for (const auto& [name, values] : want) {
    const Tensor& t = fp8->tensors.at(name);
    ASSERT_NE(t.quant(), nullptr) << name;
    EXPECT_TRUE(t.quant()->fp8());
    EXPECT_FALSE(fp8->tensors.contains(name.substr(0, name.size() - 7) + ".weight_scale_inv"));
    auto got = t.ToF32();
    ASSERT_TRUE(got.ok());
    ASSERT_EQ(*got, values) << name;
  }
  // dequantize gives the dense model in the checkpoint's dtype (bf16 here).
  ASSERT_TRUE(RunPipeline(*fp8, "dequantize").ok());
  for (const auto& [name, values] : want) {
    const Tensor& t = fp8->tensors.at(name);
    EXPECT_EQ(t.dtype(), DType::kBF16);
    EXPECT_EQ(*t.ToF32(), *Tensor::FromF32(values, t.shape(), DType::kBF16)->ToF32()) << name;
  }

  // Bad block sizes and scale shapes are refused naming the tensor; other methods by name.
  cfg["quantization_config"]["weight_block_size"] = {bo, bi * 2};
  testing::WriteFile(d / "fp8/config.json", cfg.dump());
  auto wrong = LoadModel(d / "fp8");
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(std::string(wrong.status().message()).find("weight_scale_inv' has shape"), std::string::npos) << wrong.status();
  cfg["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}};
  testing::WriteFile(d / "fp8/config.json", cfg.dump());
  auto gptq = LoadModel(d / "fp8");
  ASSERT_FALSE(gptq.ok());
  EXPECT_NE(std::string(gptq.status().message()).find("quant_method 'gptq' is not read"), std::string::npos)
      << gptq.status();
}

}  // namespace
}  // namespace compress
