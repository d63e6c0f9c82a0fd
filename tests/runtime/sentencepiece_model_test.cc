// SentencePiece tokenizer.model files (formats/sentencepiece_model.h) read by the runtime's
// tokenizer: a ModelProto written here field by field, so each expected id is worked out by
// hand from SentencePiece's BPE rule (merge the adjacent pair whose joined piece scores
// highest); the refusals and malformed files; the CLI on a checkpoint whose only tokenizer is a
// tokenizer.model. tests/tokenizers/run_sentencepiece_crosscheck.sh checks real trained models
// against libsentencepiece itself.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "fmt/format.h"
#include "formats/sentencepiece_model.h"
#include "nlohmann/json.hpp"
#include "runtime/tokenizer.h"
#include "tests/test_util.h"

namespace compress {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

// Protobuf wire encoding, enough for a ModelProto.
std::string Varint(uint64_t v) {
  std::string s;
  while (v >= 0x80) {
    s.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  s.push_back(static_cast<char>(v));
  return s;
}
std::string VarintField(int number, uint64_t v) { return Varint(static_cast<uint64_t>(number) << 3) + Varint(v); }
std::string BytesField(int number, const std::string& payload) {
  return Varint((static_cast<uint64_t>(number) << 3) | 2) + Varint(payload.size()) + payload;
}
std::string FloatField(int number, float f) {
  std::string s = Varint((static_cast<uint64_t>(number) << 3) | 5);
  char b[4];
  std::memcpy(b, &f, 4);
  return s + std::string(b, 4);
}
std::string Piece(const std::string& text, float score, int type) {
  return BytesField(1, BytesField(1, text) + FloatField(2, score) + (type == 1 ? "" : VarintField(3, type)));
}

const std::string kMark = "\xe2\x96\x81";  // U+2581

// <unk> <s> </s>, the 256 byte pieces (ids 3..258), then normal pieces with their scores.
struct Spec {
  std::vector<std::pair<std::string, float>> normal = {
      {kMark + "ab", -0.5f}, {"ab", -1.f}, {kMark + "a", -2.f}, {kMark, -10.f}, {"a", -11.f}, {"b", -12.f}, {"c", -13.f}};
  std::string trainer = VarintField(3, 2) + VarintField(35, 1);  // BPE, byte fallback
  std::string normalizer = BytesField(1, "identity") + VarintField(3, 1) + VarintField(4, 0);
  std::string extra_pieces;  // appended after the normal ones
};
std::string ModelBytes(const Spec& spec) {
  std::string m = Piece("<unk>", 0, 2) + Piece("<s>", 0, 3) + Piece("</s>", 0, 3);
  for (int b = 0; b < 256; ++b) m += Piece(fmt::format("<0x{:02X}>", b), 0, 6);
  for (const auto& [text, score] : spec.normal) m += Piece(text, score, 1);
  m += spec.extra_pieces;
  return m + BytesField(2, spec.trainer) + BytesField(3, spec.normalizer);
}
constexpr int32_t kMarkAb = 259, kAb = 260, kMarkA = 261, kMarkOnly = 262, kA = 263, kB = 264, kC = 265;

TEST(SentencePieceModel, BpeModelTokenizesAsSentencePieceDoes) {
  ScratchDir d;
  testing::WriteFile(d / "tokenizer.model", ModelBytes(Spec{}));
  EXPECT_EQ(TokenizerFileFor(d.path().string()), d / "tokenizer.model");  // no tokenizer.json beside it
  auto tok = Tokenizer::FromFile(d / "tokenizer.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  // "▁ab▁abc": a+b (-1) first, then ▁+ab (-0.5) twice; c stays.
  EXPECT_EQ(*(*tok)->Encode("ab abc"), (std::vector<int32_t>{kMarkAb, kMarkAb, kC}));
  // "▁ba": ▁+a... no: b and a do not join; ▁ alone, b, a.
  EXPECT_EQ(*(*tok)->Encode("ba"), (std::vector<int32_t>{kMarkOnly, kB, kA}));
  // A character outside the pieces: its UTF-8 bytes as <0xXX> pieces.
  EXPECT_EQ(*(*tok)->Encode("\xc3\xa9"), (std::vector<int32_t>{kMarkOnly, 3 + 0xC3, 3 + 0xA9}));
  // BOS first by default (transformers' Llama tokenizer), no EOS.
  EXPECT_EQ(*(*tok)->EncodeWithSpecialTokens("a"), (std::vector<int32_t>{1, kMarkA}));
  EXPECT_EQ((*tok)->Decode(*(*tok)->Encode("ab abc \xc3\xa9")), "ab abc \xc3\xa9");
  // "<s>" in text is a control piece, matched as the special token (transformers' split).
  EXPECT_EQ(*(*tok)->Encode("<s>"), (std::vector<int32_t>{1}));
}

TEST(SentencePieceModel, NoByteFallbackGivesOneUnkPerRunAndNoDummyPrefix) {
  Spec s;
  s.trainer = VarintField(3, 2);  // BPE, no byte fallback
  s.normalizer = BytesField(1, "identity") + VarintField(3, 0) + VarintField(4, 0);  // no dummy prefix
  ScratchDir d;
  testing::WriteFile(d / "tokenizer.model", ModelBytes(s));
  auto tok = Tokenizer::FromFile(d / "tokenizer.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  // SentencePiece gives a run of unknown characters one <unk>.
  EXPECT_EQ(*(*tok)->Encode("ab\xc3\xa9\xc3\xa9 a"), (std::vector<int32_t>{kAb, 0, kMarkA}));
}

TEST(SentencePieceModel, TokenizerConfigAddsTokensAndSaysBosAndEos) {
  ScratchDir d;
  testing::WriteFile(d / "tokenizer.model", ModelBytes(Spec{}));
  testing::WriteFile(d / "tokenizer_config.json", R"({"add_bos_token": false, "add_eos_token": true,
      "added_tokens_decoder": {"2": {"content": "</s>", "special": true},
                               "300": {"content": "<|im_start|>", "special": true, "rstrip": true}}})");
  auto tok = Tokenizer::FromFile(d / "tokenizer.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  // Added tokens split the raw text first; each piece between gets the space marker (legacy).
  EXPECT_EQ(*(*tok)->Encode("a<|im_start|>  b"), (std::vector<int32_t>{kMarkA, 300, kMarkOnly, kB}));
  EXPECT_EQ(*(*tok)->EncodeWithSpecialTokens("a"), (std::vector<int32_t>{kMarkA, 2}));
  EXPECT_EQ((*tok)->vocab_size(), 301);

  // legacy false: transformers' Metaspace form (the marker only at the text's start and not
  // before a space); add_prefix_space false: no marker at all.
  testing::WriteFile(d / "tokenizer_config.json", R"({"legacy": false})");
  auto modern = Tokenizer::FromFile(d / "tokenizer.model");
  ASSERT_TRUE(modern.ok()) << modern.status();
  EXPECT_EQ(*(*modern)->Encode("a</s>ab"), (std::vector<int32_t>{kMarkA, 2, kAb}));
  EXPECT_EQ(*(*modern)->Encode(" ab"), (std::vector<int32_t>{kMarkAb}));
  testing::WriteFile(d / "tokenizer_config.json", R"({"add_prefix_space": false})");
  auto bare = Tokenizer::FromFile(d / "tokenizer.model");
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_EQ(*(*bare)->Encode("ab a"), (std::vector<int32_t>{kAb, kMarkA}));

  // An added token that names an id the model already uses for another piece is refused.
  testing::WriteFile(d / "tokenizer_config.json", R"({"added_tokens_decoder": {"1": {"content": "<bos>"}}})");
  auto bad = Tokenizer::FromFile(d / "tokenizer.model");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'<bos>'"), std::string::npos) << bad.status();
  EXPECT_NE(bad.status().message().find("tokenizer_config.json"), std::string::npos) << bad.status();
}

TEST(SentencePieceModel, RefusesWhatItCannotTokenizeExactly) {
  struct Case {
    std::string trainer, normalizer, message;
  };
  const std::string identity = BytesField(1, "identity") + VarintField(4, 0);
  const std::vector<Case> cases = {
      {VarintField(35, 1), identity, "model type is unigram"},  // model_type absent: UNIGRAM
      {VarintField(3, 3), identity, "model type is word"},
      {VarintField(3, 2), BytesField(1, "nmt_nfkc") + BytesField(2, std::string(64, 'x')) + VarintField(4, 0),
       "normalizer 'nmt_nfkc' maps characters"},
      {VarintField(3, 2), BytesField(1, "identity"), "removes extra whitespace"},  // its default is true
      {VarintField(3, 2), identity + VarintField(5, 0), "escape_whitespaces"},
      {VarintField(3, 2) + VarintField(24, 1), identity, "treat_whitespace_as_suffix"},
  };
  for (const Case& c : cases) {
    Spec s;
    s.trainer = c.trainer;
    s.normalizer = c.normalizer;
    ScratchDir d;
    testing::WriteFile(d / "tokenizer.model", ModelBytes(s));
    auto tok = Tokenizer::FromFile(d / "tokenizer.model");
    ASSERT_FALSE(tok.ok()) << c.message;
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kUnimplemented) << tok.status();
    EXPECT_NE(tok.status().message().find(c.message), std::string::npos) << tok.status();
    EXPECT_NE(tok.status().message().find(d / "tokenizer.model"), std::string::npos) << tok.status();
  }
}

TEST(SentencePieceModel, MalformedFilesAreErrorsNamingTheFile) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  struct Case {
    std::string bytes, message;
  };
  Spec dup, bad_score, bad_type, empty_piece;
  dup.extra_pieces = Piece("ab", -20, 1);
  bad_score.extra_pieces = Piece("zz", nan, 1);
  bad_type.extra_pieces = Piece("zz", 0, 7);
  empty_piece.extra_pieces = BytesField(1, FloatField(2, 0));
  const std::string good = ModelBytes(Spec{});
  const std::vector<Case> cases = {
      {"", "has no pieces"},
      {"\xff\xff\xff\xff", "malformed protobuf"},
      {good.substr(0, good.size() - 3), "malformed protobuf"},  // cut inside the normalizer spec
      {ModelBytes(dup), "defined twice"},
      {ModelBytes(bad_score), "non-finite score"},
      {ModelBytes(bad_type), "has type 7"},
      {ModelBytes(empty_piece), "has no text"},
      {BytesField(1, BytesField(1, "\xc3")), "not UTF-8"},
  };
  for (const Case& c : cases) {
    ScratchDir d;
    testing::WriteFile(d / "tokenizer.model", c.bytes);
    auto tok = Tokenizer::FromFile(d / "tokenizer.model");
    ASSERT_FALSE(tok.ok()) << c.message;
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kDataLoss) << tok.status();
    EXPECT_NE(tok.status().message().find(c.message), std::string::npos) << tok.status();
    EXPECT_NE(tok.status().message().find(d / "tokenizer.model"), std::string::npos) << tok.status();
  }
  // A piece of 4 MB (no real vocabulary has one) is read without looking up each of its splits.
  {
    Spec huge;
    huge.extra_pieces = Piece(std::string(4 << 20, 'a'), -30, 1);
    ScratchDir d;
    testing::WriteFile(d / "tokenizer.model", ModelBytes(huge));
    const auto start = std::chrono::steady_clock::now();
    auto tok = Tokenizer::FromFile(d / "tokenizer.model");
    EXPECT_TRUE(tok.ok()) << tok.status();
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 10.0);
  }
  // Every prefix of a good file: an error or a model, never a crash.
  ScratchDir d;
  for (size_t n = 0; n < good.size(); n += 7) {
    testing::WriteFile(d / "tokenizer.model", good.substr(0, n));
    (void)Tokenizer::FromFile(d / "tokenizer.model");
  }
}

