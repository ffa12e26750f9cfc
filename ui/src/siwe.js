// EIP-4361 (Sign-In with Ethereum) messages exactly as the daemon's /api/auth/siwe parses them.
import { checksumAddress } from "./keccak.js";

/**
 * @param {{domain: string, address: string, chainId: number, nonce: string, issuedAt?: Date, uri?: string,
 *          statement?: string}} p
 */
export function siweMessage(p) {
  const issued = (p.issuedAt ?? new Date()).toISOString().replace(/\.\d{3}Z$/, "Z");
  return [
    `${p.domain} wants you to sign in with your Ethereum account:`,
    checksumAddress(p.address),
    "",
    p.statement ?? "Sign in to OpenLedger",
    "",
    `URI: ${p.uri ?? `http://${p.domain}`}`,
    "Version: 1",
    `Chain ID: ${p.chainId}`,
    `Nonce: ${p.nonce}`,
    `Issued At: ${issued}`,
  ].join("\n");
}

/** `personal_sign` takes the message as 0x-hex of its UTF-8 bytes. */
export const utf8Hex = (s) =>
  "0x" + Array.from(new TextEncoder().encode(s), (b) => b.toString(16).padStart(2, "0")).join("");
