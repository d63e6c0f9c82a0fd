"""Splits ../shared/data/pycode-dev.txt at a document boundary into OUT/calib.txt (first half of
the documents) and OUT/eval.txt (second half), so calibration never sees evaluation text.
usage: python3 bench/split_dev_text.py OUT_DIR   (from the project root)"""
import sys

text = open("../shared/data/pycode-dev.txt", encoding="utf-8").read()
docs = text.split("<|endoftext|>")
half = len(docs) // 2
open(f"{sys.argv[1]}/calib.txt", "w", encoding="utf-8").write("<|endoftext|>".join(docs[:half]))
open(f"{sys.argv[1]}/eval.txt", "w", encoding="utf-8").write("<|endoftext|>".join(docs[half:]))
