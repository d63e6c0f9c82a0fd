"""Conformance of compress's compressed-tensors outputs with the compressed-tensors library's
schema and decompressors, without the library (it needs pydantic 2, which no registry here has).

Every rule below is a fact read from the library's source (github.com/neuralmagic/
compressed-tensors at commit 52792be0, src/compressed_tensors/): field names and their
`extra` policies (QuantizationArgs and QuantizationScheme forbid unknown fields,
QuantizationConfig ignores them), the enum values, QuantizationArgs' strategy validation,
the tensor names, dtypes and shapes each compressor declares (naive_quantized.py,
pack_quantized.py, quant_metadata.py for k_scale / v_scale), and pack-quantized's bit
order (pack_to_int32 / unpack_from_int32: value j of a 32-bit word at bits [j*b, (j+1)*b),
stored as the signed code plus 2^(b-1), rows padded with zero words). No code is taken from it.

Sparsity (config/base.py SparsityCompressionConfig, config/sparse_24_bitmask.py,
compressors/sparse_compressors/sparse_24_bitmask.py, utils/helpers.py pack_bitmasks): the
sparsity_config fields and enum values; for each sparse-24-bitmask target `<layer>.compressed`
[rows, cols / 2] (the weight's stored dtype), `<layer>.bitmask` U8 [rows, ceil(cols / 8)] (numpy
packbits, bitorder little), `<layer>.shape` [2, 1] integers, no `<layer>.weight`, exactly 2 bits
in every group of 4 inputs (what the compressor's top-2 mask writes and vLLM's 2:4 kernels
need); the values scattered onto the bits (row-major) and dequantized with the layer's scheme
must equal `compress decompress`.

The last check unpacks every pack-quantized weight by those facts and compares code x scale
with `compress decompress` of the same checkpoint, element by element (bf16 rounding allowed).

With ORIGINAL=<the dense checkpoint that was quantized> in the environment, every unpacked
round-to-nearest code x scale must also lie within half a step of the original weight: a
bit-order error shared by compress's writer and reader cannot pass that.

Standard library only. usage: [ORIGINAL=DIR] python3 check_schema.py COMPRESS_BINARY DIR [DIR...]
Exit status 1 and one line per violation when anything differs.
"""
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

FORMATS = {"dense", "sparse-bitmask", "sparse-24-bitmask", "int-quantized", "float-quantized",
           "naive-quantized", "pack-quantized", "marlin-24", "mixed-precision",
           "nvfp4-pack-quantized", "mxfp4-pack-quantized"}
STATUS = {"initialized", "calibration", "frozen", "compressed"}
CONFIG_FIELDS = {"config_groups", "quant_method", "kv_cache_scheme", "format", "quantization_status",
                 "global_compression_ratio", "ignore", "sparsity_config", "transform_config", "version"}
SCHEME_FIELDS = {"targets", "weights", "input_activations", "output_activations", "format"}
ARGS_FIELDS = {"num_bits", "type", "symmetric", "group_size", "strategy", "block_structure", "dynamic",
               "actorder", "observer", "observer_kwargs"}
STRATEGIES = {"tensor", "channel", "group", "block", "token", "tensor_group", "attn_head"}
DYNAMIC_STRATEGIES = {"token", "tensor", "tensor_group", "group"}
SCALE_DTYPES = {"F32", "F16", "BF16"}
SPARSITY_FIELDS = {"format", "targets", "ignore", "global_sparsity", "sparsity_structure"}
SPARSITY_STRUCTURES = {"2:4", "unstructured", "0:0"}

errors = []


def fail(where, what):
    errors.append(f"{where}: {what}")


