#!/usr/bin/env python3
"""The `rope_freqs` divisors llama.cpp's converter writes for Llama 3 RoPE scaling, as f32 bit patterns, for bushu's
bit-identity test (tests/fixtures/quant/llama3-rope-factors.json; test `quant_hf`).

The function is `LlamaModel.generate_extra_tensors` of convert_hf_to_gguf.py (conversion/llama.py in
llama.cpp's tree), copied verbatim apart from reading its inputs from arguments.

  python3 scripts/refs/llama3_rope_factors.py > tests/fixtures/quant/llama3-rope-factors.json
"""
import json, math, struct
import torch


def generate(base, dim, factor, low_freq_factor, high_freq_factor, old_context_len):
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    rope_factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            rope_factors.append(1)
        elif wavelen > low_freq_wavelen:
            rope_factors.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            rope_factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(rope_factors, dtype=torch.float32)


CASES = [
    # (rope_theta, head_dim, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)
    (500000.0, 16, 8.0, 1.0, 4.0, 64),      # tests/fixtures/hf/llama3-gqa
    (500000.0, 128, 8.0, 1.0, 4.0, 8192),   # Llama 3.1 8B/70B/405B
    (500000.0, 64, 32.0, 1.0, 4.0, 8192),   # Llama 3.2 1B/3B
    (500000.0, 128, 16.0, 1.0, 4.0, 8192),
    (10000.0, 64, 4.0, 2.0, 8.0, 2048),
]
out = []
for c in CASES:
    bits = [struct.unpack('<I', struct.pack('<f', x))[0] for x in generate(*c).tolist()]
    out.append({"args": list(c), "bits": bits})
print(json.dumps({"source": "convert_hf_to_gguf.py LlamaModel.generate_extra_tensors, torch " + torch.__version__,
                  "cases": out}, indent=1))
