#!/usr/bin/env node
// The official `openai` JavaScript client (npm `openai`, pinned in package.json) against `openledger serve`,
// unchanged: the model list and `models.retrieve`, a chat completion, `n` choices, JSON mode, a JSON schema, a streamed
// answer with log-probabilities, a tool call round trip, and a field this server does not implement (a 400 naming it). Exits
// non-zero on any mismatch.
//
//   OPENAI_API_KEY=<openledger keys create ...> node scripts/openai-client-check.mjs --base-url http://127.0.0.1:8080/v1

import assert from "node:assert/strict";
import OpenAI from "openai";

const args = process.argv.slice(2);
const at = args.indexOf("--base-url");
if (at < 0 || !args[at + 1]) {
  console.error("usage: openai-client-check.mjs --base-url URL [--model ID]");
  process.exit(2);
}
const baseURL = args[at + 1];
const m = args.indexOf("--model");
const client = new OpenAI({ baseURL, apiKey: process.env.OPENAI_API_KEY, maxRetries: 0 });

const models = [];
for await (const x of client.models.list()) models.push(x.id);
const model = m >= 0 ? args[m + 1] : models[0];
assert.ok(models.includes(model), `${model} not in ${models}`);
assert.equal((await client.models.retrieve(model)).id, model);

const messages = [{ role: "user", content: "What is the capital of France?" }];
const plain = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0, seed: 1 });
assert.ok(plain.choices[0].message.content, "empty answer");
// n choices, sampled one by one from the seed on: choice 0 is the n = 1 answer with that seed
const three = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0.9, seed: 5, n: 3 });
assert.deepEqual(three.choices.map((c) => c.index), [0, 1, 2]);
const single = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0.9, seed: 5 });
assert.equal(three.choices[0].message.content, single.choices[0].message.content);

// JSON mode
const ask = [{ role: "user", content: "Describe Paris as a JSON object with the keys name and country." }];
const jm = await client.chat.completions.create({
  model, messages: ask, max_tokens: 120, temperature: 0, response_format: { type: "json_object" },
});
assert.equal(jm.choices[0].finish_reason, "stop");
const obj = JSON.parse(jm.choices[0].message.content);
assert.equal(typeof obj, "object");
assert.ok(obj !== null && !Array.isArray(obj), jm.choices[0].message.content);

// a JSON schema (strict), checked here by hand
const schema = {
  type: "object",
  properties: {
    city: { type: "string", maxLength: 24 },
    rank: { type: "integer", minimum: 1, maximum: 10 },
    tags: { type: "array", items: { type: "string", enum: ["big", "old", "green"] }, maxItems: 3 },
  },
  required: ["city", "rank", "tags"],
  additionalProperties: false,
};
const js = await client.chat.completions.create({
  model, messages: [{ role: "user", content: "Rate Paris." }], max_tokens: 120, temperature: 0.8, seed: 5,
  response_format: { type: "json_schema", json_schema: { name: "rating", schema, strict: true } },
});
const rating = JSON.parse(js.choices[0].message.content);
assert.deepEqual(Object.keys(rating).sort(), ["city", "rank", "tags"]);
assert.ok(typeof rating.city === "string" && rating.city.length <= 24, js.choices[0].message.content);
assert.ok(Number.isInteger(rating.rank) && rating.rank >= 1 && rating.rank <= 10, js.choices[0].message.content);
assert.ok(rating.tags.length <= 3 && rating.tags.every((t) => ["big", "old", "green"].includes(t)));

// streamed, with log-probabilities: the same tokens as the plain answer
const stream = await client.chat.completions.create({
  model, messages, max_tokens: 12, temperature: 0, seed: 1, stream: true, logprobs: true, top_logprobs: 2,
});
let text = "";
const lps = [];
for await (const c of stream) {
  if (!c.choices.length) continue;
  text += c.choices[0].delta.content ?? "";
  for (const t of c.choices[0].logprobs?.content ?? []) lps.push(t);
}
assert.equal(text, plain.choices[0].message.content);
assert.equal(lps.length, plain.usage.completion_tokens);
for (const t of lps) {
  assert.ok(t.logprob <= 0 && t.top_logprobs.length === 2, JSON.stringify(t));
  assert.equal(t.top_logprobs[0].token, t.token);
}

// a tool call round trip: a required call, the tool's answer, the model's words
const weather = {
  type: "function",
  function: {
    name: "get_weather", description: "The current weather in a city",
    parameters: {
      type: "object", properties: { city: { type: "string", maxLength: 40 } }, required: ["city"],
      additionalProperties: false,
    },
  },
};
const ask2 = [{ role: "user", content: "What is the weather in Paris right now?" }];
const tc = await client.chat.completions.create({
  model, messages: ask2, tools: [weather], tool_choice: "required", parallel_tool_calls: false, max_tokens: 60,
  temperature: 0,
});
assert.equal(tc.choices[0].finish_reason, "tool_calls");
const call = tc.choices[0].message.tool_calls[0];
assert.equal(call.function.name, "get_weather");
assert.equal(typeof JSON.parse(call.function.arguments).city, "string");
const answer = await client.chat.completions.create({
  model, tools: [weather], tool_choice: "auto", max_tokens: 40, temperature: 0,
  messages: [...ask2, { role: "assistant", content: null, tool_calls: [call] },
    { role: "tool", tool_call_id: call.id, content: JSON.stringify({ temperature: 21, sky: "sunny" }) }],
});
assert.ok(answer.choices[0].message.content || answer.choices[0].message.tool_calls, JSON.stringify(answer));

// what this server does not implement is a 400 naming the field
try {
  await client.completions.create({ model, prompt: "Hi", max_tokens: 2, echo: true });
  assert.fail("echo: true was accepted");
} catch (e) {
  assert.ok(e instanceof OpenAI.BadRequestError, String(e));
  assert.match(String(e.message), /echo/);
}

console.log(`openai (npm): ${model} json mode ${JSON.stringify(obj)}, schema ${JSON.stringify(rating)}`);
