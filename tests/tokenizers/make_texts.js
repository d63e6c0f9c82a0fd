// node make_texts.js TOKENIZER_JSON SEED COUNT OUT_JSON [TEXT_FILE]: texts to tokenize, made to
// reach the corners of pre-tokenizers and added tokens: random runs from many scripts and
// character classes (letters, marks, digits of several scripts, punctuation, symbols, every kind
// of whitespace, emoji with modifiers and joiners, contractions), the tokenizer's own added
// tokens with whitespace around them, fixed edge cases, slices of TEXT_FILE and, last, the whole
// of it. Deterministic for a seed.
const fs = require("fs");
const [tokPath, seedArg, countArg, outPath, textFile] = process.argv.slice(2);
let state = (Number(seedArg) >>> 0) || 1;
const rnd = (n) => {  // xorshift32
  state ^= state << 13; state >>>= 0;
  state ^= state >>> 17;
  state ^= state << 5; state >>>= 0;
  return state % n;
};
const pick = (a) => a[rnd(a.length)];
const pools = [
  "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", "0123456789",
  "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", "      ", "\t\n\r", "\n\n",
  "éñüÀÖçßøåÆœ", "e\u0301a\u0308o\u0302n\u0303", "αβγδεζηθΣΩάέ", "абвгдежзЖЩЯё",
  "中文字符日本語漢字", "ひらがなカタカナー", "한국어가나다", "\u1100\u1161\u11a8",
  "العربيةمرحبا", "हिन्दीनमस्ते", "٠١٢٣٤٥", "०१२३", "²³¹½¼Ⅻⅳ", "€£¥₹₩¢",
  "\u00a0\u2000\u2003\u2009\u200a\u3000\u2028\u2029\u0085\u202f\u205f\u1680",
  "\u200b\u200c\u200d\ufeff", "ＡＢＣａｂｃ１２３！？", "→∑∞≠≤≥√∫", "—–‘’“”…·•",
  "Å\u212bK\u212a", "ﬁﬂ", "\u0345\u0308\u0300",
];
const chunks = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "'Re", " 's", "'", "''",
  "🙂", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "🚀🚀", "❤️", "©️", "1,234.56", "3.14159", "2026-12-07",
  "0x1F", "1e-5", "12345678901234567890", "    ", "\t\t", "\r\n", "\n    ", " \n", "  \n\n  "];
const tok = JSON.parse(fs.readFileSync(tokPath, "utf8"));
const added = (tok.added_tokens || []).map((a) => a.content).filter((c) => c.length > 0);
const someAdded = added.length > 64 ? Array.from({length: 64}, () => pick(added)) : added;
const spaces = ["", "", " ", "  ", "\n", "\n\n", "\t", " \n ", "\u3000"];
const texts = ["", " ", "  ", "\n", "\n\n\n", "\t", " \t\n", "a", "A", "1", "12", "123", "1234", "a1b2c3",
  "x" .repeat(300), " ".repeat(40) + "x", "\n".repeat(20), "0".repeat(50), "Hello world", " Hello",
  "Hello ", "don't DON'T Don'T", "<|endof", "<s", "</", "[INST", "<unk>", "<0x41>", "\u2581a", "▁▁x"];
for (const a of added.slice(0, 16)) texts.push(a, " " + a, a + " ", "x" + a + "y", a + a, "\n" + a + "\n\n", a.slice(0, -1));
const source = textFile ? Array.from(fs.readFileSync(textFile, "utf8")) : [];
const count = Number(countArg);
while (texts.length < count) {
  const kind = rnd(10);
  if (kind < 2 && source.length > 0) {  // a slice of real text
    const from = rnd(source.length), len = 1 + rnd(400);
    texts.push(source.slice(from, from + len).join(""));
    continue;
  }
  let s = "";
  const parts = 1 + rnd(24);
  for (let p = 0; p < parts; ++p) {
    const r = rnd(10);
    if (r < 6) {
      const pool = Array.from(pick(pools));
      const len = 1 + rnd(8);
      for (let i = 0; i < len; ++i) s += pick(pool);
    } else if (r < 8) {
      s += pick(chunks);
    } else if (someAdded.length > 0) {
      s += pick(spaces) + pick(someAdded) + pick(spaces);
    } else {
      s += pick(spaces);
    }
  }
  texts.push(s);
}
if (textFile) texts.push(source.join(""));  // and the whole file as one text
fs.writeFileSync(outPath, JSON.stringify(texts));