// A checkpoint whose only tokenizer is tokenizer.model: `eval --text` tokenizes with it, and its
// GGUF output carries it (llama.cpp's "llama" tokenizer), which eval reads back to the same ids.
TEST(SentencePieceModel, CheckpointWithOnlyTokenizerModelEvaluatesAndWritesGguf) {
  const std::string sample = std::string(COMPRESS_SOURCE_DIR) + "/samples/pycode-tiny";
  ScratchDir d;
  fs::create_directories(d / "m");
  fs::copy_file(sample + "/config.json", d / "m/config.json");
  fs::copy_file(sample + "/model.safetensors", d / "m/model.safetensors");
  testing::WriteFile(d / "m/tokenizer.model", ModelBytes(Spec{}));
  testing::WriteFile(d / "text.txt", "ab abc ba cab\n\xc3\xa9 abba " + std::string(400, 'a') + "\n");
  const std::string eval = " --text " + (d / "text.txt") + " --ctx 64 --matmul f32 --json";
  auto before = testing::RunCompress("eval " + (d / "m") + eval, d.path().string());
  ASSERT_EQ(before.exit_code, 0) << before.err;
  auto run = testing::RunCompress("run " + (d / "m") + " -p 'cast{dtype=f32}' -o " + (d / "m.gguf") + " --quiet",
                                  d.path().string());
  ASSERT_EQ(run.exit_code, 0) << run.err;
  fs::remove(d / "m/tokenizer.model");  // the GGUF alone
  auto after = testing::RunCompress("eval " + (d / "m.gguf") + eval, d.path().string());
  ASSERT_EQ(after.exit_code, 0) << after.err;
  const auto a = nlohmann::json::parse(before.out), b = nlohmann::json::parse(after.out);
  EXPECT_GT(a["tokens"].get<int64_t>(), 100);
  EXPECT_EQ(a["tokens"], b["tokens"]);
  EXPECT_EQ(a["perplexity"], b["perplexity"]);
}

