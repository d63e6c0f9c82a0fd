run samples/pycode-tiny --dry-run -p 'cast,prune{ratio=0.5}'
