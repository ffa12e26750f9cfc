#!/usr/bin/env python3
"""Billion-parameter stand-ins for scripts/bench-1b.sh: randomly initialised models with the shapes of
Llama-3.2-1B and Qwen2.5-1.5B, built by transformers from their config classes (no hub is reachable, and a
weight's value does not change how fast it multiplies), written as a Hugging Face folder (f32 safetensors:
what both trainers load) and a Q8_0 GGUF (what both servers load: ours repacks it as int8, llama.cpp runs it
as is). The tokenizer is a small byte-level BPE trained here; the GGUF vocabulary is padded with reserved
tokens to the model's size, as Llama 3's own is.

    .tools/bench-py/bin/python scripts/bench_1b_models.py <out dir> [llama3|qwen2 ...]
"""
import importlib.util
import json
import os
import sys

import torch
import transformers as T

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("fixtures", os.path.join(HERE, "model-fixtures.py"))
fx = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fx)

SHAPES = {
    # meta-llama/Llama-3.2-1B: 16 layers, hidden 2048, 32 heads / 8 KV heads, FFN 8192, vocab 128256, tied
    "llama3": ("llama-3.2-1b-shape", T.LlamaConfig, dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_theta": 500000.0})),
    # Qwen/Qwen2.5-1.5B: 28 layers, hidden 1536, 12 heads / 2 KV heads, FFN 8960, vocab 151936, tied, qkv bias
    "qwen2": ("qwen2.5-1.5b-shape", T.Qwen2Config, dict(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
        tie_word_embeddings=True, rope_theta=1000000.0)),
}


def build(root, fam):
    name, cls, kw = SHAPES[fam]
    out = os.path.join(root, name)
    if os.path.exists(os.path.join(out, "model.gguf")):
        print(f"{out}: exists", file=sys.stderr)
        return
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    tok, sp, stop_ids = fx.tokenizer(out, fam)
    cfg = cls(pad_token_id=0, bos_token_id=None, eos_token_id=stop_ids[0], **kw)
    model = T.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    n = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n / 1e9:.2f}B parameters", file=sys.stderr)
    fx.write_gguf(out, fam, model, cfg, tok, sp, stop_ids, quant="q8_0")
    model.save_pretrained(out, safe_serialization=True)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": stop_ids}, f)


def main():
    root = sys.argv[1]
    for fam in sys.argv[2:] or ["llama3", "qwen2"]:
        build(root, fam)


if __name__ == "__main__":
    main()
