#!/usr/bin/env python3
"""Makes the per-family parity goldens in tests/golden/families/.

For every family: a tiny random model built with transformers (f32, eager attention, CPU),
its checkpoint (config.json + model.safetensors, as save_pretrained writes it) in
FAMILY/, and FAMILY/golden.safetensors holding `ids` (int32 [T]) and the transformers
logits for them (`logits`, f32 [T, vocab]). The tests check our runtime's logits against
these within 1e-4.

Run on the device machine (transformers, torch, safetensors):
    python tests/golden/families/make_goldens.py tests/golden/families
"""
import json
import os
import sys

import torch
import transformers as tf
from safetensors.torch import save_file

VOCAB, HIDDEN, T = 96, 32, 20
COMMON = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=48, max_position_embeddings=64, tie_word_embeddings=False)

FAMILIES = {
    "llama": (tf.LlamaConfig, dict(COMMON, num_hidden_layers=2,
                                   rope_scaling=dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0,
                                                     high_freq_factor=4.0,
                                                     original_max_position_embeddings=16))),
    "mistral": (tf.MistralConfig, dict(COMMON, num_hidden_layers=2, sliding_window=8)),
    "qwen2": (tf.Qwen2Config, dict(COMMON, num_hidden_layers=2, tie_word_embeddings=True)),
    "qwen3": (tf.Qwen3Config, dict(COMMON, num_hidden_layers=2, head_dim=16)),
    "gemma": (tf.GemmaConfig, dict(COMMON, num_hidden_layers=2, head_dim=16, tie_word_embeddings=True)),
    "gemma2": (tf.Gemma2Config, dict(COMMON, num_hidden_layers=3, head_dim=16, sliding_window=8,
                                     query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
                                     final_logit_softcapping=3.0, tie_word_embeddings=True)),
    "gemma3_text": (tf.Gemma3TextConfig, dict(COMMON, num_hidden_layers=3, head_dim=16, sliding_window=8,
                                              query_pre_attn_scalar=24, tie_word_embeddings=True,
                                              layer_types=["sliding_attention", "sliding_attention",
                                                           "full_attention"])),
    "phi3": (tf.Phi3Config, dict(COMMON, num_hidden_layers=2, partial_rotary_factor=0.5, pad_token_id=0)),
    "gpt2": (tf.GPT2Config, dict(vocab_size=VOCAB, n_embd=HIDDEN, n_head=4, n_layer=2, n_positions=64)),
    "mixtral": (tf.MixtralConfig, dict(COMMON, num_hidden_layers=2, num_local_experts=4,
                                       num_experts_per_tok=2)),
    "qwen2_moe": (tf.Qwen2MoeConfig, dict(COMMON, num_hidden_layers=2, num_experts=4, num_experts_per_tok=2,
                                          moe_intermediate_size=24, shared_expert_intermediate_size=40,
                                          norm_topk_prob=False, mlp_only_layers=[1])),
    "qwen3_moe": (tf.Qwen3MoeConfig, dict(COMMON, num_hidden_layers=2, head_dim=16, num_experts=4,
                                          num_experts_per_tok=2, moe_intermediate_size=24,
                                          norm_topk_prob=True)),
    # Rope scaling variants, checked like the families (their model_type is the family's).
    "qwen2_yarn": (tf.Qwen2Config, dict(COMMON, num_hidden_layers=2,
                                        rope_parameters=dict(rope_type="yarn", factor=4.0, rope_theta=10000.0,
                                                             original_max_position_embeddings=16))),
    "phi3_longrope": (tf.Phi3Config, dict(COMMON, num_hidden_layers=2, pad_token_id=0,
                                          original_max_position_embeddings=16,
                                          rope_parameters=dict(rope_type="longrope", rope_theta=10000.0,
                                                               short_factor=[1.0, 1.2, 1.5, 2.0],
                                                               long_factor=[1.5, 2.5, 4.0, 8.0]))),
    "gemma3_linear": (tf.Gemma3TextConfig, dict(COMMON, num_hidden_layers=2, head_dim=16, sliding_window=8,
                                                query_pre_attn_scalar=24, tie_word_embeddings=True,
                                                layer_types=["sliding_attention", "full_attention"],
                                                rope_parameters={
                                                    "full_attention": dict(rope_type="linear", factor=2.0,
                                                                           rope_theta=1000000.0),
                                                    "sliding_attention": dict(rope_type="default",
                                                                              rope_theta=10000.0)})),
}


# Multimodal containers: a vision tower and projector beside a text decoder of a family above
# (config.json nests it as text_config). compress compresses and runs the text decoder; the
# logits are the text-only forward's. FAMILY/ holds the names save_pretrained writes
# (language_model.model.*, vision_tower.*, language_model.lm_head: those of most published
# checkpoints), FAMILY_prefixed/ the same weights under the names transformers 4.52-4.57 wrote
# (model.language_model.*, model.vision_tower.*, lm_head).
VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
              patch_size=14)
