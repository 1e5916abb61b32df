// node `jose` (a JOSE implementation nobody here wrote) verifies a tessera access token the way a downstream
// API would: it reads the RFC 8414 metadata, fetches the JWK Set from its `jwks_uri`, and checks the
// signature, `typ` (RFC 9068 at+jwt), issuer, audience and expiry. It also refuses a tampered token and one
// for another audience. Usage: node verify.mjs BASE ISSUER AUDIENCE TOKEN_FILE
// The metadata's URLs are under the public issuer; the path is joined to BASE, where the test serves tessera.
import { readFileSync } from "node:fs";
import { createRemoteJWKSet, jwtVerify } from "jose";

const [base, issuer, audience, tokenFile] = process.argv.slice(2);
const token = readFileSync(tokenFile, "utf8").trim();
let passed = 0;
let failed = 0;
const check = (what, ok, detail = "") => {
  if (ok) passed++;
  else {
    failed++;
    console.error(`FAIL ${what}: ${detail}`);
  }
};

const metadata = await (await fetch(`${base}/.well-known/oauth-authorization-server`)).json();
check("metadata issuer", metadata.issuer === issuer, JSON.stringify(metadata));
const jwksUrl = new URL(base + metadata.jwks_uri.slice(issuer.replace(/\/$/, "").length));
const jwks = createRemoteJWKSet(jwksUrl);

const { payload, protectedHeader } = await jwtVerify(token, jwks, { issuer, audience, typ: "at+jwt" });
check("verified: audience", payload.aud === audience, JSON.stringify(payload));
check("verified: alg", ["EdDSA", "ES256"].includes(protectedHeader.alg), JSON.stringify(protectedHeader));
check("verified: task", typeof payload.task_id === "string" && payload.task_id.length > 0, JSON.stringify(payload));

for (const [what, candidate, options] of [
  ["another audience", token, { issuer, audience: "https://other.example" }],
  ["a tampered payload", tamper(token), { issuer, audience }],
]) {
  try {
    await jwtVerify(candidate, jwks, options);
    check(`refuses ${what}`, false, "verified");
  } catch {
    check(`refuses ${what}`, true);
  }
}

function tamper(jwt) {
  const [h, p, s] = jwt.split(".");
  const claims = JSON.parse(Buffer.from(p, "base64url").toString());
  claims.scope = `${claims.scope} crm:export`;
  return [h, Buffer.from(JSON.stringify(claims)).toString("base64url"), s].join(".");
}

console.log(`node jose interop: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
