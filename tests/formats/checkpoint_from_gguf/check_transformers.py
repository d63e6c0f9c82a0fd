"""Loads the checkpoints compress wrote from GGUF files (make_outputs.sh) with transformers.

For each tokenizer: AutoTokenizer on the written folder against the tokenizers library on the
tokenizer.json the GGUF was made from, on every golden sample of
tests/golden/runtime/tokenizer_sp_golden.json and on TEXT, with and without the special tokens
(add_special_tokens), and decode. For pycode-tiny: AutoModelForCausalLM on the written folder
against the original checkpoint, logits on the first 256 ids of TEXT.
Run on the device machine. usage: python3 check_transformers.py OUTPUTS_DIR TEXT OUT.json
"""
import json
import os
import sys

import tokenizers
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    root, text_path, out_path = sys.argv[1:4]
    text = open(text_path, encoding="utf-8").read()
    golden = json.load(open(os.path.join(HERE, "..", "..", "golden", "runtime", "tokenizer_sp_golden.json")))["models"]
    result = {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__, "models": {}}
    for name in ["llama2", "llama3", "gemma3", "qwen2_5", "pycode"]:
        ck = os.path.join(root, name, "ck")
        orig_file = os.path.join(root, name, "src" if name == "pycode" else "orig", "tokenizer.json")
        ref = tokenizers.Tokenizer.from_file(orig_file)
        ours = AutoTokenizer.from_pretrained(ck)
        samples = [s["text"] for s in golden.get(name, {}).get("samples", [])] + [text]
        r = {"class": type(ours).__name__, "texts": len(samples), "mismatch": []}
        for i, t in enumerate(samples):
            for special in (False, True):
                a = ref.encode(t, add_special_tokens=special).ids
                b = ours(t, add_special_tokens=special)["input_ids"]
                if a != b:
                    k = next((j for j in range(min(len(a), len(b))) if a[j] != b[j]), min(len(a), len(b)))
                    r["mismatch"].append({"text": i, "special": special, "len": [len(a), len(b)], "first_diff": k,
                                          "ref": a[k:k + 5], "ours": b[k:k + 5]})
            ids = ref.encode(t, add_special_tokens=True).ids
            if ours.decode(ids) != ref.decode(ids, skip_special_tokens=False):
                r["mismatch"].append({"text": i, "decode": True})
        r["ids_of_text"] = len(ref.encode(text, add_special_tokens=False).ids)
        if name == "pycode":
            ids = torch.tensor([ref.encode(text, add_special_tokens=False).ids[:256]])
            src = AutoModelForCausalLM.from_pretrained(os.path.join(root, name, "src"), dtype=torch.float32).eval()
            got = AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float32).eval()
            with torch.no_grad():
                la, lb = src(ids).logits, got(ids).logits
            r["logits_max_abs_diff"] = float((la - lb).abs().max())
            r["logits_max_abs"] = float(la.abs().max())
            r["model_class"] = type(got).__name__
        result["models"][name] = r
        print(name, r["class"], "mismatches:", len(r["mismatch"]), r.get("logits_max_abs_diff", ""), flush=True)
    json.dump(result, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main()
