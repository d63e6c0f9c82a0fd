"""transformers on the folders make_family_outputs.sh wrote (checkpoint -> GGUF -> checkpoint):
logits for the golden ids against the logits transformers gave for the original checkpoint.
Run on the device machine: python3 check_family_logits.py OUTPUTS_DIR OUT.json"""
import json
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main(root, out_path):
    result = {}
    for fam in sorted(os.listdir(root)):
        d = os.path.join(root, fam)
        if not os.path.isdir(d):
            continue
        g = load_file(os.path.join(d, "golden.safetensors"))
        try:
            m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
            with torch.no_grad():
                logits = m(g["ids"].long()[None]).logits[0]
            ref = g["logits"]
            src = os.path.join(d, "source")  # an edited fixture: transformers on it is the reference
            if os.path.isdir(src):
                s = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, attn_implementation="eager").eval()
                with torch.no_grad():
                    ref = s(g["ids"].long()[None]).logits[0]
            diff = float((logits - ref).abs().max())
            result[fam] = {"class": type(m).__name__, "max_abs_diff": diff,
                           "max_abs": float(ref.abs().max())}
        except Exception as e:  # noqa: BLE001 - reported per family
            result[fam] = {"error": f"{type(e).__name__}: {e}"[:400]}
        print(fam, result[fam], flush=True)
    json.dump(result, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
