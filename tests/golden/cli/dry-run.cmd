run samples/pycode-tiny --dry-run -p 'cast{dtype=f16,exclude=[*norm*]}'
