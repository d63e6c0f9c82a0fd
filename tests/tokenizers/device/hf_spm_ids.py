# transformers' reading of a folder holding only tokenizer.model + tokenizer_config.json
import json, sys, os
import transformers
from transformers import AutoTokenizer
print("transformers", transformers.__version__)
try:
    import sentencepiece; print("sentencepiece", sentencepiece.__version__)
except Exception as e:
    print("no sentencepiece", e)
for n in sys.argv[1:]:
    d = os.path.join(os.environ.get("SPM_DIR", ".device/spm"), n)
    texts = json.load(open(os.path.join(d, "texts.json")))
    for legacy in (None,):
        try:
            tok = AutoTokenizer.from_pretrained(d)
        except Exception as e:
            print(n, "load failed:", repr(e)[:400]); continue
        print(n, type(tok).__name__, "legacy", getattr(tok, "legacy", "?"))
        out = []
        for t in texts:
            out.append({"ids": tok.encode(t, add_special_tokens=False), "ids_with_special": tok.encode(t, add_special_tokens=True)})
        os.makedirs(os.environ.get("OUT", "/tmp/out"), exist_ok=True)
        json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp/out"), n + ".hf.json"), "w"))
        # the slow (sentencepiece) tokenizer too, when it can be made
        try:
            from transformers import LlamaTokenizer
            slow = LlamaTokenizer(vocab_file=os.path.join(d, "tokenizer.model"))
            print(n, "slow", type(slow).__name__)
            out = [{"ids": slow.encode(t, add_special_tokens=False), "ids_with_special": slow.encode(t, add_special_tokens=True)} for t in texts]
            json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp/out"), n + ".slow.json"), "w"))
        except Exception as e:
            print(n, "slow failed:", repr(e)[:300])
