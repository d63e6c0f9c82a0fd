// Structural edits of ONNX decoder graphs (core/checkpoint_edit.h): after a pass sliced the
// projections of the blocks formats/onnx_structure.h found, the editor rewrites what else
// counts heads and neurons (Reshape shape constants, GQA head-repeat indices, per-neuron
// constants between the FFN products, shape hints) and removes sublayers by bypassing their
// residual Adds; then it derives the architecture view again.
#pragma once

#include "core/checkpoint_edit.h"

namespace compress {

const CheckpointEditor& OnnxCheckpointEditor();

}  // namespace compress
