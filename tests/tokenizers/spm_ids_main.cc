// spm_ids MODEL TEXTS_JSON OUT_JSON: SentencePiece's own ids (libsentencepiece, Debian's
// libsentencepiece-dev) for each text of a JSON list, as tokenize_ids writes compress's:
// [{"ids": [...], "ids_with_special": [BOS, ...]}] (BOS as transformers' Llama / Gemma
// tokenizers add it), or {"error": message}. The reference side of run_sentencepiece_crosscheck.sh.
#include <sentencepiece_processor.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "nlohmann/json.hpp"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: spm_ids MODEL TEXTS_JSON OUT_JSON\n");
    return 2;
  }
  sentencepiece::SentencePieceProcessor sp;
  if (const auto st = sp.Load(argv[1]); !st.ok()) {
    std::fprintf(stderr, "%s: %s\n", argv[1], st.ToString().c_str());
    return 1;
  }
  std::ifstream in(argv[2], std::ios::binary);
  std::stringstream text_json;
  text_json << in.rdbuf();
  nlohmann::json out = nlohmann::json::array();
  for (const auto& t : nlohmann::json::parse(text_json.str())) {
    std::vector<int> ids;
    if (const auto st = sp.Encode(t.get<std::string>(), &ids); !st.ok()) {
      out.push_back({{"error", st.ToString()}});
      continue;
    }
    std::vector<int> with;
    if (sp.bos_id() >= 0) with.push_back(sp.bos_id());
    with.insert(with.end(), ids.begin(), ids.end());
    out.push_back({{"ids", ids}, {"ids_with_special", with}});
  }
  std::ofstream(argv[3], std::ios::binary) << out.dump();
  return 0;
}
