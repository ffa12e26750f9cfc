#!/usr/bin/env python3
"""Reference fixtures for the model families (crates/model/tests/families.rs): for each family a tiny
random model built by transformers from its own config class, every feature on (biases, q/k norms,
soft-caps, sliding windows shorter than the test sequence, wide heads, untied embeddings), saved as a
Hugging Face folder with a tokenizer trained on the spot, a PEFT adapter with fixed random weights, and
what transformers computes on fixed token ids: base logits, adapted logits, the LoRA gradients of the
summed next-token loss, and greedy generations with and without the adapter.

    .tools/bench-py/bin/python scripts/model-fixtures.py crates/model/tests/data/families

(`.tools/bench-py` is the venv scripts/bench-train.sh installs: torch, transformers, peft, gguf.)
The output is committed (about 2 MB); CI does not install PyTorch. Deterministic for fixed versions.
"""
import datetime
import json
import os
import shutil
import sys

import torch
import transformers as T
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

BPE_VOCAB = 320
SPM_VOCAB = 400
SEQ = 12
CORPUS = [
    "The lighthouse keeper of Veloria counts ships at dawn.",
    "Qwen, Gemma, Mistral and Llama are model families.",
    "Numbers like 2025 and 3.14 appear in text; so do emails a@b.org.",
    "def f(x):\n    return x * 2\n",
    "Le café est chaud. Der Zug fährt um 10 Uhr.",
] * 20

