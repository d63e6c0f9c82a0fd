"""Writes a small llama GGUF (hidden 256, one block, vocab 16) whose weights use every ggml block
type compress reads, with seeded random block bytes: a fuzzing seed that reaches the block
decoders at thousands of executions a second (the model files of ctest are megabytes).
usage: python3 make_gguf_seed.py OUT.gguf   (standard library only; GGUF v3 layout)"""
import random
import struct
import sys

# ggml type: (id, elements per block, bytes per block)
TYPES = {"F32": (0, 1, 4), "Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20), "Q5_0": (6, 32, 22), "Q5_1": (7, 32, 24),
         "Q8_0": (8, 32, 34), "Q2_K": (10, 256, 84), "Q3_K": (11, 256, 110), "Q4_K": (12, 256, 144),
         "Q5_K": (13, 256, 176), "Q6_K": (14, 256, 210), "IQ4_NL": (20, 32, 18), "IQ4_XS": (23, 256, 136)}
D, V = 256, 16
tensors = [  # name, type, ne (innermost first)
    ("token_embd.weight", "Q8_0", [D, V]), ("output_norm.weight", "F32", [D]), ("output.weight", "Q4_1", [D, V]),
    ("blk.0.attn_norm.weight", "F32", [D]), ("blk.0.ffn_norm.weight", "F32", [D]),
    ("blk.0.attn_q.weight", "Q2_K", [D, D]), ("blk.0.attn_k.weight", "Q3_K", [D, D]),
    ("blk.0.attn_v.weight", "Q4_K", [D, D]), ("blk.0.attn_output.weight", "Q5_K", [D, D]),
    ("blk.0.ffn_gate.weight", "Q6_K", [D, D]), ("blk.0.ffn_up.weight", "IQ4_XS", [D, D]),
    ("blk.0.ffn_down.weight", "IQ4_NL", [D, D]),
]


def s(v):
    b = v.encode()
    return struct.pack("<Q", len(b)) + b


def kv_u32(k, v):
    return s(k) + struct.pack("<II", 4, v)


def kv_f32(k, v):
    return s(k) + struct.pack("<If", 6, v)


meta = [s("general.architecture") + struct.pack("<I", 8) + s("llama"), kv_u32("general.file_type", 15),
        kv_u32("llama.block_count", 1), kv_u32("llama.embedding_length", D), kv_u32("llama.feed_forward_length", D),
        kv_u32("llama.attention.head_count", 4), kv_u32("llama.attention.head_count_kv", 4),
        kv_u32("llama.context_length", 128), kv_u32("llama.vocab_size", V),
        kv_f32("llama.rope.freq_base", 10000.0), kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-6)]
rng = random.Random(7)
infos, blobs, offset = b"", [], 0
for name, t, ne in tensors:
    tid, be, bb = TYPES[t]
    rows = ne[1] if len(ne) > 1 else 1
    size = rows * ne[0] // be * bb
    if t == "F32":
        data = struct.pack(f"<{rows * ne[0]}f", *[1.0 + rng.uniform(-0.1, 0.1) for _ in range(rows * ne[0])])
    else:
        data = bytearray(rng.getrandbits(8) for _ in range(size))
        for i in range(0, size, bb):  # finite f16 scales at each block's start (0x2e66 ~ 0.1)
            data[i:i + 2] = b"\x66\x2e"
        data = bytes(data)
    infos += s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
    infos += struct.pack("<IQ", tid, offset)
    blobs.append(data + b"\0" * ((32 - len(data) % 32) % 32))
    offset += len(blobs[-1])
head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta)) + b"".join(meta) + infos
head += b"\0" * ((32 - len(head) % 32) % 32)
open(sys.argv[1], "wb").write(head + b"".join(blobs))
