#!/usr/bin/env node
// forge drives this as if it were a native solc: `--version`, then `--standard-json` on stdin.
// The wasm build from npm `solc` does the compiling; nothing is downloaded.
"use strict";
const solc = require("solc");

const args = process.argv.slice(2);
if (args.includes("--version")) {
  // forge parses the `Version:` line; the wasm build reports e.g. 0.8.30+commit.73712a01.Emscripten.clang
  const v = solc.version().replace(/\.Emscripten\.clang$/, ".Linux.g++");
  process.stdout.write(`solc, the solidity compiler commandline interface\nVersion: ${v}\n`);
  process.exit(0);
}
if (!args.includes("--standard-json")) {
  process.stderr.write("solc-shim: only --version and --standard-json are supported\n");
  process.exit(2);
}
const chunks = [];
process.stdin.on("data", (c) => chunks.push(c));
process.stdin.on("end", () => {
  const out = solc.compile(Buffer.concat(chunks).toString("utf8"));
  // write() then exit on drain, so large outputs are never truncated by an early exit
  if (process.stdout.write(out)) process.exitCode = 0;
  else process.stdout.once("drain", () => { process.exitCode = 0; });
});
