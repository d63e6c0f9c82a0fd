#!/usr/bin/env python3
"""Seeds for fuzz_checkpoint: tiny checkpoints of every family the runtime reads, and the
compressed forms compress writes of one of them, each packed as 4 bytes (little-endian) of
config.json's length, config.json, model.safetensors.

With GGUF_OUT_DIR, also the GGUF files compress writes of each family (f32, Q4_0, Q8_0 and
the Q4_K_M mix; the tokenizer is tests/fuzz/seeds/tokenizer-small.json cut to the 64-token
vocabulary), seeds for fuzz_gguf that reach the runtime at hundreds of executions a second.

usage: tests/fuzz/make_checkpoint_seeds.py COMPRESS_BINARY OUT_DIR [GGUF_OUT_DIR]
(standard library only; the weights are a fixed pseudo-random sequence, so the seeds are the
same on every run of the same binary)."""
import json
import os
import random
import struct
import subprocess
import sys
import tempfile

H, HEADS, KV, HD, FFN, VOCAB, LAYERS = 32, 2, 1, 16, 64, 64, 2


def write_safetensors(path, tensors):
    """tensors: name -> (shape, list of floats), written as F32."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        shape, vals = tensors[name]
        data = struct.pack("<%df" % len(vals), *vals)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def family_tensors(kind, rng):
    t = {}

    def mat(name, rows, cols, scale=0.2):
        t[name] = ([rows, cols], [rng.gauss(0, scale) for _ in range(rows * cols)])

    def vec(name, n, value=None):
        t[name] = ([n], [value if value is not None else 1 + rng.gauss(0, 0.05) for _ in range(n)])

    if kind == "gpt2":
        mat("wte.weight", VOCAB, H)
        mat("wpe.weight", 16, H)
        for i in range(LAYERS):
            p = "h.%d." % i
            for n in ("ln_1", "ln_2"):
                vec(p + n + ".weight", H)
                vec(p + n + ".bias", H, 0.0)
            mat(p + "attn.c_attn.weight", H, 3 * H)
            vec(p + "attn.c_attn.bias", 3 * H, 0.0)
            mat(p + "attn.c_proj.weight", H, H)
            vec(p + "attn.c_proj.bias", H, 0.0)
            mat(p + "mlp.c_fc.weight", H, FFN)
            vec(p + "mlp.c_fc.bias", FFN, 0.0)
            mat(p + "mlp.c_proj.weight", FFN, H)
            vec(p + "mlp.c_proj.bias", H, 0.0)
        vec("ln_f.weight", H)
        vec("ln_f.bias", H, 0.0)
        return t
    mat("model.embed_tokens.weight", VOCAB, H)
    vec("model.norm.weight", H)
    if kind != "gemma3_text":
        mat("lm_head.weight", VOCAB, H)
    for i in range(LAYERS):
        p = "model.layers.%d." % i
        vec(p + "input_layernorm.weight", H)
        vec(p + "post_attention_layernorm.weight", H)
        if kind == "phi3":
            mat(p + "self_attn.qkv_proj.weight", (HEADS + 2 * KV) * HD, H)
        else:
            mat(p + "self_attn.q_proj.weight", HEADS * HD, H)
            mat(p + "self_attn.k_proj.weight", KV * HD, H)
            mat(p + "self_attn.v_proj.weight", KV * HD, H)
        mat(p + "self_attn.o_proj.weight", H, HEADS * HD)
        if kind == "qwen2":
            vec(p + "self_attn.q_proj.bias", HEADS * HD, 0.01)
            vec(p + "self_attn.k_proj.bias", KV * HD, 0.01)
            vec(p + "self_attn.v_proj.bias", KV * HD, 0.01)
        if kind in ("qwen3", "gemma3_text", "qwen3_moe"):
            vec(p + "self_attn.q_norm.weight", HD)
            vec(p + "self_attn.k_norm.weight", HD)
        if kind == "gemma3_text":
            vec(p + "pre_feedforward_layernorm.weight", H)
            vec(p + "post_feedforward_layernorm.weight", H)
        if kind == "phi3":
            mat(p + "mlp.gate_up_proj.weight", 2 * FFN, H)
            mat(p + "mlp.down_proj.weight", H, FFN)
        elif kind in ("mixtral", "qwen3_moe"):  # a router and 4 experts, each gate / up / down
            moe, names = ("block_sparse_moe", ("w1", "w3", "w2")) if kind == "mixtral" else \
                ("mlp", ("gate_proj", "up_proj", "down_proj"))
            mat(p + moe + ".gate.weight", 4, H)
            for e in range(4):
                q = p + "%s.experts.%d." % (moe, e)
                mat(q + names[0] + ".weight", FFN // 2, H)
                mat(q + names[1] + ".weight", FFN // 2, H)
                mat(q + names[2] + ".weight", H, FFN // 2)
        else:
            mat(p + "mlp.gate_proj.weight", FFN, H)
            mat(p + "mlp.up_proj.weight", FFN, H)
            mat(p + "mlp.down_proj.weight", H, FFN)
    return t


def family_config(kind):
    c = {"model_type": kind, "hidden_size": H, "num_attention_heads": HEADS, "num_key_value_heads": KV,
         "head_dim": HD, "intermediate_size": FFN, "vocab_size": VOCAB, "num_hidden_layers": LAYERS,
         "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 64,
         "tie_word_embeddings": kind == "gemma3_text", "torch_dtype": "float32"}
    if kind == "gpt2":
        return {"model_type": "gpt2", "n_embd": H, "n_head": HEADS, "n_layer": LAYERS, "n_positions": 16,
                "vocab_size": VOCAB, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}
    if kind == "llama":
        c["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    if kind == "gemma3_text":
        c.update({"sliding_window": 8, "query_pre_attn_scalar": HD, "hidden_activation": "gelu_pytorch_tanh",
                  "rope_local_base_freq": 10000.0, "final_logit_softcapping": 30.0})
    if kind == "mixtral":
        c.update({"num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": FFN // 2})
    if kind == "qwen3_moe":
        c.update({"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": FFN // 2,
                  "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": []})
    return c


def pack(folder, out):
    with open(os.path.join(folder, "config.json"), "rb") as f:
        cfg = f.read()
    with open(os.path.join(folder, "model.safetensors"), "rb") as f:
        st = f.read()
    with open(out, "wb") as f:
        f.write(struct.pack("<I", len(cfg)) + cfg + st)


def small_tokenizer(path):
    """tokenizer-small.json cut to ids below VOCAB (and the merges among them)."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "tokenizer-small.json")) as f:
        t = json.load(f)
    vocab = {k: i for k, i in t["model"]["vocab"].items() if i < VOCAB}
    t["model"]["vocab"] = vocab
    t["model"]["merges"] = [m for m in t["model"]["merges"] if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]
    t["added_tokens"] = [a for a in t["added_tokens"] if a["id"] < VOCAB]
    with open(path, "w") as f:
        json.dump(t, f)


