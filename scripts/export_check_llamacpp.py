"""llama.cpp (llama-cpp-python) on OpenLedger's exports, for scripts/export-check.sh.

usage: export_check_llamacpp.py <out dir of the export_check example> <fixtures dir> <SmolLM2 GGUF> <threads>

1. Every family fixture's GGUF with its exported GGUF LoRA (`--lora`): llama.cpp's logits against the
   exported merged GGUF's in llama.cpp (and the base's, to show the adapter is applied), and against
   transformers + PEFT's (reference.json) as closely as llama.cpp's base gets to transformers'.
2. SmolLM2-135M-Instruct with the trained adapter as a GGUF LoRA, and the merged GGUF: llama.cpp's greedy
   tokens against ours (ours.json).
Ends with RESULT lines; exits 1 when llama.cpp disagrees.
"""

import json
import os
import sys

import numpy as np
from llama_cpp import Llama

out, fixtures, smollm, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
# the tolerance of the fixtures' own GGUF-vs-transformers test (their GGUFs hold f16 / q8_0 tensors)
TOL = 1e-2
failed = []


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def logits(model, lora, ids):
    kw = {"lora_path": lora} if lora else {}
    llm = Llama(model_path=model, n_ctx=max(64, len(ids) + 8), n_threads=threads, logits_all=True,
                verbose=False, **kw)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


fam_dir = os.path.join(out, "families")
families_ok = 0
for name in sorted(os.listdir(fam_dir)):
    ref = json.load(open(os.path.join(fam_dir, name, "reference.json")))
    ids = ref["ids"]
    gguf = os.path.join(fixtures, name, "model.gguf")
    want = np.array(ref["lora_logits"], dtype=np.float32)
    want_base = np.array(ref["logits"], dtype=np.float32)
    try:
        got = logits(gguf, os.path.join(fam_dir, name, "adapter.gguf"), ids)
        merged = logits(os.path.join(fam_dir, name, "merged.gguf"), None, ids)
        base = logits(gguf, None, ids)
    except Exception as e:  # llama.cpp refused a file: a failure, named
        print(f"{name}: llama.cpp refused it: {e}", file=sys.stderr)
        failed.append(name)
        continue
    # the adapter applied at run time (--lora) against the same weights merged (whose logits our own tests
    # check against transformers): equal to float rounding when adapter.gguf is read as we wrote it
    d, moved = rel(got, merged), rel(base, merged)
    # against transformers + PEFT: no closer than llama.cpp's own base model gets to transformers' (these
    # tiny random models are sensitive; llama.cpp has no sliding window for Mistral's `llama` GGUFs)
    d_ref, d_ref_base = rel(got, want), rel(base, want_base)
    ok = d < TOL and moved > 10 * d and d_ref <= max(TOL, 2 * d_ref_base)
    print(f"{name}: llama.cpp base + adapter.gguf vs model merged: {d:.1e} (the adapter moves the logits "
          f"{moved:.1e}); vs transformers + PEFT: {d_ref:.1e} (llama.cpp's base vs transformers': {d_ref_base:.1e})",
          file=sys.stderr)
    if ok:
        families_ok += 1
    else:
        failed.append(name)

ours = json.load(open(os.path.join(out, "ours.json")))
prompt, eos = ours["prompt_ids"], set(ours["eos"])
n = len(ours["quantized"])


def until_eos(tokens):
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


def greedy(model, lora=None):
    kw = {"lora_path": lora} if lora else {}
    llm = Llama(model_path=model, n_ctx=512, n_threads=threads, verbose=False, **kw)
    toks = []
    for t in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        toks.append(int(t))
        if len(toks) == n:
            break
    return toks, llm


def matching(a, b):
    a, b = until_eos(a), until_eos(b)
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k, max(len(a), len(b))


lora_tokens, llm = greedy(smollm, os.path.join(out, "adapter.gguf"))
merged_tokens, _ = greedy(os.path.join(out, "model.gguf"))
base_tokens, _ = greedy(smollm)
text = lambda t: llm.detokenize(until_eos(t)).decode("utf-8", "replace")
print(f"llama.cpp, base + adapter.gguf: {text(lora_tokens)!r}", file=sys.stderr)
print(f"llama.cpp, model.gguf (merged): {text(merged_tokens)!r}", file=sys.stderr)
print(f"llama.cpp, base alone:          {text(base_tokens)!r}", file=sys.stderr)
print(f"ours, quantized forward + adapter: {text(ours['quantized'])!r}", file=sys.stderr)
print(f"ours, serving engine (int8) + adapter: {text(ours['served'])!r}", file=sys.stderr)

lora_q, total = matching(lora_tokens, ours["quantized"])
lora_s, total_s = matching(lora_tokens, ours["served"])
merged_m, total_m = matching(merged_tokens, ours["merged"])
base_b, total_b = matching(base_tokens, ours["base"])
adapter_changes = until_eos(lora_tokens) != until_eos(base_tokens)
if lora_q != total or merged_m != total_m or not adapter_changes:
    failed.append("smollm2")
print(f"RESULT llamacpp_families_lora_logits_match {families_ok} of_{len(os.listdir(fam_dir))}_families")
print(f"RESULT llamacpp_lora_greedy_tokens_equal_ours {lora_q} of_{total}")
print(f"RESULT llamacpp_lora_greedy_tokens_equal_served {lora_s} of_{total_s}")
print(f"RESULT llamacpp_merged_gguf_greedy_tokens_equal_ours {merged_m} of_{total_m}")
print(f"RESULT llamacpp_base_greedy_tokens_equal_ours {base_b} of_{total_b}")
if failed:
    print(f"llama.cpp disagrees on: {', '.join(failed)}", file=sys.stderr)
    sys.exit(1)
