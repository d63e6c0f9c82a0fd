// Writes SRC's checkpoint into DIR with its token embedding (and output head, when untied)
// resized to VOCAB rows of small deterministic values, config.json's vocab_size to match:
// a model for a tokenizer of another vocabulary (DIR/tokenizer.json is the caller's).
// usage: node make_vocab_model.mjs SRC DIR VOCAB
import fs from "node:fs";
import path from "node:path";

const [src, dir, vocabArg] = process.argv.slice(2);
const vocab = Number(vocabArg);
const file = fs.readFileSync(path.join(src, "model.safetensors"));
const n = Number(file.readBigUInt64LE(0));
const header = JSON.parse(file.subarray(8, 8 + n).toString("utf8"));
const data = file.subarray(8 + n);
const out = {};
const blobs = [];
let offset = 0;
let state = 12345;
for (const [name, t] of Object.entries(header)) {
  if (name === "__metadata__") continue;
  let bytes = data.subarray(t.data_offsets[0], t.data_offsets[1]);
  let shape = t.shape;
  if (name === "model.embed_tokens.weight" || name === "lm_head.weight") {
    if (t.dtype !== "BF16" && t.dtype !== "F32") throw new Error(`${name}: expected BF16 or F32, got ${t.dtype}`);
    const bf16 = t.dtype === "BF16";
    shape = [vocab, t.shape[1]];
    bytes = Buffer.alloc((bf16 ? 2 : 4) * vocab * t.shape[1]);
    const f = new Float32Array(1), u = new Uint32Array(f.buffer);
    for (let i = 0; i < vocab * t.shape[1]; ++i) {
      state = (Math.imul(state, 1103515245) + 12345) >>> 0;
      f[0] = ((state >>> 8) / 16777216 - 0.5) * 0.08;
      if (bf16) {
        bytes.writeUInt16LE(u[0] >>> 16, 2 * i);
      } else {
        bytes.writeFloatLE(f[0], 4 * i);
      }
    }
  }
  out[name] = {dtype: t.dtype, shape, data_offsets: [offset, offset + bytes.length]};
  blobs.push(bytes);
  offset += bytes.length;
}
let text = JSON.stringify(out);
text += " ".repeat((8 - (text.length % 8)) % 8);
const head = Buffer.alloc(8);
head.writeBigUInt64LE(BigInt(Buffer.byteLength(text)));
fs.mkdirSync(dir, {recursive: true});
fs.writeFileSync(path.join(dir, "model.safetensors"), Buffer.concat([head, Buffer.from(text), ...blobs]));
const config = JSON.parse(fs.readFileSync(path.join(src, "config.json"), "utf8"));
config.vocab_size = vocab;
fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(config, null, 2));
