// DPoP (RFC 9449) proofs made by node `jose`, a JOSE implementation nobody here wrote, with keys it generates
// (ES256, EdDSA, PS256): tessera's token endpoint binds the issued token to the key (`cnf.jkt` equal to jose's
// own RFC 7638 thumbprint, `token_type: DPoP`), and its forward-auth accepts the token with a proof for that
// request and refuses the replayed proof, a proof for another URL and a Bearer presentation.
// Usage: node dpop.mjs BASE ISSUER AUDIENCE ASSERTION_FILE
import { readFileSync } from "node:fs";
import { createHash, randomUUID } from "node:crypto";
import { SignJWT, calculateJwkThumbprint, exportJWK, generateKeyPair } from "jose";

const [base, issuer, audience, assertionFile] = process.argv.slice(2);
const assertion = readFileSync(assertionFile, "utf8").trim();
const tokenEndpoint = `${issuer.replace(/\/$/, "")}/oauth2/token`;
const apiUrl = "https://api.example/crm/contacts";
let passed = 0;
let failed = 0;
const check = (what, ok, detail = "") => {
  if (ok) passed++;
  else {
    failed++;
    console.error(`FAIL ${what}: ${detail}`);
  }
};

async function proof(alg, privateKey, jwk, htm, htu, accessToken) {
  const claims = { htm, htu, jti: randomUUID() };
  if (accessToken) claims.ath = createHash("sha256").update(accessToken).digest("base64url");
  return new SignJWT(claims).setProtectedHeader({ alg, typ: "dpop+jwt", jwk }).setIssuedAt().sign(privateKey);
}

async function forwardAuth(authorization, dpop) {
  const response = await fetch(`${base}/forward-auth`, {
    headers: {
      authorization,
      dpop,
      "x-tessera-audience": audience,
      "x-tessera-scope": "crm:read",
      "x-original-method": "GET",
      "x-forwarded-proto": "https",
      "x-forwarded-host": "api.example",
      "x-original-uri": "/crm/contacts?page=1",
    },
  });
  return { status: response.status, challenge: response.headers.get("www-authenticate") ?? "" };
}

for (const [alg, options] of [["ES256", {}], ["EdDSA", {}], ["PS256", { modulusLength: 2048 }]]) {
  const { publicKey, privateKey } = await generateKeyPair(alg, options);
  const jwk = await exportJWK(publicKey);
  const thumbprint = await calculateJwkThumbprint(jwk, "sha256");

  const form = new URLSearchParams({
    grant_type: "urn:ietf:params:oauth:grant-type:token-exchange",
    subject_token: assertion,
    subject_token_type: "urn:ietf:params:oauth:token-type:jwt",
    audience,
    scope: "crm:read",
    task_id: `node-dpop-${alg}`,
  });
  const response = await fetch(`${base}/oauth2/token`, {
    method: "POST",
    headers: { dpop: await proof(alg, privateKey, jwk, "POST", tokenEndpoint) },
    body: form,
  });
  const body = await response.json();
  check(`${alg}: exchange`, response.status === 200, JSON.stringify(body));
  check(`${alg}: token_type`, body.token_type === "DPoP", JSON.stringify(body));
  const token = body.access_token ?? "";
  const payload = JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString() || "{}");
  check(`${alg}: cnf.jkt is jose's thumbprint`, payload.cnf?.jkt === thumbprint, JSON.stringify(payload.cnf));

  const good = await proof(alg, privateKey, jwk, "GET", apiUrl, token);
  const ok = await forwardAuth(`DPoP ${token}`, good);
  check(`${alg}: forward-auth accepts`, ok.status === 200, JSON.stringify(ok));
  const replay = await forwardAuth(`DPoP ${token}`, good);
  check(`${alg}: a replay is refused`, replay.status === 401 && replay.challenge.includes("invalid_dpop_proof"), JSON.stringify(replay));
  const elsewhere = await forwardAuth(`DPoP ${token}`, await proof(alg, privateKey, jwk, "GET", "https://api.example/crm/export", token));
  check(`${alg}: another URL is refused`, elsewhere.status === 401, JSON.stringify(elsewhere));
  const bearer = await forwardAuth(`Bearer ${token}`, await proof(alg, privateKey, jwk, "GET", apiUrl, token));
  check(`${alg}: Bearer is refused`, bearer.status === 401, JSON.stringify(bearer));
}

console.log(`node jose dpop interop: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
