#!/usr/bin/env python3
# Device-machine investigation (numpy, onnx, onnxruntime): does ONNX Runtime's fused dynamic
# int8 product (level "all") compute what the graph's nodes define? See docs/formats.md.
# usage: OUT=DIR python3 bench/ort_dynamic.py
# Where does ONNX Runtime's fused dynamic int8 product (level "all") depart from the graph's
# own nodes? One DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul layer, random inputs.
import numpy as np, onnx, onnxruntime as ort
from onnx import helper, TensorProto, numpy_helper
rng = np.random.default_rng(0)
K, N, M = 384, 256, 64
w = rng.integers(-127, 128, size=(K, N), dtype=np.int8)
ws = (rng.random(N).astype(np.float32) * 0.01 + 0.001)
nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
         helper.make_node("MatMulInteger", ["xq", "w", "xz"], ["y32"]),
         helper.make_node("Cast", ["y32"], ["yf"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["xs", "ws"], ["s"]),
         helper.make_node("Mul", ["yf", "s"], ["y"])]
g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])],
                      [numpy_helper.from_array(w, "w"), numpy_helper.from_array(ws, "ws")])
model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 8
import os
out_dir = os.environ.get("OUT", "/tmp")
path = out_dir + "/dyn.onnx"
onnx.save(model, path)
print("ort", ort.__version__)
for dist in ["normal", "skewed"]:
  x = rng.standard_normal((1, M, K)).astype(np.float32)
  if dist == "skewed": x = x + 1.5
  lo, hi = min(0.0, x.min()), max(0.0, x.max())
  s = np.float32((hi - lo) / np.float32(255))
  z = np.clip(np.rint(-lo / s), 0, 255)
  xq = np.clip(np.rint(x / s) + z, 0, 255).astype(np.int64)
  ref = ((xq - z) @ w.astype(np.int64)).astype(np.float32) * (s * ws)
  ref_f = ((xq - z).astype(np.float32) * s) @ (w.astype(np.float32) * ws)  # dequantize first, f32 product
  for lvl in [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL]:
    so = ort.SessionOptions(); so.graph_optimization_level = lvl
    so.optimized_model_filepath = f"{out_dir}/dyn_{int(lvl)}.onnx"
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x})[0]
    d = np.abs(y - ref) / (s * ws)
    ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    print(dist, lvl, ops, "max |diff| in units of x_scale*w_scale:", float(d.max()), "rel to max|y|:", float(np.abs(y-ref).max()/np.abs(ref).max()))
    # Is it whole codes? compare with a reference that quantizes x to 7 bits or rounds half away
    xq2 = np.clip(np.floor(x / s + 0.5) + z, 0, 255).astype(np.int64)
    ref2 = ((xq2 - z) @ w.astype(np.int64)).astype(np.float32) * (s * ws)
    print("   vs dequantize-first f32 reference:", float((np.abs(y - ref_f) / (s * ws)).max()))
    print("   vs round-half-up reference:", float((np.abs(y - ref2) / (s * ws)).max()))
    # U8S8 with int16 saturation of pairs (vpmaddubsw)
    a = xq.reshape(M, K // 2, 2); b = w.astype(np.int64).reshape(K // 2, 2, N)
    pairs = np.clip(a[:, :, 0, None] * b[None, :, 0, :] + a[:, :, 1, None] * b[None, :, 1, :], -32768, 32767)
    sat = (pairs.sum(1) - z * w.astype(np.int64).sum(0))[None]
    print("   vs saturating-pairs reference:", float((np.abs(y - sat.astype(np.float32) * (s * ws)) / (s * ws)).max()))
