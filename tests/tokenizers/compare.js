// node compare.js TEXTS_JSON OURS_JSON THEIRS_JSON [SKIP_JSON]: exit 1 and the first differences
// when compress's ids (tokenize_ids) differ from the reference's (hf_ids.js, spm_ids) on any text;
// texts holding one of SKIP_JSON's strings are left out (and counted).
const fs = require("fs");
const [textsPath, oursPath, theirsPath, skipPath] = process.argv.slice(2);
const skip = skipPath ? JSON.parse(fs.readFileSync(skipPath, "utf8")) : [];
let skipped = 0;
const texts = JSON.parse(fs.readFileSync(textsPath, "utf8"));
const ours = JSON.parse(fs.readFileSync(oursPath, "utf8"));
const theirs = JSON.parse(fs.readFileSync(theirsPath, "utf8"));
let bad = 0, ids = 0;
const same = (a, b) => a.length === b.length && a.every((v, i) => v === b[i]);
for (let i = 0; i < texts.length; ++i) {
  const o = ours[i], t = theirs[i];
  let why = null;
  if (t.error) continue;  // Hugging Face refuses it too (or cannot take it): nothing to compare
  if (skip.some((x) => texts[i].includes(x))) {
    ++skipped;
    continue;
  }
  if (o.error) why = `compress refused it: ${o.error}`;
  else if (!same(o.ids, t.ids)) why = "ids differ";
  else if (!same(o.ids_with_special, t.ids_with_special)) why = "ids with special tokens differ";
  if (why) {
    if (++bad <= 5) {
      const a = o.ids || [], b = t.ids || [];
      let k = 0;
      while (k < a.length && k < b.length && a[k] === b[k]) ++k;
      console.log(`  text ${i} ${JSON.stringify(texts[i]).slice(0, 160)}: ${why}; from id ${k}: ours ${JSON.stringify(a.slice(k, k + 8))}, theirs ${JSON.stringify(b.slice(k, k + 8))}`);
    }
  } else {
    ids += t.ids.length;
  }
}
console.log(`${texts.length - bad - skipped} of ${texts.length} texts equal (${ids} ids)` +
            (skipped ? `, ${skipped} left out` : ""));
process.exit(bad ? 1 : 0);
