#!/usr/bin/env node
// The reference side of the settlement tree's cross-check (crates/settlement/tests/openzeppelin.rs):
// reads [{ "values": [[address, amount], ...], "probe": [i, ...] }, ...] (a JSON file named on the command
// line), builds each with @openzeppelin/merkle-tree, prints [{ "root", "proofs": [[...], ...] }, ...].
"use strict";
const fs = require("fs");
const { StandardMerkleTree } = require("@openzeppelin/merkle-tree");

const cases = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const out = cases.map(({ values, probe }) => {
  const tree = StandardMerkleTree.of(values, ["address", "uint256"]);
  return { root: tree.root, proofs: probe.map((i) => tree.getProof(i)) };
});
process.stdout.write(JSON.stringify(out));
