// tokenize_ids TOKENIZER TEXTS_JSON OUT_JSON [gguf]: compress's tokenizer (tokenizer.json, a
// .gguf's metadata, or a SentencePiece tokenizer.model) on each text of a JSON list; writes [{"ids": [...], "ids_with_special":
// [...]}] or {"error": message} per text. With `gguf`, the tokenizer.json is first written into
// GGUF metadata (formats/gguf_tokenizer.h, as `-o x.gguf` does) and read back from the file:
// the tokenizer llama.cpp and a bare .gguf input get. `--dump-json` writes the tokenizer.json a
// SentencePiece tokenizer.model stands for (formats/sentencepiece_model.h). The Hugging Face side of tests/tokenizers
// is hf_ids.js.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/model.h"
#include "formats/gguf_container.h"
#include "formats/gguf_tokenizer.h"
#include "formats/sentencepiece_model.h"
#include "nlohmann/json.hpp"
#include "runtime/tokenizer.h"

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "--dump-json") {  // tokenize_ids --dump-json tokenizer.model OUT_JSON
    auto j = compress::TokenizerJsonFromSentencePiece(argv[2]);
    if (!j.ok()) {
      std::fprintf(stderr, "%s\n", std::string(j.status().message()).c_str());
      return 1;
    }
    std::ofstream(argv[3], std::ios::binary) << j->dump();
    return 0;
  }
  if (argc != 4 && !(argc == 5 && std::string(argv[4]) == "gguf")) {
    std::fprintf(stderr, "usage: tokenize_ids TOKENIZER TEXTS_JSON OUT_JSON [gguf] | --dump-json TOKENIZER_MODEL OUT_JSON\n");
    return 2;
  }
  auto fail = [](const absl::Status& st) {
    std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
    return 1;
  };
  std::string path = argv[1];
  if (argc == 5) {  // through GGUF metadata, in a folder beside OUT_JSON
    namespace fs = std::filesystem;
    const fs::path dir = fs::path(argv[3]).parent_path() / (fs::path(argv[3]).stem().string() + ".gguf-dir");
    fs::create_directories(dir);
    // tokenizer.json, or SentencePiece's tokenizer.model (read as the tokenizer.json it stands for)
    const bool spm = path.ends_with(".model");
    const fs::path side = dir / (spm ? "tokenizer.model" : "tokenizer.json");
    fs::copy_file(path, side, fs::copy_options::overwrite_existing);
    auto json_tok = compress::Tokenizer::FromFile(path);
    if (!json_tok.ok()) return fail(json_tok.status());
    nlohmann::json j;
    if (spm) {
      auto converted = compress::TokenizerJsonFromSentencePiece(path);
      if (!converted.ok()) return fail(converted.status());
      j = std::move(*converted);
    } else {
      std::ifstream tin(path, std::ios::binary);
      std::stringstream tj;
      tj << tin.rdbuf();
      j = nlohmann::json::parse(tj.str());
    }
    int64_t vocab = 0;
    for (const auto& [_, id] : j["model"]["vocab"].items()) vocab = std::max<int64_t>(vocab, id.get<int64_t>() + 1);
    for (const auto& a : j["added_tokens"]) vocab = std::max<int64_t>(vocab, a["id"].get<int64_t>() + 1);
    compress::Model m;
    m.source = dir.string();
    m.side_files = {side.string()};
    auto prefix = (*json_tok)->EncodeWithSpecialTokens("");  // BOS, when the post-processor adds one
    if (prefix.ok() && !prefix->empty()) m.config = {{"bos_token_id", prefix->front()}};
    compress::gguf::Metadata md;
    if (absl::Status st = compress::AddGgufTokenizer(m, vocab, md); !st.ok()) return fail(st);
    path = (dir / "t.gguf").string();
    if (absl::Status st = compress::gguf::WriteContainer(path, md, {}, {}); !st.ok()) return fail(st);
  }
  auto tok = compress::Tokenizer::FromFile(path);
  if (!tok.ok()) return fail(tok.status());
  std::ifstream in(argv[2], std::ios::binary);
  std::stringstream text_json;
  text_json << in.rdbuf();
  const auto texts = nlohmann::json::parse(text_json.str());
  nlohmann::json out = nlohmann::json::array();
  for (const auto& t : texts) {
    const std::string text = t.get<std::string>();
    auto ids = (*tok)->Encode(text);
    auto with = (*tok)->EncodeWithSpecialTokens(text);
    if (!ids.ok() || !with.ok()) {
      out.push_back({{"error", std::string((ids.ok() ? with.status() : ids.status()).message())}});
    } else {
      out.push_back({{"ids", *ids}, {"ids_with_special", *with}});
    }
  }
  std::ofstream(argv[3], std::ios::binary) << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return 0;
}
