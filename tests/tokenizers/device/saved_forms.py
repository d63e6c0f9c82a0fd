# What transformers (this version) writes for each family's tokenizer: load the folder with
# AutoTokenizer (tokenizer_config.json names the class), save_pretrained, and record the saved
# tokenizer.json's normalizer / pre_tokenizer / decoder and the ids of some texts.
import gzip, json, os, shutil, sys
import transformers
from transformers import AutoTokenizer
out = os.environ.get("OUT", "/tmp/out")
here = os.environ.get("FORMS_DIR", ".device/tok5")
print("transformers", transformers.__version__)
texts = ["Hello world", " Hello", "  two spaces", "a\nb\n\n c", "def f(x):\n    return x + 1", "日本語 テキスト", "<s>x</s> y", "1234567 89"]
for n in sorted(os.listdir(here)):
    d = os.path.join(here, n)
    if not os.path.isdir(d):
        continue
    work = os.path.join("/tmp/tok5", n)
    os.makedirs(work, exist_ok=True)
    with gzip.open(os.path.join(d, "tokenizer.json.gz")) as f, open(os.path.join(work, "tokenizer.json"), "wb") as g:
        g.write(f.read())
    shutil.copy(os.path.join(d, "tokenizer_config.json"), work)
    try:
        tok = AutoTokenizer.from_pretrained(work)
    except Exception as e:
        print(n, "load failed", repr(e)[:300]); continue
    saved = os.path.join(out, n)
    tok.save_pretrained(saved)
    j = json.load(open(os.path.join(saved, "tokenizer.json")))
    print("==", n, type(tok).__name__)
    for k in ("normalizer", "pre_tokenizer", "decoder", "post_processor"):
        print("  ", k, json.dumps(j.get(k))[:300])
    print("   model", {k: v for k, v in j["model"].items() if k not in ("vocab", "merges")})
    ids = [{"text": t, "ids": tok.encode(t, add_special_tokens=False), "ids_with_special": tok.encode(t)} for t in texts]
    json.dump(ids, open(os.path.join(saved, "ids.json"), "w"))
    with open(os.path.join(saved, "tokenizer.json"), "rb") as f, gzip.open(os.path.join(saved, "tokenizer.json.gz"), "wb") as g:
        g.write(f.read())
    os.remove(os.path.join(saved, "tokenizer.json"))