def block_fp8_from(fp8_seed, out):
    """Hugging Face's fine-grained FP8 form (quant_method fp8, weight_scale_inv per block) of the
    compressed-tensors FP8 seed: per-channel scales are blocks of 1 x 64 here."""
    with open(fp8_seed, "rb") as f:
        data = f.read()
    n = struct.unpack("<I", data[:4])[0]
    cfg = json.loads(data[4:4 + n])
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                  "weight_block_size": [1, 64]}
    st = data[4 + n:]
    hn = struct.unpack("<Q", st[:8])[0]
    header = json.loads(st[8:8 + hn])
    header = {(k + "_inv" if k.endswith(".weight_scale") else k): v for k, v in header.items()}
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    c = json.dumps(cfg).encode()
    with open(out, "wb") as f:
        f.write(struct.pack("<I", len(c)) + c + struct.pack("<Q", len(h)) + h + st[8 + hn:])


def run(compress, args):
    r = subprocess.run([compress, "run"] + args, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("%s: %s" % (" ".join(args), r.stderr.strip()))


def main():
    compress, out = sys.argv[1], sys.argv[2]
    gguf_out = sys.argv[3] if len(sys.argv) > 3 else None
    os.makedirs(out, exist_ok=True)
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("llama", "qwen2", "qwen3", "gemma3_text", "phi3", "gpt2", "mixtral", "qwen3_moe"):
            d = os.path.join(tmp, kind)
            os.makedirs(d)
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(family_config(kind), f)
            write_safetensors(os.path.join(d, "model.safetensors"), family_tensors(kind, rng))
            pack(d, os.path.join(out, "ckpt-%s.bin" % kind))
            if gguf_out:
                os.makedirs(gguf_out, exist_ok=True)
                small_tokenizer(os.path.join(d, "tokenizer.json"))
                for form, pipeline in (("f32", "cast{dtype=f32}"),
                                       ("q4_0", "quantize-int{bits=4,group-size=32,scale-dtype=f16}"),
                                       ("q8_0", "quantize-int{bits=8,group-size=32,scale-dtype=f16}"),
                                       ("q4_k_m", "quantize-gguf{type=Q4_K_M}")):
                    run(compress, [d, "-q", "-p", pipeline, "-o", os.path.join(gguf_out, "%s-%s.gguf" % (kind, form))])
        # compress's own compressed forms of the Llama checkpoint (the data-free passes).
        forms = {
            "int4-g32": ("quantize-int{bits=4,group-size=32}", []),
            "int8-channel": ("quantize-int8", []),
            "int3-asym": ("quantize-int{bits=3,group-size=16,symmetric=false}", []),
            "nf4": ("quantize-nf4{block=16}", []),
            "mxfp4": ("quantize-mxfp4", []),
            "fp4": ("quantize-fp4{group-size=16}", []),
            "w8a8": ("quantize-w8a8", []),
            "fp8": ("quantize-w8a8{type=fp8}", []),
            "llm-int8": ("llm-int8", []),
            "svd": ("factorize-svd{ratio=0.5}", []),
            "sparse24": ("prune-nm", ["--sparse-storage", "2:4"]),
            "bitmask": ("prune-magnitude{sparsity=0.7}", ["--sparse-storage", "bitmask"]),
            "bf16": ("cast{dtype=bf16}", []),
            "f16": ("cast{dtype=f16}", []),
        }
        for name, (pipeline, flags) in forms.items():
            d = os.path.join(tmp, "out-" + name)
            run(compress, [os.path.join(tmp, "llama"), "-q", "-p", pipeline, "-o", d] + flags)
            pack(d, os.path.join(out, "ckpt-llama-%s.bin" % name))
        block_fp8_from(os.path.join(out, "ckpt-llama-fp8.bin"), os.path.join(out, "ckpt-llama-fp8-block.bin"))


if __name__ == "__main__":
    main()
