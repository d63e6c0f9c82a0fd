// node compare.js TEXTS_JSON OURS_JSON THEIRS_JSON: exit 1 and the first differences when
// compress's ids (tokenize_ids) differ from Hugging Face's (hf_ids.js) on any text.
const fs = require("fs");
const [textsPath, oursPath, theirsPath] = process.argv.slice(2);
const texts = JSON.parse(fs.readFileSync(textsPath, "utf8"));
const ours = JSON.parse(fs.readFileSync(oursPath, "utf8"));
const theirs = JSON.parse(fs.readFileSync(theirsPath, "utf8"));
let bad = 0, ids = 0;
const same = (a, b) => a.length === b.length && a.every((v, i) => v === b[i]);
for (let i = 0; i < texts.length; ++i) {
  const o = ours[i], t = theirs[i];
  let why = null;
  if (t.error) continue;  // Hugging Face refuses it too (or cannot take it): nothing to compare
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
console.log(`${texts.length - bad} of ${texts.length} texts equal (${ids} ids)`);
process.exit(bad ? 1 : 0);
