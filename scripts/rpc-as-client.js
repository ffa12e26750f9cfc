#!/usr/bin/env node
// A JSON-RPC node that forwards every call to UPSTREAM but names itself CLIENT in web3_clientVersion: a
// devnet dressed as a public chain, so scripts/test.sh can show scripts/deploy.sh refusing devnet keys and
// configs outside a devnet. Usage: node scripts/rpc-as-client.js PORT UPSTREAM CLIENT
"use strict";
const http = require("node:http");

const [port, upstream, client] = process.argv.slice(2);
if (!port || !upstream || !client) {
  console.error("usage: node scripts/rpc-as-client.js PORT UPSTREAM CLIENT");
  process.exit(2);
}

const answer = (call) =>
  call.method === "web3_clientVersion"
    ? Promise.resolve({ jsonrpc: "2.0", id: call.id, result: client })
    : fetch(upstream, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(call),
      }).then((r) => r.json());

http
  .createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    try {
      const body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      const out = Array.isArray(body) ? await Promise.all(body.map(answer)) : await answer(body);
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(out));
    } catch (e) {
      res.writeHead(400, { "content-type": "application/json" });
      res.end(JSON.stringify({ jsonrpc: "2.0", id: null, error: { code: -32700, message: String(e) } }));
    }
  })
  .listen(Number(port), "127.0.0.1");