MULTIMODAL = {
    "gemma3": (tf.Gemma3Config, dict(
        text_config=dict(COMMON, model_type="gemma3_text", num_hidden_layers=2, head_dim=16, sliding_window=8,
                         query_pre_attn_scalar=24, layer_types=["sliding_attention", "full_attention"]),
        vision_config=dict(VISION, model_type="siglip_vision_model"), mm_tokens_per_image=1)),
    "mistral3": (tf.Mistral3Config, dict(
        text_config=dict(COMMON, model_type="mistral", num_hidden_layers=2, head_dim=8),
        vision_config=dict(VISION, model_type="pixtral", head_dim=8), spatial_merge_size=2)),
    "qwen2_5_vl": (tf.Qwen2_5_VLConfig, dict(
        text_config=dict(COMMON, model_type="qwen2_5_vl_text", num_hidden_layers=2,
                         rope_scaling=dict(type="mrope", mrope_section=[1, 1, 2])),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[0]))),
    "llava": (tf.LlavaConfig, dict(
        text_config=dict(COMMON, model_type="llama", num_hidden_layers=2),
        vision_config=dict(VISION, model_type="clip_vision_model", projection_dim=16))),
    # Idefics3 and SmolVLM: the decoder under model.text_model.* (their only naming), the vision
    # tower under model.vision_model.*, the pixel-shuffle projector under model.connector.*.
    "idefics3": (tf.Idefics3Config, dict(
        text_config=dict(COMMON, model_type="llama", num_hidden_layers=2),
        vision_config=dict(VISION), scale_factor=2)),
    "smolvlm": (tf.SmolVLMConfig, dict(
        text_config=dict(COMMON, model_type="llama", num_hidden_layers=2, tie_word_embeddings=True),
        vision_config=dict(VISION), scale_factor=2, tie_word_embeddings=True)),
}
# Containers saved under one naming only (no FAMILY_prefixed/).
SINGLE_NAMING = {"idefics3", "smolvlm"}


def prefixed_name(n):
    for old, new in (("language_model.model.", "model.language_model."), ("vision_tower.", "model.vision_tower."),
                     ("multi_modal_projector.", "model.multi_modal_projector."), ("language_model.lm_head.", "lm_head."),
                     ("model.", "model.language_model."), ("visual.", "model.visual.")):  # Qwen2.5-VL's flat names
        if n.startswith(old):
            return new + n[len(old):]
    return n


def build_and_save(auto_class, cfg, d):
    """A randomized model of `cfg` saved in `d` with its golden ids and logits (golden.safetensors)."""
    torch.manual_seed(0)
    model = auto_class.from_config(cfg, attn_implementation="eager").float().eval()
    gen = torch.Generator().manual_seed(1234)
    randomize(model, gen)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    ids = torch.randint(0, VOCAB, (1, T), generator=gen)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float().contiguous()
    golden = {"ids": ids[0].to(torch.int32).contiguous(), "logits": logits}
    save_file(golden, os.path.join(d, "golden.safetensors"))
    p = os.path.join(d, "generation_config.json")
    if os.path.exists(p):
        os.remove(p)
    return model, ids, logits, golden


def save_multimodal(out, only):
    from safetensors.torch import load_file
    for fam, (cls, kw) in MULTIMODAL.items():
        if only and fam not in only:
            continue
        d = os.path.join(out, fam)
        model, ids, logits, golden = build_and_save(tf.AutoModelForImageTextToText, cls(**kw), d)
        tensors = load_file(os.path.join(d, "model.safetensors"))
        if fam in SINGLE_NAMING:
            again = tf.AutoModelForImageTextToText.from_pretrained(d, attn_implementation="eager").float().eval()
            with torch.no_grad():
                assert (again(input_ids=ids).logits[0].float() - logits).abs().max().item() == 0.0, d
            print(fam, "ok", sorted(tensors)[:400])
            continue
        prefixed = os.path.join(out, fam + "_prefixed")
        os.makedirs(prefixed, exist_ok=True)
        save_file({prefixed_name(k): v.contiguous() for k, v in tensors.items()},
                  os.path.join(prefixed, "model.safetensors"), metadata={"format": "pt"})
        save_file(golden, os.path.join(prefixed, "golden.safetensors"))
        with open(os.path.join(d, "config.json")) as f:
            c = f.read()
        with open(os.path.join(prefixed, "config.json"), "w") as f:
            f.write(c)
        # Both namings load in transformers to the same model.
        for folder in (d, prefixed):
            again = tf.AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="eager").float().eval()
            with torch.no_grad():
                diff = (again(input_ids=ids).logits[0].float() - logits).abs().max().item()
            assert diff == 0.0, (folder, diff)
        print(fam, "ok", sorted(tensors)[:400])


def randomize(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "ln_" in name):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))


def main(out):
    only = sys.argv[2:]
    save_multimodal(out, only)
    for fam, (cls, kw) in FAMILIES.items():
        if only and fam not in only:
            continue
        cfg = cls(**kw)
        cfg._attn_implementation = "eager"
        model, _, _, _ = build_and_save(tf.AutoModelForCausalLM, cfg, os.path.join(out, fam))
        print(fam, "ok", json.dumps({k: list(v.shape) for k, v in model.state_dict().items()})[:3000])


if __name__ == "__main__":
    main(sys.argv[1])
