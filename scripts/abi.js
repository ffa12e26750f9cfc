#!/usr/bin/env node
// Exports the ABIs of the deployed contracts from forge's build output into contracts/abi/, where the Rust
// crates read them (alloy `sol!`) without node or forge. `--check` fails when the committed ABIs have drifted
// from the sources. Run `forge build` first (scripts/abi.sh does).
"use strict";
const fs = require("fs");
const path = require("path");

const root = path.resolve(__dirname, "..");
const CONTRACTS = [
  ["OpenToken.sol", "OpenToken"],
  ["OpenGovernor.sol", "OpenGovernor"],
  ["TimelockController.sol", "TimelockController"],
  ["Registry.sol", "Registry"],
  ["Staking.sol", "Staking"],
  ["FeeRouter.sol", "FeeRouter"],
  ["RewardDistributor.sol", "RewardDistributor"],
];

const check = process.argv.includes("--check");
const outDir = path.join(root, "contracts", "abi");
fs.mkdirSync(outDir, { recursive: true });
let drift = [];
for (const [file, name] of CONTRACTS) {
  const artifact = path.join(root, "contracts", "out", file, `${name}.json`);
  if (!fs.existsSync(artifact)) {
    console.error(`abi: ${artifact} missing: run forge build first`);
    process.exit(2);
  }
  const abi = JSON.parse(fs.readFileSync(artifact, "utf8")).abi;
  const text = JSON.stringify(abi, null, 2) + "\n";
  const target = path.join(outDir, `${name}.json`);
  const current = fs.existsSync(target) ? fs.readFileSync(target, "utf8") : null;
  if (current === text) continue;
  if (check) drift.push(name);
  else {
    fs.writeFileSync(target, text);
    console.error(`abi: wrote contracts/abi/${name}.json`);
  }
}
if (drift.length) {
  console.error(`abi: committed ABIs differ from the sources: ${drift.join(", ")}. Run scripts/abi.sh and commit.`);
  process.exit(1);
}
if (check) console.error("abi: committed ABIs match the sources");
