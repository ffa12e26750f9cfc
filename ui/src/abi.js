// The slice of the Solidity ABI the UI needs: calldata for the suite's functions (static words, strings,
// bytes and one-level arrays; no tuples) and the names of custom errors in revert data.
import { keccakHex } from "./keccak.js";

const word = (hex) => hex.padStart(64, "0");

function uintWord(type, v) {
  const bits = type === "uint" ? 256 : Number(type.slice(4));
  let n;
  try {
    n = BigInt(v);
  } catch {
    throw new Error(`${type}: not an integer: ${v}`);
  }
  if (n < 0n || n >= 1n << BigInt(bits)) throw new Error(`${type}: out of range: ${v}`);
  return word(n.toString(16));
}

function staticWord(type, v) {
  if (type === "address") {
    if (typeof v !== "string" || !/^0x[0-9a-fA-F]{40}$/.test(v)) throw new Error(`address: not an address: ${v}`);
    return word(v.slice(2).toLowerCase());
  }
  if (type === "bool") return word(v ? "1" : "0");
  if (type === "bytes32") {
    if (typeof v !== "string" || !/^0x[0-9a-fA-F]{64}$/.test(v)) throw new Error(`bytes32: not 32 bytes of hex: ${v}`);
    return v.slice(2).toLowerCase();
  }
  if (/^uint\d*$/.test(type)) return uintWord(type, v);
  throw new Error(`unsupported ABI type ${type}`);
}

const isDynamic = (t) => t === "string" || t === "bytes" || t.endsWith("[]");

function bytesTail(hexBody) {
  const len = hexBody.length / 2;
  const padded = hexBody.padEnd(Math.ceil(hexBody.length / 64) * 64, "0");
  return word(len.toString(16)) + padded;
}

function dynamicTail(type, v) {
  if (type === "string") {
    const bytes = new TextEncoder().encode(v);
    return bytesTail(Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(""));
  }
  if (type === "bytes") {
    if (!/^0x([0-9a-fA-F]{2})*$/.test(v)) throw new Error(`bytes: not hex: ${v}`);
    return bytesTail(v.slice(2).toLowerCase());
  }
  const inner = type.slice(0, -2);
  if (!Array.isArray(v)) throw new Error(`${type}: not an array`);
  return word(v.length.toString(16)) + encode(v.map(() => inner), v);
}

/** ABI-encodes values of the given types (hex without 0x). */
export function encode(types, values) {
  if (types.length !== values.length) throw new Error(`expected ${types.length} values, got ${values.length}`);
  let head = "";
  let tail = "";
  const headSize = types.length * 32;
  types.forEach((t, i) => {
    if (isDynamic(t)) {
      head += word((headSize + tail.length / 2).toString(16));
      tail += dynamicTail(t, values[i]);
    } else {
      head += staticWord(t, values[i]);
    }
  });
  return head + tail;
}

/** The types of a signature such as `claim(address,uint256,bytes32[])`. */
export function paramTypes(signature) {
  const m = /^[A-Za-z_][A-Za-z0-9_]*\(([^()]*)\)$/.exec(signature);
  if (!m) throw new Error(`bad signature ${signature}`);
  return m[1] === "" ? [] : m[1].split(",");
}

export const selector = (signature) => keccakHex(signature).slice(0, 10);

/** Calldata (0x-hex) calling `signature` with `args`. */
export const calldata = (signature, args = []) => selector(signature) + encode(paramTypes(signature), args);

/** The n-th 32-byte word of 0x-hex return data as a BigInt. */
export function wordAt(hex, n = 0) {
  const body = hex.startsWith("0x") ? hex.slice(2) : hex;
  const w = body.slice(64 * n, 64 * n + 64);
  if (w.length !== 64) throw new Error("short return data");
  return BigInt("0x" + w);
}

/** Signatures of every custom error in the given ABIs (arrays of JSON ABI entries), by selector. */
export function errorTable(abis) {
  const table = new Map();
  for (const abi of abis) {
    for (const e of abi) {
      if (e.type !== "error") continue;
      const sig = `${e.name}(${e.inputs.map((i) => i.type).join(",")})`;
      table.set(selector(sig), { sig, inputs: e.inputs });
    }
  }
  return table;
}

/** Names revert data: `ERC20InsufficientBalance(sender=0x.., balance=0, needed=10)`; null if unknown. */
export function describeRevert(data, table) {
  if (typeof data !== "string" || data.length < 10) return null;
  if (data.startsWith("0x08c379a0")) {
    // Error(string)
    const body = data.slice(10);
    const len = Number(BigInt("0x" + body.slice(64, 128)));
    const bytes = body.slice(128, 128 + len * 2).match(/../g) ?? [];
    return new TextDecoder().decode(new Uint8Array(bytes.map((b) => parseInt(b, 16))));
  }
  const hit = table.get(data.slice(0, 10).toLowerCase());
  if (!hit) return null;
  const body = data.slice(10);
  const args = hit.inputs.map((inp, i) => {
    const w = body.slice(64 * i, 64 * i + 64);
    if (w.length !== 64) return `${inp.name}=?`;
    let v;
    if (inp.type === "address") v = "0x" + w.slice(24);
    else if (inp.type === "bool") v = BigInt("0x" + w) !== 0n ? "true" : "false";
    else if (/^u?int\d*$/.test(inp.type)) v = BigInt("0x" + w).toString();
    else v = "0x" + w;
    return `${inp.name || "arg" + i}=${v}`;
  });
  return `${hit.sig.split("(")[0]}(${args.join(", ")})`;
}
