// Runs two ONNX models in ONNX Runtime on the same deterministic inputs and compares outputs.
// usage: node compare.js REFERENCE CANDIDATE MAX_REL_ERR [OPT_LEVEL]
// MAX_REL_ERR is max|a-b| / max|a| over each output; 0 demands bit-identical outputs.
// OPT_LEVEL is ONNX Runtime's graphOptimizationLevel (default "all", as users run it).
const ort = require('onnxruntime-node');
const {makeInput} = require('./inputs.js');

(async () => {
  const [refPath, candPath, tolText, level = 'all'] = process.argv.slice(2);
  const tol = Number(tolText);
  const opts = {graphOptimizationLevel: level};
  const ref = await ort.InferenceSession.create(refPath, opts);
  const cand = await ort.InferenceSession.create(candPath, opts);
  const feeds = {};
  for (const m of ref.inputMetadata) feeds[m.name] = makeInput(m);
  const a = await ref.run(feeds);
  const b = await cand.run(feeds);
  let ok = true;
  for (const name of ref.outputNames) {
    const x = a[name].data, y = b[name].data;
    if (x.length !== y.length) throw new Error(`${name}: ${x.length} vs ${y.length} elements`);
    let maxAbs = 0, maxRef = 0, identical = true;
    for (let i = 0; i < x.length; i++) {
      const d = Math.abs(Number(x[i]) - Number(y[i]));
      if (!(d === 0)) identical = false;
      if (d > maxAbs || Number.isNaN(d)) maxAbs = Number.isNaN(d) ? Infinity : d;
      maxRef = Math.max(maxRef, Math.abs(Number(x[i])));
    }
    const rel = maxRef > 0 ? maxAbs / maxRef : maxAbs;
    const pass = tol === 0 ? identical : rel <= tol;
    ok = ok && pass;
    console.log(JSON.stringify({reference: refPath, candidate: candPath, output: name,
                                optimization: level, elements: x.length, max_abs: maxAbs, max_rel: rel, tolerance: tol, pass}));
  }
  process.exit(ok ? 0 : 1);
})().catch((e) => { console.error(`compare.js: ${e.message}`); process.exit(2); });
