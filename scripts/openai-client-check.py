#!/usr/bin/env python3
"""The official `openai` Python client against `openledger serve`, unchanged: list the models, run a chat
completion and a streamed one, `n` choices (plain and streamed), a text completion, JSON mode, a JSON schema (a pydantic model through
`chat.completions.parse`), log-probabilities (plain and streamed), `logit_bias`, the fields this server
refuses (each a 400 naming it), and a batch (file upload, batch, output download). Exits non-zero on any
mismatch.

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
import pydantic


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

    choices(client, model, messages)
    structured(client, model)
    tool_calls(client, model)
    logprobs(client, model, messages, r)
    refused(client, model, messages)

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


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=24)
    country: str = pydantic.Field(max_length=24)
    population_millions: int = pydantic.Field(ge=0, le=100)
    capital: bool


def structured(client, model):
    """JSON mode and a JSON schema: the output parses (and validates), whatever the small model would say."""
    ask = [{"role": "user", "content": "Describe Paris as a JSON object with the keys name and country."}]
    r = client.chat.completions.create(
        model=model, messages=ask, max_tokens=120, temperature=0, response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop", r.choices[0]
    obj = json.loads(r.choices[0].message.content)
    assert isinstance(obj, dict), obj
    # a pydantic model: the client sends it as a strict json_schema and validates the answer itself
    p = client.chat.completions.parse(
        model=model, messages=[{"role": "user", "content": "Tell me about Paris."}], response_format=City,
        max_tokens=120, temperature=0.7, seed=3)
    city = p.choices[0].message.parsed
    assert isinstance(city, City), p.choices[0].message
    # streamed, the chunks join into the same valid JSON
    chunks = client.chat.completions.create(
        model=model, messages=ask, max_tokens=120, temperature=0, response_format={"type": "json_object"},
        stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == r.choices[0].message.content, (streamed, r.choices[0].message.content)
    # a schema feature the grammar engine does not implement is a 400 naming it, before anything is paid
    try:
        client.chat.completions.create(
            model=model, messages=ask, max_tokens=8, response_format={
                "type": "json_schema", "json_schema": {"name": "x", "schema": {
                    "type": "object", "properties": {"v": {"type": "array", "uniqueItems": True}}}}})
        raise AssertionError("a uniqueItems schema was accepted")
    except openai.BadRequestError as e:
        assert "uniqueItems" in e.response.text, e.response.text
    print(f"structured: json mode {obj}, schema {city.model_dump()}")


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}, "strict": True}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The local time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 40}},
                   "required": ["zone"], "additionalProperties": False}}}


def tool_calls(client, model):
    """A tool call round trip: a required call comes back as OpenAI's tool_calls with arguments valid against
    the function's schema, streamed as OpenAI streams calls; the tool's answer goes back as a role: tool
    message and the model answers in text; a named choice calls that function."""
    ask = [{"role": "user", "content": "What is the weather in Paris right now?"}]
    # one call (parallel_tool_calls false): a 135M model, free to go on, calls again and again
    r = client.chat.completions.create(model=model, messages=ask, tools=[WEATHER, TIME], tool_choice="required",
                                       parallel_tool_calls=False, max_tokens=80, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_"), call
    assert call.function.name in ("get_weather", "get_time"), call
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit"), args
    named = client.chat.completions.create(
        model=model, messages=ask, tools=[WEATHER, TIME], max_tokens=80, temperature=0, parallel_tool_calls=False,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    wcall = named.choices[0].message.tool_calls[0]
    assert wcall.function.name == "get_weather", wcall
    wargs = json.loads(wcall.function.arguments)
    assert isinstance(wargs["city"], str) and wargs["unit"] in ("celsius", "fahrenheit"), wargs
    # streamed: the call's id and name first, then its arguments; they join into the same call
    chunks = list(client.chat.completions.create(
        model=model, messages=ask, tools=[WEATHER, TIME], max_tokens=80, temperature=0, stream=True,
        parallel_tool_calls=False,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    name, streamed_args, finish = "", "", None
    for c in chunks:
        if not c.choices:
            continue
        for d in c.choices[0].delta.tool_calls or []:
            name += (d.function.name or "") if d.function else ""
            streamed_args += (d.function.arguments or "") if d.function else ""
        finish = c.choices[0].finish_reason or finish
    assert (name, json.loads(streamed_args), finish) == ("get_weather", wargs, "tool_calls"), (name, streamed_args)
    # the tool's answer goes back, and the model answers in words
    back = ask + [
        {"role": "assistant", "content": None, "tool_calls": [wcall.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": wcall.id, "content": json.dumps({"temperature": 21, "sky": "sunny"})},
    ]
    final = client.chat.completions.create(model=model, messages=back, tools=[WEATHER, TIME], max_tokens=40,
                                           temperature=0, tool_choice="none")
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls, final.choices[0]
    # a named function that is not among the tools: 400 naming it
    try:
        client.chat.completions.create(model=model, messages=ask, tools=[WEATHER], max_tokens=8,
                                       tool_choice={"type": "function", "function": {"name": "launch"}})
        raise AssertionError("an unknown tool_choice was accepted")
    except openai.BadRequestError as e:
        assert "launch" in e.response.text, e.response.text
    print(f"tools: {call.function.name}({call.function.arguments}), then {final.choices[0].message.content!r}")


def logprobs(client, model, messages, plain):
    """Log-probabilities as OpenAI gives them: per token, with alternatives; the stream's equal the plain
    answer's; greedy tokens are their own most likely alternative; logit_bias moves the choice."""
    r = client.chat.completions.create(
        model=model, messages=messages, max_tokens=12, temperature=0, seed=1, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert r.choices[0].message.content == plain.choices[0].message.content
    assert len(content) == r.usage.completion_tokens, (len(content), r.usage)
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3, t
        assert t.top_logprobs[0].token == t.token and abs(t.top_logprobs[0].logprob - t.logprob) < 1e-4, t
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token or not t.token.isprintable(), t
    chunks = list(client.chat.completions.create(
        model=model, messages=messages, max_tokens=12, temperature=0, seed=1, logprobs=True, top_logprobs=3,
        stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == [(t.token, round(t.logprob, 4)) for t in content]
    c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4, temperature=0,
                                  logprobs=2)
    lp = c.choices[0].logprobs
    assert "".join(lp.tokens) == c.choices[0].text, (lp.tokens, c.choices[0].text)
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs) == len(lp.text_offset)
    assert all(len(alt) == 2 for alt in lp.top_logprobs), lp.top_logprobs
    # logit_bias by token id: +100 forces a token whatever the model prefers, a different id another token
    forced = []
    for tid in ("1000", "2000"):
        f = client.chat.completions.create(
            model=model, messages=messages, max_tokens=2, temperature=0, logprobs=True,
            logit_bias={tid: 100}, user="check-user")
        toks = [t.token for t in f.choices[0].logprobs.content]
        assert len(toks) == 2 and toks[0] == toks[1], toks
        forced.append(toks[0])
    assert forced[0] != forced[1] and content[0].token not in forced, (forced, content[0].token)


def choices(client, model, messages):
    """`n` choices: each sampled on its own (from the seed and the seeds after it), usage counting them all;
    streamed, the same choices by their index; a JSON schema holds for every choice."""
    r = client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, temperature=0.9, seed=3, n=3, logprobs=True)
    assert [c.index for c in r.choices] == [0, 1, 2], r
    assert r.usage.completion_tokens == sum(len(c.logprobs.content) for c in r.choices), r.usage
    one = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0.9, seed=3)
    assert r.choices[0].message.content == one.choices[0].message.content, (r, one)
    streamed = ["", "", ""]
    finishes = [None, None, None]
    for c in client.chat.completions.create(
            model=model, messages=messages, max_tokens=8, temperature=0.9, seed=3, n=3, stream=True):
        for ch in c.choices:
            streamed[ch.index] += ch.delta.content or ""
            finishes[ch.index] = ch.finish_reason or finishes[ch.index]
    assert streamed == [c.message.content for c in r.choices], (streamed, r)
    assert finishes == [c.finish_reason for c in r.choices], finishes
    sky = {"type": "object", "properties": {"sky": {"enum": ["sunny", "cloudy", "rainy"]}},
           "required": ["sky"], "additionalProperties": False}
    js = client.chat.completions.create(
        model=model, max_tokens=40, temperature=0.9, n=4,
        response_format={"type": "json_schema", "json_schema": {"name": "sky", "schema": sky, "strict": True}},
        messages=[{"role": "user", "content": "How is the sky in Paris?"}])
    assert len(js.choices) == 4, js
    for c in js.choices:
        assert json.loads(c.message.content)["sky"] in ("sunny", "cloudy", "rainy"), c.message.content


