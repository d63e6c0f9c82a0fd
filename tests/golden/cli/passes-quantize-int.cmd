passes quantize-int
