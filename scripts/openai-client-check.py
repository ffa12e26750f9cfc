#!/usr/bin/env python3
"""The official `openai` Python client against `openledger serve`, unchanged: list the models, run a chat
completion and a streamed one, a text completion, and a batch (file upload, batch, output download).
Exits non-zero on any mismatch.

    OPENAI_API_KEY=<openledger keys create ...> .tools/openai/bin/python scripts/openai-client-check.py \
        --base-url http://127.0.0.1:8080/v1
"""
import io
import json
import os
import argparse
import sys
import time

import openai


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", help="default: the first model /v1/models lists")
    args = ap.parse_args()
    # a daemon API key: the client always sends one, and the daemon checks any key it is sent
    client = openai.OpenAI(base_url=args.base_url, api_key=os.environ["OPENAI_API_KEY"], max_retries=0)
    models = [m.id for m in client.models.list()]
    assert models, "no models listed"
    model = args.model or models[0]
    assert model in models, f"{model} not in {models}"
    assert client.models.retrieve(model).id == model
    # a made-up key (what many examples pass to local servers) is refused, saying what to do instead
    try:
        openai.OpenAI(base_url=args.base_url, api_key="sk-dummy", max_retries=0).chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
        raise AssertionError("a made-up key was accepted")
    except openai.AuthenticationError as e:
        # the problem document (application/problem+json, which the client does not parse) says what to do
        assert "openledger keys create" in e.response.text, e.response.text
    try:
        client.models.retrieve("ft-999999")
        raise AssertionError("an unknown model was retrieved")
    except openai.NotFoundError:
        pass

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0, seed=1)
    text = r.choices[0].message.content
    assert text, "empty answer"
    assert r.choices[0].finish_reason in ("stop", "length"), r.choices[0].finish_reason
    assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 5, r.usage
    assert r.id.startswith("inf-"), r.id

    chunks = list(
        client.chat.completions.create(
            model=model, messages=messages, max_tokens=12, temperature=0, seed=1, stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = [c.usage for c in chunks if c.usage]
    # greedy: the stream says exactly what the plain call said
    assert streamed == text, (streamed, text)
    assert finishes == [r.choices[0].finish_reason], finishes
    assert usage and usage[0].completion_tokens == r.usage.completion_tokens, usage

    c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert c.choices[0].text, c

    try:
        client.chat.completions.create(model="ft-999999", messages=messages, max_tokens=4)
        raise AssertionError("an unknown model was served")
    except openai.NotFoundError:
        pass
    try:
        client.chat.completions.create(model=model, messages=messages, max_tokens=4, temperature=7)
        raise AssertionError("temperature 7 was accepted")
    except openai.BadRequestError:
        pass
    bad = openai.OpenAI(base_url=args.base_url, api_key="not-a-key", max_retries=0)
    try:
        bad.chat.completions.create(model=model, messages=messages, max_tokens=4)
        raise AssertionError("a made-up API key was accepted")
    except openai.AuthenticationError:
        pass

    # the Batch API: the same request as a batch line gives the same greedy answer
    lines = [
        {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": model, "messages": messages, "max_tokens": 12, "temperature": 0, "seed": 1}}
        for i in range(3)
    ]
    data = "".join(json.dumps(l) + "\n" for l in lines).encode()
    f = client.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.time() + 300
    while b.status not in ("completed", "failed", "cancelled", "expired"):
        assert time.time() < deadline, f"batch {b.id} still {b.status}"
        time.sleep(0.5)
        b = client.batches.retrieve(b.id)
    assert b.status == "completed", b
    assert b.request_counts.completed == 3 and b.request_counts.failed == 0, b.request_counts
    out = [json.loads(l) for l in client.files.content(b.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == ["q0", "q1", "q2"], out
    answers = {o["response"]["body"]["choices"][0]["message"]["content"] for o in out}
    assert answers == {text}, (answers, text)
    assert b.id in [x.id for x in client.batches.list()]
    print(f"openai {openai.__version__}: {model} answered {text!r} (streamed and batched identically)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
