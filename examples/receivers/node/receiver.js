// Receives kinfer's callbacks and verifies them before trusting them.
//
//   WEBHOOK_SECRET=whsec_...        verify v1 signatures with the model's shared key
//   WEBHOOK_PUBLIC_KEYS="whpk_..."  or v1a signatures with its public keys (GET /v1/webhook-keys)
//   PORT=8001                       where to listen, on 127.0.0.1
//
// It prints each verified callback as a line of JSON and answers 204; a
// callback that does not verify gets 401 and kinfer tries again later.
const http = require("node:http");
const crypto = require("node:crypto");
const { Webhook, WebhookVerificationError } = require("standardwebhooks");

const toleranceSeconds = 5 * 60;

// verifyEd25519 checks v1a signatures: any entry that one of the trusted
// public keys verifies over "{webhook-id}.{webhook-timestamp}.{body}".
function verifyEd25519(publicKeys, body, headers) {
  const id = headers["webhook-id"];
  const timestamp = headers["webhook-timestamp"];
  const signatures = headers["webhook-signature"];
  if (!id || !timestamp || !signatures) {
    throw new WebhookVerificationError("Missing required headers");
  }
  if (!(Math.abs(Date.now() / 1000 - Number(timestamp)) <= toleranceSeconds)) {
    throw new WebhookVerificationError("Timestamp outside the tolerance");
  }
  const signed = Buffer.from(`${id}.${timestamp}.${body}`);
  for (const entry of signatures.split(" ")) {
    const [version, signature] = entry.split(",");
    if (version !== "v1a" || !signature) continue;
    const sig = Buffer.from(signature, "base64");
    if (publicKeys.some((key) => crypto.verify(null, signed, key, sig))) {
      return JSON.parse(body);
    }
  }
  throw new WebhookVerificationError("No matching signature found");
}

function ed25519PublicKey(whpk) {
  const raw = Buffer.from(whpk.replace(/^whpk_/, ""), "base64");
  return crypto.createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: raw.toString("base64url") }, format: "jwk" });
}

let verify;
if (process.env.WEBHOOK_PUBLIC_KEYS) {
  const keys = process.env.WEBHOOK_PUBLIC_KEYS.split(/\s+/).filter(Boolean).map(ed25519PublicKey);
  verify = (body, headers) => verifyEd25519(keys, body, headers);
} else {
  const webhook = new Webhook(process.env.WEBHOOK_SECRET);
  verify = (body, headers) => webhook.verify(body, headers);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    // Verify the body exactly as it arrived: parsing and re-encoding it
    // first would change the bytes that were signed.
    const body = Buffer.concat(chunks).toString("utf8");
    let event;
    try {
      event = verify(body, req.headers);
    } catch (err) {
      console.error(`refused ${req.headers["webhook-id"]}: ${err.message}`);
      res.writeHead(401).end();
      return;
    }
    // webhook-id stays the same across retries: keep it to act on each callback once.
    console.log(JSON.stringify({ webhookID: req.headers["webhook-id"], event }));
    res.writeHead(204).end();
  });
});

server.listen(Number(process.env.PORT ?? 8001), "127.0.0.1", () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});
