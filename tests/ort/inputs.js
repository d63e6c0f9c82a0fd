// Deterministic model inputs shared by compare.js and dump.js: symbolic dims are 1 for the
// first axis and 16 elsewhere; integers (i * 7 + 3) % 256, floats sin(0.37 i).
const ort = require('onnxruntime-node');

function makeInput(meta) {
  const sym = Number(process.env.SYMBOLIC_DIM || 16);  // size of symbolic dims after the first
  const dims = meta.shape.map((d, i) => (typeof d === 'number' ? d : i === 0 ? 1 : sym));
  const n = dims.reduce((a, b) => a * b, 1);
  switch (meta.type) {
    case 'int64': return new ort.Tensor('int64', BigInt64Array.from({length: n}, (_, i) => BigInt((i * 7 + 3) % 256)), dims);
    case 'int32': return new ort.Tensor('int32', Int32Array.from({length: n}, (_, i) => (i * 7 + 3) % 256), dims);
    case 'float32': return new ort.Tensor('float32', Float32Array.from({length: n}, (_, i) => Math.sin(i * 0.37)), dims);
    default: throw new Error(`input ${meta.name}: unsupported type ${meta.type}`);
  }
}

module.exports = {makeInput};
