// Writes a small random-weight checkpoint of a non-Llama family (config.json, model.safetensors
// in f32, the given tokenizer.json) for the llama.cpp cross-check of compress's GGUF writer:
//   node make_family_model.mjs llama|qwen2|qwen3|phi3|gemma|gemma2|gemma3_text|mixtral|qwen2_moe|qwen3_moe|gpt2 OUT_DIR
//        TOKENIZER [wide] [rope=llama3|linear|yarn] [vocab=N]
// Weights come from a fixed-seed generator (normal, std 1/sqrt(fan-in); norms 1 + N(0, 0.1^2)),
// so the file is the same on every run. Vocabulary 8192 (pycode-tiny's tokenizer), hidden 64,
// 2 blocks, 4 heads (2 KV heads) of 16, FFN 128, tied embeddings; Qwen2 with q/k/v biases, Qwen3 with its q/k norms,
// Phi-3 with fused qkv_proj / gate_up_proj and half of each head rotated, Gemma (norms stored as
// offsets from 1, GeGLU, scaled embeddings), Gemma 2 (sandwich norms, soft-capping, a sliding
// window of 8 on even blocks) and Gemma 3 (q/k norms, a sliding window of 8 on block 0 and
// separate rope bases for sliding and global blocks). Mixtures of experts: 4 experts, 2 per token;
// Mixtral (block_sparse_moe, experts FFN 128), Qwen2-MoE (q/k/v biases, experts of 64, a shared
// expert of 96 with its sigmoid gate, unnormalized top-k) and Qwen3-MoE (q/k norms, experts of 64,
// normalized top-k). GPT-2: Conv1D [in, out] weights with biases, LayerNorms, learned positions,
// 4 heads of 16 (no GQA). `wide`: hidden 256, heads of 64 and FFN 512,
// so every row is a whole 256-element block of the K-quants. `small` (speed benchmarks): GPT-2
// small's shapes, hidden 768, 12 blocks, 12 heads of 64, FFN 3072 (vocabulary still 8192).
import fs from "node:fs";
import path from "node:path";

const [family, out, tokenizer, ...options] = process.argv.slice(2);
const wide = options.includes("wide"), small = options.includes("small");
// rope=llama3|linear|yarn|longrope: rope scaling in config.json (llama3 with an original context of
// 64, so that most rotary dims are scaled; linear factor 2; yarn factor 4 over an original 256;
// longrope short and long factors with an original 256)
const rope = (options.find((o) => o.startsWith("rope=")) || "").slice(5);
// vocab=N: a vocabulary of N rows (default 8192, pycode-tiny's) for another tokenizer; TOKENIZER
// is copied as tokenizer.json, or as tokenizer.model when its name ends in .model (SentencePiece).
const vocabOpt = options.find((o) => o.startsWith("vocab="));
const V = vocabOpt ? Number(vocabOpt.slice(6)) : 8192, D = small ? 768 : wide ? 256 : 64, L = small ? 12 : 2, H = small ? 12 : 4, KV = 2,
      HD = small || wide ? 64 : 16, F = small ? 3072 : wide ? 512 : 128;
