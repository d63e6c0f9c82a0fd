#!/usr/bin/env python3
"""Trains small checkpoints of non-Llama families on pycode text, for quality figures.

For each family: a small model (transformers, random init) trained on the first 90% of
pycode-dev.txt with pycode-tiny's tokenizer, keeping the weights with the best held-out loss;
saved in bf16 with the tokenizer. The last 10% of the text is written as heldout.txt, and
transformers' perplexity on it (f32 weights from the saved bf16, eager attention, non-overlapping
512-token windows each scoring its 511 next-token predictions, a last window under 2 tokens
dropped: what `compress eval --ctx 512` computes) goes to reference.json.

Run on the device machine:
    python bench/families/train_small.py DATA_DIR OUT_DIR [FAMILY...]
DATA_DIR holds pycode-dev.txt and tokenizer.json (copies of ../shared's).
"""
import json
import math
import os
import sys
import time

import torch
import transformers as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "golden"))
from reference_ppl import perplexity  # noqa: E402

SEQ = 256
COMMON = dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=512, max_position_embeddings=1024, tie_word_embeddings=True,
              attn_implementation="eager")
FAMILIES = {
    "qwen3": (tf.Qwen3Config, dict(COMMON, head_dim=48)),
    "gemma3_text": (tf.Gemma3TextConfig, dict(COMMON, head_dim=48, sliding_window=128, query_pre_attn_scalar=48,
                                              layer_types=["sliding_attention", "sliding_attention",
                                                           "sliding_attention", "full_attention"])),
    "qwen3_moe": (tf.Qwen3MoeConfig, dict(COMMON, head_dim=48, num_experts=8, num_experts_per_tok=2,
                                          moe_intermediate_size=256, norm_topk_prob=True)),
    "phi3": (tf.Phi3Config, dict(COMMON, pad_token_id=0)),
    # widths that are whole 256-element blocks, for the K-quant comparison with llama.cpp
    "qwen3_wide": (tf.Qwen3Config, dict(COMMON, hidden_size=256, intermediate_size=768, head_dim=64)),
    "gemma3_wide": (tf.Gemma3TextConfig, dict(COMMON, hidden_size=256, intermediate_size=768, head_dim=64,
                                              sliding_window=128, query_pre_attn_scalar=64,
                                              layer_types=["sliding_attention", "sliding_attention",
                                                           "sliding_attention", "full_attention"])),
    "phi3_wide": (tf.Phi3Config, dict(COMMON, hidden_size=256, intermediate_size=768, pad_token_id=0)),
}


def ppl(model, ids, ctx=512):
    p, n, _ = perplexity(model, ids, ctx)
    return p, n


def main(data, out):
    only = sys.argv[3:]
    tok = tf.PreTrainedTokenizerFast(tokenizer_file=os.path.join(data, "tokenizer.json"))
    text = open(os.path.join(data, "pycode-dev.txt"), encoding="utf-8").read()
    cut = text.rfind("\n", 0, int(len(text) * 0.9)) + 1
    train_text, held_text = text[:cut], text[cut:]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write(held_text)
    train = torch.tensor(tok.encode(train_text, add_special_tokens=False))
    held = tok.encode(held_text, add_special_tokens=False)
    vocab = len(tok.get_vocab())
    ref = {}
    dev = "cuda"
    for fam, (cls, kw) in FAMILIES.items():
        if only and fam not in only:
            continue
        torch.manual_seed(0)
        cfg = cls(vocab_size=vocab, **kw)
        model = tf.AutoModelForCausalLM.from_config(cfg).to(dev).float()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1, betas=(0.9, 0.95))
        steps, batch = 1500, 32
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
        held_t = torch.tensor(held[: (len(held) // SEQ) * SEQ]).view(-1, SEQ).to(dev)
        best, best_state, t0 = 1e9, None, time.time()
        for step in range(steps):
            starts = torch.randint(0, len(train) - SEQ - 1, (batch,))
            x = torch.stack([train[s:s + SEQ] for s in starts]).to(dev)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if step % 100 == 99 or step == steps - 1:
                model.eval()
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                    hl = model(held_t, labels=held_t).loss.item()
                model.train()
                if hl < best:
                    best, best_state = hl, {k: v.detach().clone() for k, v in model.state_dict().items()}
                print(fam, step + 1, "train", round(loss.item(), 3), "held", round(hl, 3), flush=True)
        model.load_state_dict(best_state)
        d = os.path.join(out, fam)
        model.to(torch.bfloat16).save_pretrained(d, safe_serialization=True)
        for extra in ("generation_config.json",):
            if os.path.exists(os.path.join(d, extra)):
                os.remove(os.path.join(d, extra))
        with open(os.path.join(data, "tokenizer.json")) as src, open(os.path.join(d, "tokenizer.json"), "w") as dst:
            dst.write(src.read())
        # Reference perplexity from the saved bf16 weights, computed in f32 on the CPU.
        m32 = tf.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        p, n = ppl(m32, held)
        ref[fam] = {"perplexity": p, "tokens_scored": n, "train_seconds": time.time() - t0,
                    "parameters": sum(v.numel() for v in m32.parameters())}
        print(fam, ref[fam], flush=True)
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
