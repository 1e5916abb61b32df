// `@sd-jwt/jwt-status-list` (an independent Token Status List implementation) and `jose` read tessera's status
// list tokens the way an offline verifier would: for each access token, the `status.status_list` reference
// (`idx`, `uri`); the list fetched from its `uri` (`application/statuslist+jwt`), verified against the JWK Set
// (`typ` statuslist+jwt, `sub` the list's own URI), decompressed, and the token's bit read.
// Usage: node status_list.mjs BASE ISSUER TOKENS_FILE   (TOKENS_FILE: a JSON array of access tokens)
// Prints a JSON array of the statuses (0 valid, 1 invalid), in order. The URIs are under the public issuer; the
// path is joined to BASE, where the test serves tessera.
import { readFileSync } from "node:fs";
import { createRemoteJWKSet, jwtVerify } from "jose";
import { getListFromStatusListJWT, getStatusListFromJWT } from "@sd-jwt/jwt-status-list";

const [base, issuer, tokensFile] = process.argv.slice(2);
const tokens = JSON.parse(readFileSync(tokensFile, "utf8"));
const jwks = createRemoteJWKSet(new URL(`${base}/.well-known/jwks.json`));
const local = (uri) => new URL(base + uri.slice(issuer.replace(/\/$/, "").length));

const lists = new Map();
const statuses = [];
for (const token of tokens) {
  const { idx, uri } = getStatusListFromJWT(token);
  if (!lists.has(uri)) {
    const response = await fetch(local(uri), { headers: { accept: "application/statuslist+jwt" } });
    if (response.status !== 200) throw new Error(`${uri}: HTTP ${response.status}`);
    const type = response.headers.get("content-type");
    if (type !== "application/statuslist+jwt") throw new Error(`${uri}: content-type ${type}`);
    if (!/max-age=\d+/.test(response.headers.get("cache-control") ?? "")) throw new Error(`${uri}: no max-age`);
    const jwt = await response.text();
    const { payload } = await jwtVerify(jwt, jwks, { typ: "statuslist+jwt" });
    if (payload.sub !== uri) throw new Error(`${uri}: sub ${payload.sub}`);
    if (!(payload.ttl > 0)) throw new Error(`${uri}: ttl ${payload.ttl}`);
    lists.set(uri, getListFromStatusListJWT(jwt));
  }
  statuses.push(lists.get(uri).getStatus(idx));
}
console.log(JSON.stringify(statuses));
