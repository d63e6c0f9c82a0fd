passes