def refused(client, model, messages):
    """What this server does not implement is a 400 that names the field, never silently ignored."""
    cases = [
        ("echo", lambda: client.completions.create(model=model, prompt="Hi", max_tokens=2, echo=True)),
        ("best_of", lambda: client.completions.create(model=model, prompt="Hi", max_tokens=2, best_of=2)),
        ("made_up_field", lambda: client.chat.completions.create(
            model=model, messages=messages, max_tokens=2, extra_body={"made_up_field": 1})),
        ("n must be between", lambda: client.chat.completions.create(
            model=model, messages=messages, max_tokens=2, n=17)),
        ("top_logprobs", lambda: client.chat.completions.create(
            model=model, messages=messages, max_tokens=2, top_logprobs=2)),
        ("logit_bias", lambda: client.chat.completions.create(
            model=model, messages=messages, max_tokens=2, logit_bias={"99999999": 5})),
    ]
    for field, call in cases:
        try:
            call()
            raise AssertionError(f"{field}: accepted")
        except openai.BadRequestError as e:
            assert field in e.response.text, (field, e.response.text)
    # the inert values of unimplemented fields pass
    client.completions.create(model=model, prompt="Hi", max_tokens=2, echo=False, best_of=1)


if __name__ == "__main__":
    sys.exit(main())
