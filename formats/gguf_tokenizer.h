// The tokenizer inside GGUF metadata (`tokenizer.ggml.*`), both ways: written from the model's
// tokenizer.json (byte-level BPE), and read back as the tokenizer.json it stands for.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model.h"
#include "formats/gguf_container.h"
#include "nlohmann/json.hpp"

namespace compress {

// Adds tokenizer.ggml.{model, pre, tokens, token_type, merges, bos/eos_token_id,
// add_bos_token} from the model's tokenizer.json (and tokenizer_config.json) side files: a
// byte-level BPE tokenizer whose split steps llama.cpp names (formats/byte_level_splits.h), or a
// SentencePiece-style one.
// A GGUF input without those side files gets its own tokenizer.* metadata copied entry for entry
// (when its token list has the model's vocabulary size; else it is rebuilt from what it stands
// for). `pieces` (when given) receives the token strings written, by id.
absl::Status AddGgufTokenizer(const Model& model, int64_t vocab_size, gguf::Metadata& md,
                              std::vector<std::string>* pieces = nullptr);

// general.name for a GGUF of `model`: its file or folder name. llama.cpp gives the special
// tokens of a model whose name contains "phi3" / "phi-3" (any case) Phi-3's strip rules by
// looking up "</s>", "<unk>", "<s>" and "<|endoftext|>", and refuses to load the file when the
// vocabulary (`pieces`) lacks one; such a name is written with that part as "phi 3".
std::string GgufModelName(const Model& model, const std::vector<std::string>& pieces);

// Warnings for what a GGUF file cannot say of the model's tokenizer (tokenizer.json, or
// tokenizer.model): added tokens whose whitespace rules (lstrip, rstrip, single_word) llama.cpp
// will not apply to a file named `gguf_name` (it gives control tokens rstrip by name, for Phi-3
// only), and a Metaspace pre-tokenizer, whose prefix rules differ from llama.cpp's.
std::vector<std::string> GgufTokenizerCaveats(const Model& model, const std::string& gguf_name);

// The tokenizer.json (Hugging Face form, for runtime/tokenizer.h) that a GGUF file's
// tokenizer metadata stands for: model "gpt2" (byte-level BPE) with the pre-tokenizers llama.cpp
// names by split steps we read (gpt-2, smollm / starcoder, llama-bpe (ignore_merges, as llama.cpp
// does), dbrx, qwen2, tekken, gpt-4o, deepseek-llm / -coder / -v3 and their aliases), or model
// "llama" (SentencePiece); control and
// user-defined tokens become added tokens. Other tokenizers are refused naming the kind.
// A post-processor (TemplateProcessing) adds BOS / EOS as llama.cpp does for the file
// (tokenizer.ggml.add_bos_token / add_eos_token, else its default for the tokenizer kind).
// Added tokens take the whitespace after them (rstrip) where llama.cpp gives them that: all
// but <unk>, <s> and <|endoftext|> in a file whose general.name says Phi-3.
absl::StatusOr<nlohmann::json> TokenizerJsonFromGguf(const gguf::Container& g);

// The id of special token `key` ("bos", "eos", "unknown", "padding") as llama.cpp takes it:
// tokenizer.ggml.<key>_token_id, else llama.cpp's default for the tokenizer kind (SentencePiece
// "llama": bos 1, eos 2, unknown 0; BPE "gpt2": bos and eos 11), else -1. llama.cpp's own
// converter leaves bos_token_id out when neither config.json nor tokenizer_config.json names the
// token, and llama.cpp then adds token 1 (SentencePiece). A non-integer value gives -1.
int64_t GgufSpecialTokenId(const gguf::Container& g, const std::string& key);

// The Hugging Face tokenizer files the GGUF file at `path` stands for, as (file name, text):
// tokenizer.json (above) and tokenizer_config.json (PreTrainedTokenizerFast; the bos / eos /
// unk / pad pieces, add_bos_token / add_eos_token, the chat template, the context length), so
// a checkpoint written from a GGUF loads with transformers' AutoTokenizer.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> TokenizerFilesFromGguf(const std::string& path);

}  // namespace compress
