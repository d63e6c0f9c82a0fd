run samples/pycode-tiny --dry-run -p quantize-gptq
