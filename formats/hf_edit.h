// Structural edits of safetensors checkpoints with config.json (core/checkpoint_edit.h):
// config keys, DeciLM / Nemotron-NAS per-layer configs for FinerCut students, tensor
// renumbering and fused projection storage, as transformers, vLLM and llama.cpp's converters
// expect them.
#pragma once

#include "core/checkpoint_edit.h"

namespace compress {

const CheckpointEditor& HfCheckpointEditor();

}  // namespace compress
