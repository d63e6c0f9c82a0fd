// Runs a GGUF file in llama.cpp (through the npm package node-llama-cpp and its prebuilt CPU
// binaries) and prints JSON on stdout:
//   node llama_eval.mjs ppl MODEL.gguf IDS.json CTX   -> {perplexity, tokens, nll}
//     next-token perplexity over consecutive windows of CTX tokens (each window a fresh
//     sequence; CTX - 1 predictions per window, a final window shorter than 2 tokens dropped),
//     the convention of `compress eval --ctx CTX --stride CTX`.
//   node llama_eval.mjs tokenize MODEL.gguf TEXT_FILE IDS_OUT N -> {tokens, sha256}
//     llama.cpp's tokenization of the text (no BOS; special tokens such as <|endoftext|> matched
//     in the text, as Hugging Face tokenizers does): the count and the
//     sha256 of the little-endian int32 ids; the first N ids go to IDS_OUT as a JSON array.
import crypto from "node:crypto";
import fs from "node:fs";
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const [mode, modelPath, input, ctxArg, countArg] = process.argv.slice(2);
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const model = await llama.loadModel({modelPath, gpuLayers: 0});

if (mode === "tokenize") {
  const ids = Array.from(model.tokenize(fs.readFileSync(input, "utf8"), true));
  fs.writeFileSync(ctxArg, JSON.stringify(ids.slice(0, Number(countArg))) + "\n");
  const sha256 = crypto.createHash("sha256").update(Buffer.from(new Int32Array(ids).buffer)).digest("hex");
  process.stdout.write(JSON.stringify({tokens: ids.length, sha256}) + "\n");
} else if (mode === "ppl") {
  const ids = JSON.parse(fs.readFileSync(input, "utf8"));
  const ctx = Number(ctxArg);
  const context = await model.createContext({contextSize: ctx, batchSize: ctx, threads: 2});
  const seq = context.getSequence();
  let nll = 0;
  let count = 0;
  for (let begin = 0; begin + 1 < ids.length; begin += ctx) {
    const win = ids.slice(begin, begin + ctx);
    if (win.length < 2) break;
    await seq.clearHistory();
    const input = win.map((t, i) => (i + 1 < win.length ? [t, {generateNext: {logits: true}}] : t));
    const out = await seq.controlledEvaluate(input);
    for (let i = 0; i + 1 < win.length; ++i) {
      const logits = out[i].next.logits;  // Map token -> logit, the whole vocabulary
      let max = -Infinity;
      for (const v of logits.values()) max = Math.max(max, v);
      let sum = 0;
      for (const v of logits.values()) sum += Math.exp(v - max);
      nll += Math.log(sum) + max - logits.get(win[i + 1]);
      ++count;
    }
  }
  process.stdout.write(JSON.stringify({perplexity: Math.exp(nll / count), tokens: count, nll}) + "\n");
} else {
  console.error("usage: llama_eval.mjs ppl MODEL IDS CTX | tokenize MODEL TEXT IDS_OUT N");
  process.exit(2);
}
