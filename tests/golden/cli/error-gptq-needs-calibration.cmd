run samples/pycode-tiny -q -p quantize-gptq -o /nonexistent/out
