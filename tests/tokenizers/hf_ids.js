// node hf_ids.js TOKENIZER_JSON TEXTS_JSON OUT_JSON: Hugging Face tokenizers (npm tokenizers,
// the Rust library's Node binding) on each text of a JSON list, in tokenize_ids' output form.
const fs = require("fs");
const {Tokenizer} = require("tokenizers");
const [tokPath, textsPath, outPath] = process.argv.slice(2);
(async () => {
  const tok = Tokenizer.fromFile(tokPath);
  const out = [];
  for (const text of JSON.parse(fs.readFileSync(textsPath, "utf8"))) {
    try {
      const plain = await tok.encode(text, null, {addSpecialTokens: false});
      const special = await tok.encode(text, null, {addSpecialTokens: true});
      out.push({ids: Array.from(plain.getIds()), ids_with_special: Array.from(special.getIds())});
    } catch (e) {
      out.push({error: String(e)});
    }
  }
  fs.writeFileSync(outPath, JSON.stringify(out));
})();
