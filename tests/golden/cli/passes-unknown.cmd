passes quantize-int9