// transformers' non-legacy SentencePiece form (no normalizer, Metaspace with prepend_scheme
// "first", as transformers 5 saves a Llama tokenizer): tokenized as tokenizers does (the marker
// only at the text's start, and not before a piece starting with a space), written to GGUF as
// llama.cpp's SentencePiece tokenizer with a warning naming where llama.cpp differs.
TEST(SentencePieceModel, MetaspaceTokenizerJsonTokenizesAndWritesGgufWithWarning) {
  ScratchDir d;
  fs::create_directories(d / "spm");
  testing::WriteFile(d / "spm/tokenizer.model", ModelBytes(Spec{}));
  auto legacy = TokenizerJsonFromSentencePiece(d / "spm/tokenizer.model");
  ASSERT_TRUE(legacy.ok()) << legacy.status();
  nlohmann::json tj = *legacy;
  tj["normalizer"] = nullptr;
  tj["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", kMark}, {"prepend_scheme", "first"}, {"split", false}};
  const std::string sample = std::string(COMPRESS_SOURCE_DIR) + "/samples/pycode-tiny";
  fs::create_directories(d / "m");
  fs::copy_file(sample + "/config.json", d / "m/config.json");
  fs::copy_file(sample + "/model.safetensors", d / "m/model.safetensors");
  testing::WriteFile(d / "m/tokenizer.json", tj.dump());
  auto tok = Tokenizer::FromFile(d / "m/tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(*(*tok)->Encode(" ab"), (std::vector<int32_t>{kMarkAb}));         // no second marker
  EXPECT_EQ(*(*tok)->Encode("a</s>ab"), (std::vector<int32_t>{kMarkA, 2, kAb}));  // none after </s>
  // A Metaspace field of the wrong type is an error, not its default.
  nlohmann::json bad = tj;
  bad["pre_tokenizer"]["split"] = "no";
  testing::WriteFile(d / "bad.json", bad.dump());
  auto refused = Tokenizer::FromFile(d / "bad.json");
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("Metaspace field has the wrong type"), std::string::npos)
      << refused.status();
  auto run = testing::RunCompress("run " + (d / "m") + " -p 'cast{dtype=f16}' -o " + (d / "m.gguf") + " -q",
                                  d.path().string());
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_NE(run.err.find("Metaspace pre-tokenizer (prepend_scheme first) written as llama.cpp's SentencePiece"),
            std::string::npos)
      << run.err;
  auto back = Tokenizer::FromFile(d / "m.gguf");  // llama.cpp's rules: the legacy form
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*(*back)->Encode("ab"), (std::vector<int32_t>{kMarkAb}));
  EXPECT_EQ(*(*back)->Encode(" ab"), (std::vector<int32_t>{kMarkOnly, kMarkAb}));
}

}  // namespace
}  // namespace compress