def check_args(where, a):
    """QuantizationArgs: fields (extra forbidden), enums and the model validator's rules."""
    if not isinstance(a, dict):
        fail(where, f"not an object: {a!r}")
        return None
    for k in set(a) - ARGS_FIELDS:
        fail(where, f"field '{k}' is not a QuantizationArgs field (extra fields are forbidden)")
    bits = a.get("num_bits", 8)
    if not isinstance(bits, int) or bits < 1:
        fail(where, f"num_bits {bits!r}")
    if str(a.get("type", "int")).lower() not in {"int", "float"}:
        fail(where, f"type {a.get('type')!r}")
    gs = a.get("group_size")
    if gs is not None and (not isinstance(gs, int) or gs < -1):
        fail(where, f"group_size {gs!r}")
    strategy = a.get("strategy")
    if strategy is None:
        strategy = "tensor" if gs is None else ("group" if gs > 0 else "channel" if gs == -1 else None)
    if strategy not in STRATEGIES:
        fail(where, f"strategy {strategy!r}")
    dynamic = a.get("dynamic", False)
    if strategy == "token" and not dynamic:
        fail(where, "static token quantization is refused (needs dynamic)")
    if strategy in {"group", "tensor_group"} and (gs is None or gs <= 0):
        fail(where, f"strategy {strategy} needs group_size > 0")
    if gs is not None and gs > 0 and strategy not in {"group", "tensor_group"}:
        fail(where, "group_size > 0 needs strategy group")
    if (strategy == "block") != (a.get("block_structure") is not None):
        fail(where, "block strategy and block_structure go together")
    if a.get("actorder") is not None and strategy != "group":
        fail(where, "actorder needs strategy group")
    if dynamic and strategy not in DYNAMIC_STRATEGIES:
        fail(where, f"dynamic quantization with strategy {strategy}")
    if dynamic == "local" and strategy != "tensor_group":
        fail(where, "dynamic=local needs strategy tensor_group")
    return dict(a, strategy=strategy, num_bits=bits)


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    return header, data


def e4m3(b):
    sign = -1.0 if b & 0x80 else 1.0
    e, m = (b >> 3) & 15, b & 7
    if e == 15 and m == 7:
        return math.nan
    return sign * (m / 8 * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))


def tensor_values(header, data, name):
    h = header[name]
    a, b = h["data_offsets"]
    raw = data[a:b]
    fmt = {"F32": "f", "I32": "i", "I64": "q", "I8": "b", "U8": "B"}
    if h["dtype"] == "F8_E4M3":
        return [e4m3(b) for b in raw]
    if h["dtype"] == "BF16":
        return [struct.unpack("<f", b"\0\0" + raw[i:i + 2])[0] for i in range(0, len(raw), 2)]
    if h["dtype"] == "F16":
        return list(struct.unpack(f"<{len(raw) // 2}e", raw))
    code = fmt[h["dtype"]]
    return list(struct.unpack(f"<{len(raw) // struct.calcsize(code)}{code}", raw))


def check_dir(compress, d):
    cfg = json.load(open(os.path.join(d, "config.json")))
    qc = cfg.get("quantization_config")
    if qc is None:
        fail(d, "no quantization_config")
        return
    for k in set(qc) - CONFIG_FIELDS:
        fail(d, f"quantization_config field '{k}' is not a QuantizationConfig field")
    if qc.get("quant_method") != "compressed-tensors":
        fail(d, f"quant_method {qc.get('quant_method')!r}")
    fmt = qc.get("format", "dense")
    if fmt not in FORMATS:
        fail(d, f"format {fmt!r} is not a CompressionFormat")
    if qc.get("quantization_status", "initialized") not in STATUS:
        fail(d, f"quantization_status {qc.get('quantization_status')!r}")
    header, data = read_safetensors(os.path.join(d, "model.safetensors"))
    packed_layers = []
    for gname, g in qc.get("config_groups", {}).items():
        where = f"{d}: config_groups.{gname}"
        if not isinstance(g, dict):
            continue  # a list of targets is also accepted
        for k in set(g) - SCHEME_FIELDS:
            fail(where, f"field '{k}' is not a QuantizationScheme field (extra fields are forbidden)")
        w = check_args(where + ".weights", g["weights"]) if g.get("weights") else None
        inp = check_args(where + ".input_activations", g["input_activations"]) if g.get("input_activations") else None
        if g.get("output_activations"):
            check_args(where + ".output_activations", g["output_activations"])
        layer_fmt = g.get("format") or fmt
        for base in g.get("targets", []):
            if base == "Linear" or base.startswith("re:"):
                continue
            if w is None:
                continue
            check_layer(d, header, data, base, w, inp, layer_fmt, packed_layers)
    if qc.get("kv_cache_scheme"):
        check_args(f"{d}: kv_cache_scheme", qc["kv_cache_scheme"])
        attn = {k.rsplit(".", 2)[0] for k in header if k.endswith(".q_proj.weight") or k.endswith(".q_proj.weight_packed")}
        for a in sorted(attn):
            for s in ("k_scale", "v_scale"):
                name = a + "." + s
                if name not in header:
                    fail(d, f"kv_cache_scheme: '{name}' missing (KVCacheScaleType names)")
                elif header[name]["dtype"] not in SCALE_DTYPES:
                    fail(d, f"'{name}' dtype {header[name]['dtype']}")
    if packed_layers:
        check_unpacked_values(compress, d, header, data, packed_layers)
    if qc.get("sparsity_config"):
        check_sparsity(compress, d, qc, header, data)


