#!/usr/bin/env python3
"""The GPU machine's half of scripts/gpu-check.sh (it has PyTorch, transformers and PEFT; no Rust, no
network, and the 98 MB model file cannot be copied there):

    python3 scripts/gpu_models.py build OUT        random-weight SmolLM2-135M- and Llama-3.2-1B-shaped
                                                   models in the layout of scripts/model-fixtures.py
                                                   (HF folder, PEFT adapter, reference.safetensors with
                                                   transformers' logits, PEFT's loss and LoRA gradients)
    python3 scripts/gpu_models.py baseline OUT     PyTorch + PEFT on the same card, same shapes as
                                                   gpu_check's benchmarks: LoRA training tokens/s and
                                                   peak memory; batched `generate` with PEFT adapters

Every figure ends as a `RESULT <name> <value> <unit>` line. The references are computed in f32 on the GPU
(TF32 off) so that they are references.
"""
import importlib.util
import json
import os
import sys
import time

import torch
import transformers as T
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("fixtures", os.path.join(HERE, "model-fixtures.py"))
fixtures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fixtures)

SHAPES = {
    # SmolLM2-135M-Instruct's shape
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                    rope_theta=100000.0, tie_word_embeddings=True),
    # Llama 3.2 1B's shape
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                     rope_theta=500000.0, tie_word_embeddings=True,
                     rope_parameters={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
                                      "rope_theta": 500000.0}),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEQ = 32


def build(root):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    for name, shape in SHAPES.items():
        out = os.path.join(root, name)
        os.makedirs(out, exist_ok=True)
        tok, _, stop_ids = fixtures.tokenizer(out, "llama3")
        kw = dict(rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=None, eos_token_id=stop_ids[0])
        kw.update(shape)
        cfg = T.LlamaConfig(**kw)
        gen = torch.Generator().manual_seed(1234)
        model = T.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
        with torch.no_grad():
            for pname, p in model.named_parameters():
                noise = torch.randn(p.shape, generator=gen)
                p.copy_(1.0 + 0.1 * noise if "norm" in pname else 0.02 * noise)
        model.save_pretrained(out, safe_serialization=True)
        with open(os.path.join(out, "generation_config.json"), "w") as f:
            json.dump({"eos_token_id": stop_ids[0]}, f)
        model = model.to(dev)
        ids = torch.randint(3, tok.get_vocab_size(), (1, SEQ), generator=gen)
        ref = {"ids": ids.to(torch.int64)}
        ids = ids.to(dev)
        with torch.no_grad():
            ref["logits"] = model(ids).logits.float().cpu().contiguous()
        peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS,
                                                lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
        with torch.no_grad():
            for pname, p in peft.named_parameters():
                if "lora_" in pname:
                    p.copy_(0.02 * torch.randn(p.shape, generator=gen).to(dev))
        peft.eval()
        logits = peft(ids).logits
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
        loss.backward()
        ref["lora_logits"] = logits.detach().float().cpu().contiguous()
        ref["lora_loss"] = loss.detach().float().cpu().reshape(1)
        for pname, p in peft.named_parameters():
            if "lora_" in pname:
                ref["grad." + pname.replace(".default", "")] = p.grad.detach().float().cpu().contiguous()
        peft.save_pretrained(os.path.join(out, "adapter"))
        readme = os.path.join(out, "adapter", "README.md")
        if os.path.exists(readme):
            os.remove(readme)
        save_file(ref, os.path.join(out, "reference.safetensors"))
        print(f"[gpu_models] {name}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, "
              f"loss {float(loss):.4f}", file=sys.stderr)
        del model, peft
        torch.cuda.empty_cache()


def baseline(root):
    """The same work as gpu_check's benchmarks, through PyTorch + PEFT (bf16 weights, as served)."""
    dev = "cuda"
    path = os.path.join(root, "llama-1b")
    # training: LoRA r=8 on q, v; batch 4 x 256; forward + backward (f32 weights, as ours trains)
    model = T.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).to(dev)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                            lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
    vocab = model.config.vocab_size
    ids = torch.randint(5, vocab - 5, (4, 256), device=dev)
    torch.cuda.reset_peak_memory_stats()

    def step():
        out = peft(ids, labels=ids)
        out.loss.backward()
    step()
    torch.cuda.synchronize()
    t0 = time.time()
    for _ in range(10):
        step()
    torch.cuda.synchronize()
    rate = 4 * 256 * 10 / (time.time() - t0)
    print(f"RESULT peft_train_tok_s {rate:.4f} tokens/s")
    print(f"RESULT peft_train_peak_gpu_mb {torch.cuda.max_memory_allocated() / 2**20:.4f} MB")
    del peft, model
    torch.cuda.empty_cache()
    # serving: batched greedy generate, 64 prompts x 64 new tokens, one PEFT adapter (transformers has no
    # per-row adapters: this is its best case)
    model = T.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16).to(dev)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                 "o_proj"],
                                            lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")).eval()
    prompts = torch.randint(5, vocab - 5, (64, 64), device=dev)
    with torch.no_grad():
        peft.generate(input_ids=prompts[:2], max_new_tokens=4, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        t0 = time.time()
        out = peft.generate(input_ids=prompts, max_new_tokens=64, min_new_tokens=64, do_sample=False,
                            pad_token_id=0, eos_token_id=None)
        torch.cuda.synchronize()
    rate = (out.shape[1] - 64) * 64 / (time.time() - t0)
    print(f"RESULT peft_generate_tok_s {rate:.4f} tokens/s")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("build", "baseline"):
        sys.exit(__doc__)
    {"build": build, "baseline": baseline}[sys.argv[1]](sys.argv[2])
