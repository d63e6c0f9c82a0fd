inspect samples/pycode-tiny
