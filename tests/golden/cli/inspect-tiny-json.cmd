inspect samples/pycode-tiny --json