let state = 0x9e3779b97f4a7c15n;
function uniform() {  // xorshift64*
  state ^= state >> 12n; state ^= (state << 25n) & 0xffffffffffffffffn; state ^= state >> 27n;
  return Number(((state * 0x2545f4914f6cdd1dn) & 0xffffffffffffffffn) >> 11n) / 2 ** 53;
}
function normal() { return Math.sqrt(-2 * Math.log(uniform() + 1e-300)) * Math.cos(2 * Math.PI * uniform()); }
const gemma = family.startsWith("gemma");
const E = 4, TOPK = 2, FE = family === "mixtral" ? F : 64, FS = 96;  // experts, their FFN widths
const moe = family === "mixtral" || family === "qwen2_moe" || family === "qwen3_moe";
const normMean = gemma ? 0 : 1;
const tensors = [];
function add(name, shape, std, mean = 0) {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = mean + std * normal();
  tensors.push({name, shape, data});
}
if (family === "gpt2") {  // Conv1D weights [in, out], LayerNorms with biases, learned positions, 4 KV heads
  add("transformer.wte.weight", [V, D], 0.2 * Math.sqrt(64 / D));
  add("transformer.wpe.weight", [1024, D], 0.1);
  for (let l = 0; l < L; l++) {
    const p = `transformer.h.${l}.`;
    for (const ln of ["ln_1", "ln_2"]) { add(p + ln + ".weight", [D], 0.1, 1); add(p + ln + ".bias", [D], 0.1); }
    add(p + "attn.c_attn.weight", [D, 3 * D], 1 / Math.sqrt(D)); add(p + "attn.c_attn.bias", [3 * D], 0.1);
    add(p + "attn.c_proj.weight", [D, D], 1 / Math.sqrt(D)); add(p + "attn.c_proj.bias", [D], 0.1);
    add(p + "mlp.c_fc.weight", [D, F], 1 / Math.sqrt(D)); add(p + "mlp.c_fc.bias", [F], 0.1);
    add(p + "mlp.c_proj.weight", [F, D], 1 / Math.sqrt(F)); add(p + "mlp.c_proj.bias", [D], 0.1);
  }
  add("transformer.ln_f.weight", [D], 0.1, 1);
  add("transformer.ln_f.bias", [D], 0.1);
} else {
add("model.embed_tokens.weight", [V, D], 0.2 * Math.sqrt(64 / D));  // logits of the same spread at any width
for (let l = 0; l < L; l++) {
  const p = `model.layers.${l}.`;
  add(p + "input_layernorm.weight", [D], 0.1, normMean);
  add(p + "post_attention_layernorm.weight", [D], 0.1, normMean);
  if (gemma && family !== "gemma") {
    add(p + "pre_feedforward_layernorm.weight", [D], 0.1, normMean);
    add(p + "post_feedforward_layernorm.weight", [D], 0.1, normMean);
  }
  if (family !== "phi3") {
    add(p + "self_attn.q_proj.weight", [H * HD, D], 1 / Math.sqrt(D));
    add(p + "self_attn.k_proj.weight", [KV * HD, D], 1 / Math.sqrt(D));
    add(p + "self_attn.v_proj.weight", [KV * HD, D], 1 / Math.sqrt(D));
    if (family === "qwen2_moe" || family === "qwen2") {
      add(p + "self_attn.q_proj.bias", [H * HD], 0.1);
      add(p + "self_attn.k_proj.bias", [KV * HD], 0.1);
      add(p + "self_attn.v_proj.bias", [KV * HD], 0.1);
    }
    if (family === "qwen3" || family === "gemma3_text" || family === "qwen3_moe") {
      add(p + "self_attn.q_norm.weight", [HD], 0.1, normMean);
      add(p + "self_attn.k_norm.weight", [HD], 0.1, normMean);
    }
    if (!moe) {
      add(p + "mlp.gate_proj.weight", [F, D], 1 / Math.sqrt(D));
      add(p + "mlp.up_proj.weight", [F, D], 1 / Math.sqrt(D));
    }
  } else {
    add(p + "self_attn.qkv_proj.weight", [(H + 2 * KV) * HD, D], 1 / Math.sqrt(D));
    add(p + "mlp.gate_up_proj.weight", [2 * F, D], 1 / Math.sqrt(D));
  }
  add(p + "self_attn.o_proj.weight", [D, H * HD], 1 / Math.sqrt(H * HD));
  if (!moe) {
    add(p + "mlp.down_proj.weight", [D, F], 1 / Math.sqrt(F));
  } else {
    // Mixtral's block_sparse_moe w1 (gate), w2 (down), w3 (up); Qwen's mlp gate/up/down_proj.
    const mixtral = family === "mixtral", block = mixtral ? "block_sparse_moe" : "mlp";
    const gate = [mixtral ? "w1" : "gate_proj", [FE, D]], up = [mixtral ? "w3" : "up_proj", [FE, D]];
    const down = [mixtral ? "w2" : "down_proj", [D, FE]];
    add(p + block + ".gate.weight", [E, D], 4 / Math.sqrt(D));  // wide routing margins: no near ties
    for (let e = 0; e < E; e++) {
      for (const [name, shape] of mixtral ? [gate, down, up] : [gate, up, down]) {
        add(p + `${block}.experts.${e}.${name}.weight`, shape, 1 / Math.sqrt(shape[1]));
      }
    }
    if (family === "qwen2_moe") {
      add(p + "mlp.shared_expert.gate_proj.weight", [FS, D], 1 / Math.sqrt(D));
      add(p + "mlp.shared_expert.up_proj.weight", [FS, D], 1 / Math.sqrt(D));
      add(p + "mlp.shared_expert.down_proj.weight", [D, FS], 1 / Math.sqrt(FS));
      add(p + "mlp.shared_expert_gate.weight", [1, D], 1 / Math.sqrt(D));
    }
  }
}
add("model.norm.weight", [D], 0.1, normMean);
}

