// How the readers load a model (formats/model_io.h LoadModel).
#pragma once

namespace compress {

// check_codes: the quantized codes of the grids that have invalid ones (symmetric int, fp8)
// are read and checked at load, and scales read into memory, so a bad file fails there (the
// default, for any file a user gives). false: nothing past the headers and config is read at
// load; each quantized weight's scales, zero points and codes come from one read when first
// used (core/quant.h DeferredQuant), and bad codes fail then. For a file this process has just
// written from codes it made (the run's read-back for its report).
struct LoadOptions {
  bool check_codes = true;
};

}  // namespace compress