def layer_scheme(qc, base):
    """The weights args of the config group targeting `base` (exact name over "Linear")."""
    found = None
    for g in qc.get("config_groups", {}).values():
        if isinstance(g, dict) and g.get("weights"):
            if base in g.get("targets", []):
                return g["weights"]
            if "Linear" in g.get("targets", []):
                found = g["weights"]
    return found


def check_sparsity(compress, d, qc, header, data):
    sc = qc["sparsity_config"]
    where = f"{d}: sparsity_config"
    if not isinstance(sc, dict):
        fail(where, "not an object")
        return
    for k in set(sc) - SPARSITY_FIELDS:
        fail(where, f"field '{k}' is not a Sparse24BitMaskConfig field")
    fmt = sc.get("format")
    if fmt not in {"sparse-24-bitmask", "sparse-bitmask"}:
        fail(where, f"format {fmt!r}, compress writes sparse-24-bitmask or sparse-bitmask")
        return
    two_four = fmt == "sparse-24-bitmask"
    if str(sc.get("sparsity_structure", "unstructured")).lower() not in SPARSITY_STRUCTURES:
        fail(where, f"sparsity_structure {sc.get('sparsity_structure')!r} is not a SparsityStructure")
    if two_four and str(sc.get("sparsity_structure")).lower() != "2:4":
        fail(where, "sparse-24-bitmask needs sparsity_structure 2:4")
    g = sc.get("global_sparsity", 0.0)
    if not isinstance(g, (int, float)) or not 0 <= g <= 1:
        fail(where, f"global_sparsity {g!r}")
    for k in ("targets", "ignore"):
        if sc.get(k) is not None and (not isinstance(sc[k], list) or not all(isinstance(x, str) for x in sc[k])):
            fail(where, f"{k} must be a list of names")
    targets = [t for t in sc.get("targets") or [] if t != "Linear" and not t.startswith("re:")]
    if not targets:
        fail(where, "no targets")
        return
    dense_h, dense_d = decompressed(compress, d)
    for base in targets:
        w = f"{d}: {base}"
        names = [base + s for s in (".compressed", ".bitmask", ".shape")] + ([] if two_four else [base + ".row_offsets"])
        if any(n not in header for n in names):
            fail(w, f"{fmt} needs {', '.join(n[len(base) + 1:] for n in names)}")
            continue
        if base + ".weight" in header:
            fail(w, "a compressed layer keeps no 'weight'")
        comp, mask, shp = (header[n] for n in names[:3])
        want_shape = [2, 1] if two_four else [2]  # Sparse24BitMaskTensor reshapes (-1, 1); BitmaskTensor does not
        if shp["dtype"] not in {"I64", "I32"} or shp["shape"] != want_shape:
            fail(w, f"shape tensor {shp['dtype']} {shp['shape']}, the compressor writes {want_shape} integers")
            continue
        rows, cols = tensor_values(header, data, names[2])
        if two_four and (comp["shape"] != [rows, cols // 2] or cols % 4):
            fail(w, f"compressed {comp['shape']} for a [{rows}, {cols}] weight")
            continue
        if not two_four and len(comp["shape"]) != 1:
            fail(w, f"compressed {comp['shape']}: the unstructured form holds a 1-D list of values")
            continue
        if mask["dtype"] != "U8" or mask["shape"] != [rows, (cols + 7) // 8]:
            fail(w, f"bitmask {mask['dtype']} {mask['shape']}, want U8 [{rows}, {(cols + 7) // 8}]")
            continue
        bits = tensor_values(header, data, names[1])
        vals = tensor_values(header, data, names[0])
        args = layer_scheme(qc, base)
        if args is not None:
            scale = tensor_values(header, data, base + ".weight_scale")
            groups = header[base + ".weight_scale"]["shape"][-1] if len(header[base + ".weight_scale"]["shape"]) == 2 else 1
            want = "F8_E4M3" if args.get("type") == "float" else "I8"
            if comp["dtype"] != want:
                fail(w, f"compressed dtype {comp['dtype']}, the quantized weight is {want}")
        elif comp["dtype"] not in {"F32", "F16", "BF16"}:
            fail(w, f"compressed dtype {comp['dtype']}")
        dense = tensor_values(dense_h, dense_d, base + ".weight")
        orig = tensor_values(ORIGINAL[0], ORIGINAL[1], base + ".weight") if ORIGINAL else None
        mb = (cols + 7) // 8
        starts = None if two_four else tensor_values(header, data, names[3])
        if starts is not None and (header[names[3]]["dtype"] != "I64" or len(starts) != rows):
            fail(w, f"row_offsets {header[names[3]]['dtype']} {header[names[3]]['shape']}, want I64 [{rows}]")
            continue
        k, worst, big = 0, 0.0, 0.0
        for r in range(rows):
            for g4 in range(0, cols, 4) if two_four else ():
                n = sum((bits[r * mb + (g4 + i) // 8] >> ((g4 + i) % 8)) & 1 for i in range(4))
                if n != 2:
                    fail(w, f"row {r} inputs {g4}..{g4 + 3}: {n} bits set, 2:4 needs 2")
                    return
            if starts is not None and starts[r] != k:
                fail(w, f"row_offsets[{r}] = {starts[r]}, the bitmask puts row {r} at {k}")
                return
            for c in range(cols):
                v = 0.0
                if (bits[r * mb + c // 8] >> (c % 8)) & 1:
                    v = vals[k]
                    k += 1
                s_ = 0.0
                if args is not None:
                    s_ = scale[r * groups + c * groups // cols]
                    v *= s_
                worst = max(worst, abs(v - dense[r * cols + c]))
                # Independently of compress's reader: a kept non-zero value is the original
                # weight (pruning keeps or zeroes), quantized within its rounding bound.
                if orig is not None and v != 0.0:
                    o = orig[r * cols + c]
                    bound = 0.0 if args is None else (
                        0.0625 * abs(o) + s_ * 2.0 ** -9 if args.get("type") == "float" else 0.5 * s_)
                    if abs(v - o) > bound * (1 + 1e-5):
                        fail(w, f"row {r} input {c}: kept value {v} is not the original weight {o}")
                        return
                big = max(big, abs(dense[r * cols + c]))
        if worst > 1e-6 * max(big, 1e-30):
            fail(w, f"scattered values differ from compress decompress by {worst}")


_DECOMPRESSED = {}


def decompressed(compress, d):
    if d not in _DECOMPRESSED:
        tmp = tempfile.mkdtemp()
        out = os.path.join(tmp, "dense")
        subprocess.run([compress, "decompress", d, "-o", out, "-q", "--dtype", "f32"], check=True)
        _DECOMPRESSED[d] = read_safetensors(os.path.join(out, "model.safetensors"))
    return _DECOMPRESSED[d]


def check_layer(d, header, data, base, w, inp, fmt, packed_layers):
    where = f"{d}: {base}"
    bits, strategy = w["num_bits"], w["strategy"]
    if fmt == "pack-quantized":
        packed, shape = header.get(base + ".weight_packed"), header.get(base + ".weight_shape")
        if packed is None or shape is None:
            fail(where, "pack-quantized needs weight_packed and weight_shape")
            return
        if base + ".weight" in header:
            fail(where, "pack-quantized keeps no 'weight'")
        if packed["dtype"] != "I32" or shape["dtype"] not in {"I32", "I64"} or shape["shape"] != [2]:
            fail(where, f"weight_packed {packed['dtype']} / weight_shape {shape['dtype']} {shape['shape']}")
        out, words = packed["shape"]
        packed_layers.append((base, bits))
        if 32 % bits:
            fail(where, f"{bits}-bit codes do not fill a 32-bit word")
        in_features = None  # from weight_shape, checked with the values
    else:
        t = header.get(base + ".weight")
        sparse = t is None and base + ".compressed" in header and base + ".shape" in header
        if sparse:  # the sparsity compressor ran on the quantized `weight` (checked in check_sparsity)
            t = header[base + ".compressed"]
        if t is None:
            fail(where, f"{fmt} needs '{base}.weight'")
            return
        want = "F8_E4M3" if w.get("type", "int") == "float" else "I8"
        if fmt in {"int-quantized", "float-quantized", "naive-quantized"} and t["dtype"] != want:
            fail(where, f"weight dtype {t['dtype']}, the compressor declares {want}")
        if sparse:  # the dense shape is in `.shape`
            out, in_features = tensor_values(header, data, base + ".shape")
        else:
            out, in_features = t["shape"]
    scale = header.get(base + ".weight_scale")
    if scale is None:
        fail(where, "no weight_scale")
        return
    if scale["dtype"] not in SCALE_DTYPES:
        fail(where, f"weight_scale dtype {scale['dtype']}")
    if strategy == "channel" and scale["shape"] != [out, 1]:
        fail(where, f"channel weight_scale shape {scale['shape']}, want [{out}, 1]")
    if strategy == "tensor" and scale["shape"] not in ([1], [1, 1]):
        fail(where, f"tensor weight_scale shape {scale['shape']}")
    if strategy == "group":
        if scale["shape"][0] != out:
            fail(where, f"group weight_scale shape {scale['shape']}")
        if in_features is not None and scale["shape"][1] != math.ceil(in_features / w["group_size"]):
            fail(where, f"group weight_scale shape {scale['shape']} for {in_features} inputs")
    if not w.get("symmetric", True):
        zp = header.get(base + ".weight_zero_point")
        if zp is None or zp["shape"] != scale["shape"]:
            fail(where, "asymmetric weights need a weight_zero_point shaped like weight_scale")
    if inp and not inp.get("dynamic", False):
        s = header.get(base + ".input_scale")
        if s is None:
            fail(where, "static input_activations need input_scale")


def check_unpacked_values(compress, d, header, data, layers):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "dense")
        subprocess.run([compress, "decompress", d, "-o", out, "-q", "--dtype", "f32"], check=True)
        dense_h, dense_d = read_safetensors(os.path.join(out, "model.safetensors"))
        for base, bits in layers:
            where = f"{d}: {base}"
            rows, cols = tensor_values(header, data, base + ".weight_shape")
            words = tensor_values(header, data, base + ".weight_packed")
            per = 32 // bits
            wpr = header[base + ".weight_packed"]["shape"][1]
            if wpr != math.ceil(cols / per):
                fail(where, f"weight_packed has {wpr} words a row for {cols} inputs")
                continue
            scale = tensor_values(header, data, base + ".weight_scale")
            groups = header[base + ".weight_scale"]["shape"][1]
            gsize = math.ceil(cols / groups)
            dense = tensor_values(dense_h, dense_d, base + ".weight")
            worst = 0.0
            for r in range(rows):
                for c in range(cols):
                    word = words[r * wpr + c // per] & 0xFFFFFFFF
                    code = ((word >> (bits * (c % per))) & ((1 << bits) - 1)) - (1 << (bits - 1))
                    v = code * scale[r * groups + c // gsize]
                    worst = max(worst, abs(v - dense[r * cols + c]))
            if worst > 1e-6 * max(1e-30, max(abs(x) for x in dense[:rows * cols]) or 1):
                fail(where, f"unpacked codes x scales differ from compress decompress by {worst}")
            # Independently of compress's reader: round-to-nearest codes decode to within half a
            # step of the original weights (ORIGINAL: the checkpoint that was quantized).
            if ORIGINAL:
                oh, od = ORIGINAL
                orig = tensor_values(oh, od, base + ".weight")
                for r in range(rows):
                    for c in range(cols):
                        word = words[r * wpr + c // per] & 0xFFFFFFFF
                        code = ((word >> (bits * (c % per))) & ((1 << bits) - 1)) - (1 << (bits - 1))
                        s_ = scale[r * groups + c // gsize]
                        if abs(code * s_ - orig[r * cols + c]) > 0.5 * s_ * (1 + 1e-5) + 1e-30:
                            fail(where, f"row {r} input {c}: code {code} x {s_} is not within half a step of "
                                        f"the original {orig[r * cols + c]}")
                            break
                    else:
                        continue
                    break


ORIGINAL = None


def main():
    global ORIGINAL
    compress = sys.argv[1]
    if os.environ.get("ORIGINAL"):
        ORIGINAL = read_safetensors(os.path.join(os.environ["ORIGINAL"], "model.safetensors"))
    for d in sys.argv[2:]:
        check_dir(compress, d)
    for e in errors:
        print("FAIL " + e)
    print(f"{len(sys.argv) - 2} checkpoints, {len(errors)} violations")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
