run samples/pycode-tiny --dry-run -p 'quantize-int{bits=9}'
