"""Reference perplexity with a transformers model, as `compress eval --ctx CTX` computes it:
non-overlapping CTX-token windows, each scoring its len - 1 next-token predictions in f64,
a last window under 2 tokens dropped. Shared by the device scripts that make goldens and
check outputs (tests/golden/runtime, tests/compressed_tensors, bench/families)."""
import math

import torch


def perplexity(model, ids, ctx=512):
    """Returns (perplexity, tokens scored, windows)."""
    nll, n, windows = 0.0, 0, 0
    with torch.no_grad():
        for s in range(0, len(ids), ctx):
            w = ids[s:s + ctx]
            if len(w) < 2:
                continue
            x = torch.tensor([w])
            lp = torch.log_softmax(model(x).logits[0].double()[:-1], -1)
            nll -= lp.gather(1, x[0, 1:, None]).sum().item()
            n += len(w) - 1
            windows += 1
    return math.exp(nll / n), n, windows
