#!/usr/bin/env python3
"""The PyTorch + PEFT baseline of scripts/bench-train.sh: LoRA training steps on the same GGUF base model
(transformers dequantizes it to fp32), the same corpus windows, the same LoRA settings. Prints
`tokens_per_s` and `peak_rss_mb` lines like the Rust side.

    bench_train_pytorch.py <model.gguf | HF folder> <targets q,v|all> <rank> <seq> <batch> <steps> <corpus> <threads>
"""
import os
import resource
import sys
import time


def main() -> None:
    model_path, targets, rank, seq, batch, steps, corpus, threads = sys.argv[1:9]
    rank, seq, batch, steps, threads = int(rank), int(seq), int(batch), int(steps), int(threads)
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if os.path.isdir(model_path):  # a Hugging Face folder (scripts/bench-1b.sh)
        tok = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    else:
        folder, name = os.path.dirname(model_path), os.path.basename(model_path)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    mods = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] if targets == "all" \
        else [t if t.endswith("_proj") else f"{t}_proj" for t in targets.split(",")]
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                             target_modules=mods, task_type="CAUSAL_LM"))
    model.train()
    ids = tok(open(corpus, encoding="utf-8").read(), return_tensors="pt")["input_ids"][0]
    need = batch * seq * (steps + 1)
    assert ids.numel() >= need, f"corpus too small: {ids.numel()} tokens < {need}"
    windows = ids[:need].view(steps + 1, batch, seq)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    marks = []
    for i in range(steps + 1):
        t = time.perf_counter()
        x = windows[i]
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t
        print(f"step {i + 1}: loss {loss.item():.4f} in {dt:.2f}s", file=sys.stderr)
        marks.append(dt)
    timed = sum(marks[1:])  # the first step warms up
    print(f"tokens_per_s {batch * seq * steps / timed:.1f}")
    print(f"peak_rss_mb {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
