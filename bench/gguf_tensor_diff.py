"""Compares the tensor data of two GGUF files tensor by tensor (metadata ignored): prints the
tensors whose type or bytes differ and a count. usage: python3 bench/gguf_tensor_diff.py A.gguf B.gguf"""
import struct
import sys

def read(path):
    f = open(path, 'rb'); data = f.read()
    o = 0
    def u32():
        nonlocal o; v = struct.unpack_from('<I', data, o)[0]; o += 4; return v
    def u64():
        nonlocal o; v = struct.unpack_from('<Q', data, o)[0]; o += 8; return v
    def s():
        nonlocal o; n = u64(); v = data[o:o+n].decode(); o += n; return v
    sizes = {0:1,1:1,2:2,3:2,4:4,5:4,6:4,7:1,10:8,11:8,12:8}
    def val(t):
        nonlocal o
        if t == 8: return s()
        if t == 9:
            et = u32(); n = u64(); return [val(et) for _ in range(n)]
        o += sizes[t]; return None
    assert data[:4] == b'GGUF'; o = 4; ver = u32(); nt = u64(); nkv = u64()
    align = 32
    for _ in range(nkv):
        k = s(); t = u32(); v = val(t)
        if k == 'general.alignment': align = struct.unpack_from('<I', data, o-4)[0]
    infos = []
    for _ in range(nt):
        name = s(); nd = u32(); dims = [u64() for _ in range(nd)]; typ = u32(); off = u64()
        infos.append((name, dims, typ, off))
    base = (o + align - 1) // align * align
    infos.sort(key=lambda x: x[3])
    out = {}
    for i, (name, dims, typ, off) in enumerate(infos):
        end = infos[i+1][3] if i + 1 < len(infos) else len(data) - base
        out[name] = (typ, dims, data[base+off: base+end])
    return out
a = read(sys.argv[1]); b = read(sys.argv[2])
same = diff = 0
for name in sorted(a):
    if name not in b: print("missing in b:", name); continue
    ta, tb = a[name], b[name]
    n = min(len(ta[2]), len(tb[2]))
    if ta[0] == tb[0] and ta[2][:n] == tb[2][:n]: same += 1
    else:
        diff += 1
        nd = sum(1 for x, y in zip(ta[2], tb[2]) if x != y)
        print("differ:", name, ta[0], tb[0], "bytes differing", nd, "of", n)
print("same", same, "differ", diff)
