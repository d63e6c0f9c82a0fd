"""Writes a fine-grained FP8 checkpoint with transformers' own quantizer (FineGrainedFP8Config,
blocks of 128 x 128) and its perplexity as transformers computes it, for compress to read.

Run on the device machine (a GPU: transformers' FP8 linear layers need one):
    python3 make_fp8.py MODEL_DIR TEXT OUT_DIR
OUT_DIR gets the checkpoint (model.safetensors, config.json, the tokenizer files) and
hf_ppl.json: perplexity of the first 512 ids of TEXT in windows of 128 (reference_ppl.py), of the
FP8 model on the GPU (null where transformers cannot run it) and of the original in f32 on the CPU.
The checkpoint is what the comparison needs: docs/formats.md says what its tensors held.
"""
import json
import os
import shutil
import sys

import tokenizers
import torch
from transformers import AutoModelForCausalLM, FineGrainedFP8Config

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "golden"))
from reference_ppl import perplexity  # noqa: E402


def main(src, text_path, out):
    ids = tokenizers.Tokenizer.from_file(os.path.join(src, "tokenizer.json")).encode(
        open(text_path, encoding="utf-8").read(), add_special_tokens=False).ids[:512]
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    ref_ppl = perplexity(ref, ids, 128)[0]
    q = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16, device_map="cuda",
                                             quantization_config=FineGrainedFP8Config(weight_block_size=(128, 128)))
    q.eval()
    q.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.exists(os.path.join(src, f)):
            shutil.copy(os.path.join(src, f), out)

    class OnGpu(torch.nn.Module):  # reference_ppl feeds CPU tensors
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            out = self.m(x.cuda())
            out.logits = out.logits.float().cpu()
            return out

    try:  # transformers' FP8 linear layers need the `kernels` package, which the device lacks (2026-12-07)
        fp8_ppl = perplexity(OnGpu(q), ids, 128)[0]
    except ImportError as e:
        fp8_ppl = None
        print("no FP8 inference here:", e)
    json.dump({"fp8_ppl": fp8_ppl, "f32_ppl": ref_ppl, "tokens": len(ids)}, open(os.path.join(out, "hf_ppl.json"), "w"))
    print(json.dumps({"fp8_ppl": fp8_ppl, "f32_ppl": ref_ppl}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
