"""Runs the compressed-tensors library's own 2:4 functions on compress's sparse-24-bitmask files
(device machine: torch, numpy and safetensors there; the library itself cannot be imported, it
needs pydantic 2). The functions are taken from the library's source files by name (ast) and
run as an oracle; nothing of them is copied into compress.

For every sparse layer of each checkpoint:
 - sparse24_bitmask_decompress(compressed, bitmask, shape) must equal compress decompress's
   dense weight (the stored codes for quantized layers: compared before scales);
 - sparse24_bitmask_compress(dense) (the library's writer, top-2 magnitudes per group) must give
   the same bitmask and values wherever a group holds exactly 2 non-zeros (elsewhere the
   library's top-k picks among equal zeros arbitrarily).

For sparse-bitmask (unstructured) files: bitmask_decompress equals compress decompress, and
bitmask_compress of the dense weight gives our compressed / bitmask / row_offsets exactly.

usage: python3 check_sparse_with_library.py CT_SRC_DIR DIR [DIR...]   (DIR.dense: its decompress)
  CT_SRC_DIR holds sparse_24_bitmask.py, sparse_bitmask.py and helpers.py from neuralmagic/compressed-tensors
  (src/compressed_tensors/compressors/sparse_compressors/ and src/compressed_tensors/utils/).
Prints one line per layer kind and exits 1 on any difference.
"""
import ast
import json
import os
import sys

import numpy
import torch
from safetensors import safe_open


def load_functions(src_dir):
    ns = {"torch": torch, "numpy": numpy, "Tensor": torch.Tensor}
    import typing
    ns.update({k: getattr(typing, k) for k in ("Dict", "List", "Tuple", "Union", "Optional")})

    class FP8:  # the one constant the module reads: FP8_E4M3_DATA.dtype
        dtype = torch.float8_e4m3fn
    ns["FP8_E4M3_DATA"] = FP8

    class Structure(str):
        TWO_FOUR = "2:4"
        def __new__(cls, v="2:4"):
            return str.__new__(cls, str(v).lower())
    ns["SparsityStructure"] = Structure
    wanted = {"helpers.py": {"pack_bitmasks", "unpack_bitmasks"},
              "sparse_24_bitmask.py": {"sparse24_bitmask_compress", "sparse24_bitmask_decompress", "get_24_bytemasks"},
              "sparse_bitmask.py": {"bitmask_compress", "bitmask_decompress"}}
    for fname, names in wanted.items():
        tree = ast.parse(open(os.path.join(src_dir, fname)).read())
        defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
        assert {d.name for d in defs} == names, (fname, [d.name for d in defs])
        exec(compile(ast.Module(body=defs, type_ignores=[]), fname, "exec"), ns)
    return ns


def check_unstructured(lib, d, targets):
    """sparse-bitmask: the library's bitmask_decompress equals compress decompress, and its
    bitmask_compress of the dense weight gives our values, bitmask and row_offsets exactly."""
    bad = 0
    with safe_open(os.path.join(d, "model.safetensors"), "pt") as f, \
         safe_open(os.path.join(d + ".dense", "model.safetensors"), "pt") as g:
        for base in targets:
            comp, mask = f.get_tensor(base + ".compressed"), f.get_tensor(base + ".bitmask")
            shape = f.get_tensor(base + ".shape").flatten().tolist()
            dense = lib["bitmask_decompress"](comp, mask, shape)
            value = dense.float() * f.get_tensor(base + ".weight_scale").float() if (base + ".weight_scale") in f.keys() \
                else dense.float()
            if not torch.equal(value, g.get_tensor(base + ".weight").float()):
                print(f"FAIL {d}: {base}: library decompression differs from compress decompress")
                bad += 1
            v2, m2, o2 = lib["bitmask_compress"](dense)
            if not (torch.equal(v2.view(torch.uint8) if v2.dtype == torch.int8 else v2, comp.view(torch.uint8) if comp.dtype == torch.int8 else comp)
                    and torch.equal(m2, mask) and torch.equal(o2, f.get_tensor(base + ".row_offsets"))):
                print(f"FAIL {d}: {base}: the library's compressor writes other bytes")
                bad += 1
    print(f"{d}: {len(targets)} sparse-bitmask layers: library decompression equals compress decompress, "
          f"library compression equals our tensors" if not bad else f"{d}: {bad} failures")
    return bad


def main():
    lib = load_functions(sys.argv[1])
    bad = 0
    for d in sys.argv[2:]:
        qc = json.load(open(os.path.join(d, "config.json")))["quantization_config"]
        targets = qc["sparsity_config"]["targets"]
        if qc["sparsity_config"]["format"] == "sparse-bitmask":
            bad += check_unstructured(lib, d, targets)
            continue
        dense_dir = d + ".dense"
        with safe_open(os.path.join(d, "model.safetensors"), "pt") as f, \
             safe_open(os.path.join(dense_dir, "model.safetensors"), "pt") as g:
            dense_keys = set(g.keys())
            same_mask = groups = 0
            for base in targets:
                comp, mask = f.get_tensor(base + ".compressed"), f.get_tensor(base + ".bitmask")
                shape = f.get_tensor(base + ".shape").flatten().tolist()
                ours = lib["sparse24_bitmask_decompress"](comp, mask, shape)
                # the codes of a quantized layer: compress writes them dense as `weight` too when
                # asked for codes; compare through the dense file's values / scales
                if (base + ".weight_scale") in f.keys():
                    scale = f.get_tensor(base + ".weight_scale").float()
                    value = ours.float() * scale
                else:
                    value = ours.float()
                ref = g.get_tensor(base + ".weight").float()
                if not torch.equal(value, ref):
                    print(f"FAIL {d}: {base}: library decompression differs from compress decompress "
                          f"(max {float((value - ref).abs().max())})")
                    bad += 1
                c2, m2 = lib["sparse24_bitmask_compress"](ours)
                nz = (ours.view(-1, 4) != 0).sum(1) if ours.dtype != torch.float8_e4m3fn else \
                    (ours.view(torch.int8).view(-1, 4) != 0).sum(1)
                exact = (nz == 2)
                mine = lib["unpack_bitmasks"](mask, shape).view(-1, 4)
                theirs = lib["unpack_bitmasks"](m2, shape).view(-1, 4)
                agree = (mine == theirs).all(1)
                groups += int(exact.sum())
                same_mask += int((agree & exact).sum())
            print(f"{d}: {len(targets)} layers decompressed by the library equal compress decompress; "
                  f"library's own compressor: same bitmask in {same_mask} of {groups} groups with 2 non-zeros")
            if same_mask != groups:
                bad += 1
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
