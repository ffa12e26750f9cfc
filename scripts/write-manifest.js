#!/usr/bin/env node
// Turns forge's broadcast record of contracts/script/Deploy.s.sol into deployments/<chainId>.json: chain id,
// each contract's address, deployment block and transaction, and the roles as wired by the deployment.
// Addresses are lowercase hex throughout.
// usage: write-manifest.js <run-latest.json> <config.json> <deployer> <out.json>
"use strict";
const fs = require("fs");

const [runFile, configFile, deployer, outFile] = process.argv.slice(2);
if (!outFile) {
  console.error("usage: write-manifest.js <run-latest.json> <config.json> <deployer> <out.json>");
  process.exit(2);
}
const run = JSON.parse(fs.readFileSync(runFile, "utf8"));
const config = JSON.parse(fs.readFileSync(configFile, "utf8"));
const ZERO = "0x0000000000000000000000000000000000000000";

const blockOf = new Map(run.receipts.map((r) => [r.transactionHash.toLowerCase(), r]));
const contracts = {};
for (const tx of run.transactions) {
  if (tx.transactionType !== "CREATE") continue;
  const receipt = blockOf.get(tx.hash.toLowerCase());
  if (!receipt || receipt.status !== "0x1") {
    console.error(`write-manifest: no successful receipt for ${tx.contractName} (${tx.hash})`);
    process.exit(1);
  }
  contracts[tx.contractName] = {
    address: tx.contractAddress, // lowercase hex, as forge records it
    block: Number(BigInt(receipt.blockNumber)),
    txHash: tx.hash,
  };
}
const expected = ["TimelockController", "OpenToken", "OpenGovernor", "Registry", "RewardDistributor", "FeeRouter", "Staking"];
const missing = expected.filter((n) => !contracts[n]);
if (missing.length) {
  console.error(`write-manifest: the broadcast lacks ${missing.join(", ")}`);
  process.exit(1);
}
const timelock = contracts.TimelockController.address;
const nonZero = (a) => a && a.toLowerCase() !== ZERO;
const lower = (list) => list.filter(nonZero).map((a) => a.toLowerCase());
const manifest = {
  chainId: Number(run.chain),
  deployer: deployer.toLowerCase(),
  config: configFile.split("/").pop(),
  startBlock: Math.min(...Object.values(contracts).map((c) => c.block)),
  contracts,
  roles: {
    admin: timelock,
    treasury: timelock,
    governor: contracts.OpenGovernor.address,
    settlers: lower([config.settler]),
    revokers: lower([timelock, config.guardian]),
    slashers: lower([timelock, config.slasher]),
  },
};
fs.writeFileSync(outFile, JSON.stringify(manifest, null, 2) + "\n");
console.log(outFile);
