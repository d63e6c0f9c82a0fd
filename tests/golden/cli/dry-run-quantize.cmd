run samples/pycode-tiny --dry-run -p 'quantize-int{bits=3,group-size=64,symmetric=false}'
