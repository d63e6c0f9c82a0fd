#!/usr/bin/env python3
"""Makes (or checks) tests/golden/runtime/{tokenizer_golden.json, llm_golden.json,
pycode-tiny.logits.f32, pycode-llama.logits.f32} with Hugging Face tokenizers / transformers.

- tokenizer_golden.json: ids of the sample texts already in it and of pycode-dev.txt (count,
  sha256 of the little-endian int32 ids, first 3000 ids), pycode-tiny's tokenizer.json,
  encode(text, add_special_tokens=False).
- llm_golden.json: the first 64 ids of the file (`prompt`), `positions` 0, 21, 42, 63, and per
  model the perplexity with non-overlapping 512-token windows (each window scores its next-token
  predictions; a last window under 2 tokens dropped) over the whole file and its first 8192 ids.
- NAME.logits.f32: the prompt's logits at those positions, f32 little-endian [4, vocab].
Models run in f32 (the bf16 weights widened), eager attention, on the CPU.

Run on the device machine:
    python make_llm_golden.py MODELS_DIR PYCODE_DEV_TXT OUT_DIR [--check GOLDEN_DIR]
MODELS_DIR holds pycode-tiny/ and pycode-llama/ (copies of ../shared/models). With --check it
compares the results with the committed goldens and prints the largest differences.
"""
import hashlib
import json
import math
import os
import struct
import sys

import numpy as np
import tokenizers
import torch
import transformers as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from reference_ppl import perplexity  # noqa: E402


def main(models, text_path, out, check):
    text = open(text_path, encoding="utf-8").read()
    tok = tokenizers.Tokenizer.from_file(os.path.join(models, "pycode-tiny", "tokenizer.json"))
    ids = tok.encode(text, add_special_tokens=False).ids
    old_tok = json.load(open(os.path.join(check or out, "tokenizer_golden.json"))) if check else None
    samples = [s["text"] for s in old_tok["samples"]] if old_tok else []
    tok_golden = {"file_tokens": len(ids),
                  "file_sha256": hashlib.sha256(struct.pack("<%di" % len(ids), *ids)).hexdigest(),
                  "file_first": ids[:3000],
                  "samples": [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in samples]}
    golden = {"prompt": ids[:64], "positions": [0, 21, 42, 63], "ppl": {}}
    os.makedirs(out, exist_ok=True)
    for name in ("pycode-tiny", "pycode-llama"):
        model = tf.AutoModelForCausalLM.from_pretrained(os.path.join(models, name), dtype=torch.float32,
                                                        attn_implementation="eager").eval()
        with torch.no_grad():
            logits = model(torch.tensor([golden["prompt"]])).logits[0][golden["positions"]].float().numpy()
        logits.astype("<f4").tofile(os.path.join(out, name + ".logits.f32"))
        p_full, n_full, w_full = perplexity(model, ids)
        p_8k, n_8k, _ = perplexity(model, ids[:8192])
        golden["ppl"][name] = {"ppl_full": p_full, "tokens_full": n_full, "windows_full": w_full,
                               "ppl_first8192": p_8k, "tokens_first8192": n_8k}
        print(name, golden["ppl"][name], flush=True)
    json.dump(golden, open(os.path.join(out, "llm_golden.json"), "w"), indent=1)
    json.dump(tok_golden, open(os.path.join(out, "tokenizer_golden.json"), "w"), ensure_ascii=False)
    if check:
        print("tokenizer golden identical:", tok_golden == old_tok)
        old = json.load(open(os.path.join(check, "llm_golden.json")))
        print("prompt identical:", old["prompt"] == golden["prompt"])
        for name, v in golden["ppl"].items():
            for k, x in v.items():
                print(name, k, "relative difference", abs(x - old["ppl"][name][k]) / abs(old["ppl"][name][k]))
            a = np.fromfile(os.path.join(out, name + ".logits.f32"), "<f4")
            b = np.fromfile(os.path.join(check, name + ".logits.f32"), "<f4")
            print(name, "logits max abs difference", float(np.abs(a - b).max()))


if __name__ == "__main__":
    argv = sys.argv[1:]
    chk = None
    if "--check" in argv:
        i = argv.index("--check")
        chk = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    main(argv[0], argv[1], argv[2], chk)
