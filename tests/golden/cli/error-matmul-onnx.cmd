eval /nonexistent/model.onnx --text samples/eval/pycode-sample.txt --matmul native