FAMILIES = {
    "llama3": (T.LlamaConfig, dict(
        rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16, "rope_theta": 500000.0},
        tie_word_embeddings=False)),
    "mistral": (T.MistralConfig, dict(sliding_window=5, tie_word_embeddings=False, rope_theta=1e6)),
    "qwen2": (T.Qwen2Config, dict(tie_word_embeddings=False, rope_theta=1e6)),
    "qwen3": (T.Qwen3Config, dict(head_dim=24, tie_word_embeddings=True, rope_theta=1e6)),
    "gemma2": (T.Gemma2Config, dict(head_dim=24, sliding_window=5, query_pre_attn_scalar=20,
                                    attn_logit_softcapping=3.0, final_logit_softcapping=4.0)),
    "gemma3": (T.Gemma3TextConfig, dict(head_dim=24, sliding_window=5, query_pre_attn_scalar=20,
                                        layer_types=["sliding_attention", "full_attention"],
                                        rope_parameters={
                                            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                                            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
}

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# per family: special tokens (the first ones get ids 0, 1, 2...), the tokenizer_config.json entries and the
# generation_config.json end tokens, in the shape each family's real files have
SPECIALS = {
    "llama3": (["<|end_of_text|>", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"],
               {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": "<|end_of_text|>"},
               ["<|end_of_text|>", "<|eot_id|>"]),
    "mistral": (["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
                {"bos_token": "<s>", "eos_token": "</s>", "pad_token": None}, ["</s>"]),
    "qwen2": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
              {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
              ["<|im_end|>", "<|endoftext|>"]),
    "qwen3": (["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
              {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
              ["<|im_end|>", "<|endoftext|>"]),
    "gemma2": (["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
               {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}, ["<eos>", "<end_of_turn>"]),
    "gemma3": (["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
               {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}, ["<eos>", "<end_of_turn>"]),
}

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chat-templates")

# conversations rendered by transformers' apply_chat_template; families whose template refuses one
# (Gemma 2 has no system role; Gemma and Mistral insist on alternating roles) record the error message
# keys in sorted order at every level: serde_json (without preserve_order) sorts object keys, so a tool
# written in another order would render differently here than in Python (see issue notes: #30's tools)
TOOL = {"function": {"description": "Weather in a city, °C", "name": "get_weather",
                     "parameters": {"properties": {"city": {"type": "string"}}, "required": ["city"],
                                    "type": "object"}},
        "type": "function"}
CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "Hi there"}], "add_generation_prompt": True},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
                  {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
     "add_generation_prompt": True},
    {"messages": [{"role": "user", "content": "  padded  "}, {"role": "assistant", "content": " an answer \n"}],
     "add_generation_prompt": False},
    {"messages": [{"role": "user", "content": "Weather in Paris?"}], "add_generation_prompt": True,
     "tools": [TOOL]},
    {"messages": [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
     "add_generation_prompt": True},
    {"messages": [{"role": "user", "content": "q"},
                  {"role": "assistant", "content": "<think>\nreasoning\n</think>\n\nthe answer"}],
     "add_generation_prompt": False},
]


# the pre-tokenizer regexes of the BPE families (as in their tokenizer.json and llama.cpp's "llama-bpe" and
# "qwen2" pre-tokenizers): Llama 3 groups up to three digits, Qwen 2 splits every digit
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# what each family's GGUF says about its tokenizer: model ("gpt2" BPE or "llama" SentencePiece) and pre
GGUF_TOKENIZER = {"llama3": ("gpt2", "llama-bpe"), "qwen2": ("gpt2", "qwen2"), "qwen3": ("gpt2", "qwen2"),
                  "mistral": ("llama", None), "gemma2": ("llama", None), "gemma3": ("llama", None)}
# texts whose ids the tests compare (HF folder and GGUF loaders against the reference tokenizer)
TEXTS = ["Hello, world!", "Numbers 12345 and 3.14159; it's 2025, they're here.",
         "  leading spaces,   runs\tand\ttabs\n\nnew lines \r\n end  ",
         "Unicode: café naïve 東京 русский emoji 🎉", "don't DON'T we'll I'm",
         "<|im_start|>user\nhi<|im_end|>", "<start_of_turn>model\nok<end_of_turn>", "[INST] q [/INST] a</s>"]


def spm_tokenizer(out, fam, specials):
    """A SentencePiece BPE model with byte fallback (Gemma and Mistral ship one), trained here, and the
    tokenizer.json that reproduces it (merges ranked by piece score, as Hugging Face's converter does),
    checked against sentencepiece itself."""
    import sentencepiece as spm
    corpus = os.path.join(out, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(CORPUS))
    prefix = os.path.join(out, "spm")
    dummy = fam == "mistral"  # llama-style SentencePiece prefixes a space; Gemma's does not
    # ids as the families have them: Gemma <pad> 0, <eos> 1, <bos> 2, <unk> 3; Mistral <unk> 0, <s> 1, </s> 2
    ids = (dict(pad_id=-1, unk_id=0, bos_id=1, eos_id=2, bos_piece="<s>", eos_piece="</s>") if dummy else
           dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>"))
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, vocab_size=SPM_VOCAB, model_type="bpe", byte_fallback=True,
        user_defined_symbols=specials[3:], unk_piece="<unk>", add_dummy_prefix=dummy, split_digits=True,
        allow_whitespace_only_pieces=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        minloglevel=2, **ids)
    os.remove(corpus)
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    n = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    normal = [i for i in range(n) if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))
              and sp.id_to_piece(i) not in specials]
    merges = []
    for i in sorted(normal, key=lambda i: -sp.get_score(i)):
        piece = sp.id_to_piece(i)
        local = [(piece[:k], piece[k:]) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        merges.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence(([normalizers.Prepend("\u2581")] if dummy else [])
                                          + [normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([decoders.Strip(" ", 1, 0)] if dummy else []))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in [sp.id_to_piece(i) for i in range(n) if sp.is_control(i)] + specials[3:]])
    for t in TEXTS + CORPUS[:5]:
        ours, theirs = tok.encode(t, add_special_tokens=False).ids, sp.encode(t)
        if not any(s in t for s in specials):
            assert ours == theirs, (fam, t, ours, theirs)
    tok.save(os.path.join(out, "tokenizer.json"))
    os.remove(prefix + ".vocab")
    return tok, sp


def tokenizer(out, fam):
    specials, cfg_tokens, stops = SPECIALS[fam]
    sp = None
    if GGUF_TOKENIZER[fam][0] == "llama":
        tok, sp = spm_tokenizer(out, fam, specials)
        os.remove(os.path.join(out, "spm.model"))
    else:
        regex = LLAMA3_REGEX if fam == "llama3" else QWEN2_REGEX
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(CORPUS, trainer)
        tok.save(os.path.join(out, "tokenizer.json"))
    cfg = dict(cfg_tokens)
    cfg["chat_template"] = open(os.path.join(TEMPLATES, f"{fam}.jinja")).read()
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["add_bos_token"] = False
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    return tok, sp, [tok.token_to_id(t) for t in stops]


# gguf (llama.cpp's writer) is imported where it is used: scripts/gpu_models.py borrows this file's
# tokenizer on GPU machines that have no gguf package
def arch_of(fam):
    import gguf
    return {"llama3": gguf.MODEL_ARCH.LLAMA, "mistral": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2,
            "qwen3": gguf.MODEL_ARCH.QWEN3, "gemma2": gguf.MODEL_ARCH.GEMMA2,
            "gemma3": gguf.MODEL_ARCH.GEMMA3}[fam]


def llama3_rope_factors(cfg):
    """llama.cpp's `rope_freqs.weight` for Llama 3's rope scaling: a divisor per frequency."""
    rp = cfg.rope_parameters
    base, dim = rp["rope_theta"], getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, lo, hi, old = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"], rp["original_max_position_embeddings"]
    out = []
    for f in freqs:
        wavelen = 2 * np.pi / f
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf(out, fam, model, cfg, tok, sp, stop_ids, quant="f16", name="model.gguf"):
    """The model as llama.cpp's converter writes it: its tensor names (gguf's own name map), llama-arch q/k
    rows permuted, Gemma norms stored as 1 + w, matrices in f16 (or Q8_0) and vectors in f32, the tokenizer
    in the family's GGUF form; a vocabulary larger than the tokenizer's is padded with reserved control
    tokens, as Llama 3's is."""
    import gguf
    arch = arch_of(fam)
    w = gguf.GGUFWriter(os.path.join(out, name), gguf.MODEL_ARCH_NAMES[arch])
    n = cfg.num_hidden_layers
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(n)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    rp = cfg.rope_parameters
    full = rp.get("full_attention", rp)
    w.add_rope_freq_base(full["rope_theta"])
    if full.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(full["factor"])
    if getattr(cfg, "sliding_window", None) and fam != "qwen2" and fam != "qwen3":
        w.add_sliding_window(cfg.sliding_window)
    if fam.startswith("gemma"):
        w.add_sliding_window_pattern([t == "sliding_attention" for t in cfg.layer_types])
        # the fixture's query_pre_attn_scalar is not head_dim (what llama.cpp assumes without the key)
        w.add_attention_scale(cfg.query_pre_attn_scalar ** -0.5)
    if fam == "gemma2":
        w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
    names = gguf.get_tensor_name_map(arch, n)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # the same tensor as the embedding
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gname is not None, (fam, name)
        t = t.detach().float().numpy()
        if arch == gguf.MODEL_ARCH.LLAMA and (".q_proj." in name or ".k_proj." in name):
            heads = cfg.num_attention_heads if ".q_proj." in name else cfg.num_key_value_heads
            t = t.reshape(heads, 2, t.shape[0] // heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)
        if fam.startswith("gemma") and name.endswith("norm.weight"):
            t = t + 1
        if t.ndim != 2:
            w.add_tensor(gname, t.astype(np.float32))
        elif quant == "q8_0":
            q = gguf.quants.quantize(t, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(gname, t.astype(np.float16))
    if fam == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(cfg))
    model_kind, pre = GGUF_TOKENIZER[fam]
    vocab = tok.get_vocab_size()
    pad = [f"<|reserved_special_token_{i}|>" for i in range(cfg.vocab_size - vocab)]
    specials = set(SPECIALS[fam][0])
    w.add_tokenizer_model(model_kind)
    if model_kind == "gpt2":
        w.add_tokenizer_pre(pre)
        w.add_token_list([tok.id_to_token(i) for i in range(vocab)] + pad)
        w.add_token_types([gguf.TokenType.CONTROL if tok.id_to_token(i) in specials else gguf.TokenType.NORMAL
                           for i in range(vocab)] + [gguf.TokenType.CONTROL] * len(pad))
        merges = json.loads(tok.to_str())["model"]["merges"]
        w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    else:
        types = []
        for i in range(vocab):
            if sp.is_unknown(i):
                types.append(gguf.TokenType.UNKNOWN)
            elif sp.is_control(i):
                types.append(gguf.TokenType.CONTROL)
            elif sp.is_byte(i):
                types.append(gguf.TokenType.BYTE)
            elif sp.id_to_piece(i) in specials:
                types.append(gguf.TokenType.USER_DEFINED)
            else:
                types.append(gguf.TokenType.NORMAL)
        w.add_token_list([sp.id_to_piece(i) for i in range(vocab)])
        w.add_token_scores([sp.get_score(i) for i in range(vocab)])
        w.add_token_types(types)
        w.add_add_space_prefix(fam == "mistral")
        w.add_unk_token_id(sp.unk_id())
    cfg_tokens = SPECIALS[fam][1]
    if cfg_tokens["bos_token"]:
        w.add_bos_token_id(tok.token_to_id(cfg_tokens["bos_token"]))
    w.add_eos_token_id(tok.token_to_id(cfg_tokens["eos_token"]))
    if cfg_tokens["pad_token"]:
        w.add_pad_token_id(tok.token_to_id(cfg_tokens["pad_token"]))
    for s in stop_ids:
        if s != tok.token_to_id(cfg_tokens["eos_token"]):
            w.add_eot_token_id(s)
            break
    w.add_add_bos_token(False)
    w.add_chat_template(open(os.path.join(TEMPLATES, f"{fam}.jinja")).read())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def render_templates(out):
    tok = T.AutoTokenizer.from_pretrained(out)
    rendered = []
    for conv in CONVERSATIONS:
        try:
            text = tok.apply_chat_template(conv["messages"], tools=conv.get("tools"), tokenize=False,
                                           add_generation_prompt=conv["add_generation_prompt"])
            rendered.append({"text": text})
        except Exception as e:  # the template's own raise_exception
            rendered.append({"error": str(e)})
    return rendered


def randomize(model, gemma, gen):
    tied = model.config.tie_word_embeddings

    def std(name):
        # a tied embedding read back as the output projection makes every token predict itself when the
        # residual stream is mostly the embedding: keep it small there (Gemma multiplies it by sqrt(64))
        if "embed" in name or "lm_head" in name:
            return (0.12 if model.config.model_type == "gemma3_text" else 0.02) if gemma else (0.1 if tied else 0.5)
        return 0.25 if getattr(model.config, "model_type", "") in ("qwen3", "gemma3_text") else 0.12

    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                # Gemma scales by (1 + w): weights near 0 there, near 1 elsewhere
                p.copy_((0.0 if gemma else 1.0) + 0.2 * noise)
            else:
                p.copy_(std(name) * noise)


def main(root):
    torch.manual_seed(0)
    os.makedirs(root, exist_ok=True)
    summary = {}
    templates = {}
    for fam, (cls, extra) in FAMILIES.items():
        out = os.path.join(root, fam)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        tok, sp, stop_ids = tokenizer(out, fam)
        vocab = tok.get_vocab_size()
        VOCAB = BPE_VOCAB if GGUF_TOKENIZER[fam][0] == "gpt2" else SPM_VOCAB
        assert vocab <= VOCAB, vocab
        kw = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=None, eos_token_id=stop_ids[0])
        kw.update(extra)
        cfg = cls(**kw)
        cfg._attn_implementation = "eager"
        gen = torch.Generator().manual_seed(1234)
        model = T.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
        randomize(model, fam.startswith("gemma"), gen)
        model.save_pretrained(out, safe_serialization=True)
        write_gguf(out, fam, model, cfg, tok, sp, stop_ids)
        with open(os.path.join(out, "generation_config.json"), "w") as f:
            json.dump({"eos_token_id": stop_ids if len(stop_ids) > 1 else stop_ids[0]}, f)
        ids = torch.randint(3, vocab, (1, SEQ), generator=gen)
        ref = {"ids": ids.to(torch.int64)}
        with torch.no_grad():
            ref["logits"] = model(ids).logits.contiguous()
            ref["greedy"] = model.generate(ids[:, :4], max_new_tokens=10, do_sample=False, min_new_tokens=10,
                                           eos_token_id=None, pad_token_id=0)[:, 4:].contiguous()
        # a PEFT adapter with fixed random A and B on every projection
        lcfg = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0, bias="none",
                          task_type="CAUSAL_LM")
        peft = get_peft_model(model, lcfg)
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_" in name:
                    p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        peft.eval()
        logits = peft(ids).logits
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
        loss.backward()
        ref["lora_logits"] = logits.detach().contiguous()
        ref["lora_loss"] = loss.detach().reshape(1)
        for name, p in peft.named_parameters():
            if "lora_" in name:
                # PEFT's file name for the tensor: base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight
                key = name.replace(".default", "")
                ref["grad." + key] = p.grad.detach().contiguous()
        with torch.no_grad():
            ref["lora_greedy"] = peft.generate(input_ids=ids[:, :4], max_new_tokens=10, do_sample=False,
                                               min_new_tokens=10, eos_token_id=None,
                                               pad_token_id=0)[:, 4:].contiguous()
        peft.save_pretrained(os.path.join(out, "adapter"))
        os.remove(os.path.join(out, "adapter", "README.md"))
        save_file(ref, os.path.join(out, "reference.safetensors"))
        with open(os.path.join(out, "encodings.json"), "w") as f:
            json.dump([{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in TEXTS], f,
                      ensure_ascii=False)
        summary[fam] = {"loss": float(loss), "greedy": ref["greedy"].tolist()[0]}
        templates[fam] = render_templates(out)
    json.dump({"transformers": T.__version__, "torch": torch.__version__, "families": summary},
              open(os.path.join(root, "versions.json"), "w"), indent=1)
    # the date strftime_now gave while rendering (tests put their own day in its place)
    json.dump({"date": datetime.datetime.now().strftime("%d %b %Y"), "conversations": CONVERSATIONS,
               "rendered": templates}, open(os.path.join(root, "templates.json"), "w"), indent=1,
              ensure_ascii=False)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
