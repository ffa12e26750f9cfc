#!/usr/bin/env python3
"""Token ids from llama.cpp's tokenizer (PyPI `llama-cpp-python`), the independent reference that
crates/model/tests/smollm.rs checks our GGUF tokenizer against.

    python3 -m venv .tools/pyref && .tools/pyref/bin/pip install llama-cpp-python==0.3.36
    .tools/pyref/bin/python scripts/tokenizer-reference.py <model.gguf> > crates/model/tests/data/tokenizer_reference.json
"""
import json
import sys

from llama_cpp import Llama

TEXTS = [
    "Hello, world!",
    "The year 2025 had 365 days; pi is 3.14159 and 1,234,567 is a number.",
    "digits: 0123456789 x10 v2.0.1 #42 $19.99",
    "  leading spaces,   runs of    spaces\tand\ttabs\n\nnew lines\r\n and trailing   ",
    "Unicode: café naïve Zürich, 東京タワー, русский текст, emoji 🎉🚀, math ∑∫√",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
    "<|endoftext|>special tokens mid<|im_end|>text",
    "def f(x):\n    return x ** 2  # square\n",
    "It's they're we've I'm you'll he'd DON'T",
    "URLs https://example.com/a?b=1&c=2 and emails a.b@c.org",
    "Mixed123abc456 and 7-8-9, 10:30pm",
    "Ｆｕｌｌｗｉｄｔｈ and ligatures ﬁ ﬂ",
]


def main() -> None:
    llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
    out = []
    for t in TEXTS:
        ids = llm.tokenize(t.encode("utf-8"), add_bos=False, special=True)
        out.append([t, ids])
    # one case per line: reviewable diffs
    print("[\n" + ",\n".join(json.dumps(c, ensure_ascii=False) for c in out) + "\n]")


if __name__ == "__main__":
    main()
