"""Loads compress's compressed-tensors outputs with transformers + the compressed-tensors
library and measures their perplexity on the same token windows compress evaluated.

Run on the device machine (no network there): the compressed-tensors source is put on the
path by the caller (PYTHONPATH), with a small loguru stand-in if loguru is missing.
usage: python3 check_loads.py TEXT MAX_TOKENS CTX OUT.json DIR [DIR...]
(the text is tokenized with each model's tokenizer.json, as `compress eval --text` does)
Writes {dir: {"ppl": ..., "quantization_config": ..., "input_quantized": [...]} } to OUT.json.
"""
import json
import os
import sys

import torch
import tokenizers
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden"))
from reference_ppl import perplexity  # noqa: E402


def main():
    text = open(sys.argv[1], encoding="utf-8").read()
    max_tokens, ctx = int(sys.argv[2]), int(sys.argv[3])
    out = {}
    for d in sys.argv[5:]:
        tok = tokenizers.Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        ids = tok.encode(text, add_special_tokens=False).ids[:max_tokens]
        model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
        model.eval()
        qc = getattr(model.config, "quantization_config", None)
        # which linear layers quantize their inputs at run time (compressed-tensors' scheme)
        quantized_inputs = sorted(
            name for name, m in model.named_modules()
            if getattr(getattr(m, "quantization_scheme", None), "input_activations", None) is not None)
        out[d] = {"ppl": perplexity(model, ids, ctx)[0],
                  "modules_with_input_quantization": len(quantized_inputs),
                  "classes": sorted({type(m).__name__ for _, m in model.named_modules() if "Linear" in type(m).__name__})}
        print(d, out[d], flush=True)
    json.dump(out, open(sys.argv[4], "w"), indent=1)


if __name__ == "__main__":
    main()