const header = {};
let offset = 0;
for (const t of tensors) {
  header[t.name] = {dtype: "F32", shape: t.shape, data_offsets: [offset, offset + t.data.byteLength]};
  offset += t.data.byteLength;
}
let json = JSON.stringify(header);
json += " ".repeat((8 - (json.length % 8)) % 8);
const size = Buffer.alloc(8);
size.writeBigUInt64LE(BigInt(json.length));
fs.mkdirSync(out, {recursive: true});
fs.writeFileSync(path.join(out, "model.safetensors"),
                 Buffer.concat([size, Buffer.from(json), ...tensors.map((t) => Buffer.from(t.data.buffer))]));
const config = family === "gpt2" ? {
  architectures: ["GPT2LMHeadModel"], model_type: "gpt2", vocab_size: V, n_embd: D, n_layer: L, n_head: H,
  n_inner: F, n_positions: 1024, n_ctx: 1024, layer_norm_epsilon: 1e-5, activation_function: "gelu_new",
  tie_word_embeddings: true, torch_dtype: "float32",
} : {
  architectures: [{llama: "LlamaForCausalLM", qwen2: "Qwen2ForCausalLM", qwen3: "Qwen3ForCausalLM", phi3: "Phi3ForCausalLM", gemma: "GemmaForCausalLM",
                   gemma2: "Gemma2ForCausalLM", gemma3_text: "Gemma3ForCausalLM", mixtral: "MixtralForCausalLM",
                   qwen2_moe: "Qwen2MoeForCausalLM", qwen3_moe: "Qwen3MoeForCausalLM"}[family]],
  model_type: family,
  vocab_size: V, hidden_size: D, num_hidden_layers: L, num_attention_heads: H, num_key_value_heads: KV,
  intermediate_size: F, max_position_embeddings: 1024, rms_norm_eps: 1e-6, rope_theta: 10000.0,
  tie_word_embeddings: true, hidden_act: "silu", torch_dtype: "float32",
  ...(family === "qwen3" || family === "llama" || family === "qwen3_moe" ? {head_dim: HD} : {}),
  ...(family === "qwen2" ? {use_sliding_window: false, sliding_window: null, max_window_layers: L} : {}),
  ...(family === "mixtral" ? {num_local_experts: E, num_experts_per_tok: TOPK, sliding_window: null} : {}),
  ...(family === "qwen2_moe" || family === "qwen3_moe"
          ? {num_experts: E, num_experts_per_tok: TOPK, moe_intermediate_size: FE, decoder_sparse_step: 1,
             mlp_only_layers: [], norm_topk_prob: family === "qwen3_moe",
             ...(family === "qwen2_moe" ? {shared_expert_intermediate_size: FS} : {})}
          : {}),
  ...(family === "phi3" ? {partial_rotary_factor: 0.5} : {}),
  ...(family === "gemma" ? {head_dim: HD, hidden_activation: "gelu_pytorch_tanh"} : {}),
  ...(family === "gemma2" ? {head_dim: HD, query_pre_attn_scalar: HD, sliding_window: 8,
                             hidden_activation: "gelu_pytorch_tanh", attn_logit_softcapping: 5.0,
                             final_logit_softcapping: 4.0} : {}),
  ...(family === "gemma3_text" ? {head_dim: HD, query_pre_attn_scalar: HD, sliding_window: 8,
                                  hidden_activation: "gelu_pytorch_tanh",
                                  layer_types: ["sliding_attention", "full_attention"], rope_theta: 1000000.0,
                                  rope_local_base_freq: 10000.0} : {}),
};
if (rope === "llama3") {
  config.rope_scaling = {rope_type: "llama3", factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0,
                         original_max_position_embeddings: 64};
} else if (rope === "linear") {
  config.rope_scaling = {rope_type: "linear", factor: 2.0};
} else if (rope === "yarn") {
  config.rope_scaling = {rope_type: "yarn", factor: 4.0, original_max_position_embeddings: 256};
} else if (rope === "longrope") {  // Phi-3's: factors per rotated pair (8 of 16 dims rotate), original 256
  const half = (family === "phi3" ? HD / 2 : HD) / 2;
  config.rope_scaling = {type: "longrope", short_factor: Array.from({length: half}, (_, i) => 1 + 0.5 * i),
                         long_factor: Array.from({length: half}, (_, i) => 2 ** i)};
  config.original_max_position_embeddings = 256;
}
fs.writeFileSync(path.join(out, "config.json"), JSON.stringify(config, null, 1) + "\n");
fs.copyFileSync(tokenizer, path.join(out, tokenizer.endsWith(".model") ? "tokenizer.model" : "tokenizer.json"));
