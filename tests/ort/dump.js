// Runs a model in ONNX Runtime (optimization level "basic": exact ONNX semantics, or OPT_LEVEL) on the same
// deterministic inputs as compare.js and writes them and the outputs as an ONNX test-data
// set (DIR/input_N.pb, DIR/output_N.pb, TensorProto with raw_data), for `compress eval
// MODEL --inputs DIR` to check our interpreter against ONNX Runtime.
// usage: node dump.js MODEL DIR
const fs = require('fs');
const path = require('path');
const ort = require('onnxruntime-node');
const {makeInput} = require('./inputs.js');

const kTypes = {float32: 1, uint8: 2, int8: 3, int32: 6, int64: 7, bool: 9, float16: 10, float64: 11};

function varint(n) {
  const out = [];
  let v = BigInt(n);
  if (v < 0n) v += 1n << 64n;
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) b |= 0x80;
    out.push(b);
  } while (v > 0n);
  return out;
}

function tensorProto(name, t) {
  const parts = [];
  for (const d of t.dims) parts.push(Buffer.from([0x08, ...varint(d)]));            // dims = 1
  parts.push(Buffer.from([0x10, ...varint(kTypes[t.type])]));                       // data_type = 2
  const nameBytes = Buffer.from(name, 'utf8');
  parts.push(Buffer.from([0x42, ...varint(nameBytes.length)]), nameBytes);          // name = 8
  const data = t.type === 'bool' ? Buffer.from(Uint8Array.from(t.data, (x) => (x ? 1 : 0)))
                                 : Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  parts.push(Buffer.from([0x4a, ...varint(data.length)]), data);                    // raw_data = 9
  return Buffer.concat(parts);
}

(async () => {
  const [modelPath, dir] = process.argv.slice(2);
  const level = process.env.OPT_LEVEL || 'basic';
  const session = await ort.InferenceSession.create(modelPath, {graphOptimizationLevel: level});
  const feeds = {};
  fs.mkdirSync(dir, {recursive: true});
  session.inputMetadata.forEach((m, i) => {
    feeds[m.name] = makeInput(m);
    fs.writeFileSync(path.join(dir, `input_${i}.pb`), tensorProto(m.name, feeds[m.name]));
  });
  const out = await session.run(feeds);
  session.outputNames.forEach((name, i) => {
    fs.writeFileSync(path.join(dir, `output_${i}.pb`), tensorProto(name, out[name]));
  });
})().catch((e) => { console.error(`dump.js: ${e.message}`); process.exit(2); });
