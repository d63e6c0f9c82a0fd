// LlamaRuntime::Gradients against d(mean next-token CE)/dW computed by transformers in f64
// (tests/golden/runtime/grads, see tests/golden/runtime/README.md).
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "formats/model_io.h"
#include "formats/safetensors.h"
#include "nlohmann/json.hpp"
#include "runtime/llama.h"
#include "tests/test_util.h"

namespace compress {
namespace {

const std::string kGolden = std::string(COMPRESS_SOURCE_DIR) + "/tests/golden/runtime/";

nlohmann::json Json(const std::string& path) { return nlohmann::json::parse(testing::ReadFile(path)); }

TEST(LlamaGradients, MatchTransformersAutograd) {
  // Llama with llama3 rope scaling and GQA (4 heads, 2 kv heads; untied head); Qwen2 with
  // q/k/v biases and a tied head.
  for (const char* name : {"tiny-llama3", "tiny-qwen2"}) {
    SCOPED_TRACE(name);
    auto m = LoadModel(kGolden + name);
    ASSERT_TRUE(m.ok()) << m.status();
    auto rt = LlamaRuntime::Create(*m);
    ASSERT_TRUE(rt.ok()) << rt.status();
    TensorStore want;
    ASSERT_TRUE(ReadSafetensorsFile(kGolden + "grads/" + name + ".safetensors", want, nullptr).ok());
    auto ids = Json(kGolden + name + "/ids.json").get<std::vector<int32_t>>();
    std::set<std::string> seen;
    double worst = 0, scale = 0;
    auto loss = (*rt)->Gradients(
        ids, [&](const std::string& w, const RowMatrix& dy, const RowMatrix& x) -> absl::Status {
          const RowMatrix g = dy.transpose() * x;
          EXPECT_TRUE(seen.insert(w).second) << w << " twice";
          const Tensor* t = want.find(w);
          if (!t) return absl::NotFoundError(w);
          auto ref = t->ToF32();
          EXPECT_TRUE(ref.ok());
          EXPECT_EQ(t->shape(), (std::vector<int64_t>{g.rows(), g.cols()})) << w;
          for (int64_t i = 0; i < g.size(); ++i) {
            worst = std::max(worst, static_cast<double>(std::abs(g.data()[i] - (*ref)[i])));
            scale = std::max(scale, static_cast<double>(std::abs((*ref)[i])));
          }
          return absl::OkStatus();
        });
    ASSERT_TRUE(loss.ok()) << loss.status();
    EXPECT_NEAR(*loss, Json(kGolden + "grads/" + name + ".json")["loss"].get<double>(), 1e-5);
    EXPECT_EQ(seen.size(), want.names().size());
    // f32 against an f64 reference: every entry within 1e-4 of the largest gradient entry.
    EXPECT_GT(scale, 1e-3);
    std::printf("%s: max |diff| %.3g, max |grad| %.3g\n", name, worst, scale);
    EXPECT_LE(worst, 1e-4 * scale);
  }
}

TEST(LlamaGradients, WantedFiltersAndStreamingAgrees) {
  auto m = LoadModel(kGolden + "tiny-llama3");
  ASSERT_TRUE(m.ok());
  auto ids = Json(kGolden + "tiny-llama3/ids.json").get<std::vector<int32_t>>();
  std::map<std::string, RowMatrix> full;
  RuntimeOptions streamed;
  streamed.stream_blocks = true;
  auto a = LlamaRuntime::Create(*m);
  auto b = LlamaRuntime::Create(*m, streamed);
  ASSERT_TRUE(a.ok() && b.ok());
  auto la = (*a)->Gradients(ids, [&](const std::string& w, const RowMatrix& dy, const RowMatrix& x) {
    full[w] = dy.transpose() * x;
    return absl::OkStatus();
  });
  ASSERT_TRUE(la.ok());
  int calls = 0;
  auto lb = (*b)->Gradients(
      ids,
      [&](const std::string& w, const RowMatrix& dy, const RowMatrix& x) {
        const RowMatrix g = dy.transpose() * x;
        ++calls;
        EXPECT_EQ(w, "model.layers.0.self_attn.k_proj.weight");
        EXPECT_LE((g - full.at(w)).cwiseAbs().maxCoeff(), 1e-9f);  // same dy and x; GEMM paths may differ
        return absl::OkStatus();
      },
      [](const std::string& w) { return w == "model.layers.0.self_attn.k_proj.weight"; });
  ASSERT_TRUE(lb.ok());
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(*la, *lb);
  // A sink error stops the pass and is returned.
  auto err = (*a)->Gradients(ids, [](const std::string&, const RowMatrix&, const RowMatrix&) {
    return absl::CancelledError("stop");
  });
  EXPECT_EQ(err.status().code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE((*a)->Gradients(std::vector<int32_t>{3}, nullptr).ok());
}

TEST(LlamaGradients, RefusesGpt2) {
  auto m = LoadModel(kGolden + "tiny-gpt2");
  ASSERT_TRUE(m.ok());
  auto rt = LlamaRuntime::Create(*m);
  ASSERT_TRUE(rt.ok());
  auto r = (*rt)->Gradients(std::vector<int32_t>{1, 2, 3}, [](const std::string&, const RowMatrix&,
                                                              const RowMatrix&) { return absl::OkStatus(); });
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace compress
