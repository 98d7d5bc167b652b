// A real, certified OpenID provider (panva/oidc-provider) for mailconnect's
// peer tests, on a loopback port. TEST ONLY: it logs its one user in without
// a password and consents on her behalf.
//
// - confidential client for mailconnect (client_secret_basic), PKCE required,
//   refresh tokens rotated (a reused one revokes the whole grant), short
//   access-token lifetime;
// - the same for mailconnect with private_key_jwt: its public keys (PEM
//   files) are registered as a JWKS, each with kid = its RFC 7638 thumbprint;
// - confidential client for Dovecot, which introspects access tokens
//   (`/token/introspection`); the introspection answer carries the user's
//   `email` (extraTokenClaims), which Dovecot reads as the username;
// - revocation at `/token/revocation` (revoking a refresh token revokes its
//   grant);
// - the interaction (login + consent) happens without forms: GET
//   /interaction/:uid logs in IDP_USER and grants what was asked.
//
// Settings (environment): IDP_PORT, IDP_ISSUER, IDP_CLIENT_ID,
// IDP_CLIENT_SECRET, IDP_REDIRECT_URI, IDP_DOVECOT_SECRET, IDP_USER_EMAIL,
// IDP_ACCESS_TTL (seconds), IDP_KEY_CLIENT_ID, IDP_KEY_CLIENT_PUBLIC_KEYS
// (comma-separated PEM files; no key client without them).

import http from 'node:http';
import crypto from 'node:crypto';
import fs from 'node:fs';
import Provider from 'oidc-provider';

const env = (name, fallback) => process.env[name] || fallback;
const port = Number(env('IDP_PORT', '4000'));
const issuer = env('IDP_ISSUER', `http://127.0.0.1:${port}`);
const email = env('IDP_USER_EMAIL', 'alice@mail.test');
const subject = 'user-alice';
const accessTtl = Number(env('IDP_ACCESS_TTL', '30'));

// RFC 7638: SHA-256 of the required members in lexicographic order.
const thumbprint = (jwk) => {
  const members = jwk.kty === 'RSA'
    ? { e: jwk.e, kty: jwk.kty, n: jwk.n }
    : { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y };
  return crypto.createHash('sha256').update(JSON.stringify(members)).digest('base64url');
};
const publicJwk = (file) => {
  const jwk = crypto.createPublicKey(fs.readFileSync(file)).export({ format: 'jwk' });
  return { ...jwk, kid: thumbprint(jwk), use: 'sig' };
};
const redirectUri = env('IDP_REDIRECT_URI', 'http://127.0.0.1:8080/api/oauth/oidc/callback');
const keyFiles = env('IDP_KEY_CLIENT_PUBLIC_KEYS', '').split(',').filter(Boolean);
const keyClients = keyFiles.length === 0 ? [] : [{
  client_id: env('IDP_KEY_CLIENT_ID', 'mailconnect-key'),
  redirect_uris: [redirectUri],
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  token_endpoint_auth_method: 'private_key_jwt',
  jwks: { keys: keyFiles.map(publicJwk) },
}];

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'peers-rs256', use: 'sig', alg: 'RS256' };

const configuration = {
  clients: [
    {
      client_id: env('IDP_CLIENT_ID', 'mailconnect'),
      client_secret: env('IDP_CLIENT_SECRET', 'mailconnect-peer-secret'),
      redirect_uris: [redirectUri],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      client_id: 'dovecot',
      client_secret: env('IDP_DOVECOT_SECRET', 'dovecot-peer-secret'),
      redirect_uris: [],
      grant_types: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    ...keyClients,
  ],
  jwks: { keys: [signingKey] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  findAccount: async (_ctx, id) => (id === subject
    ? { accountId: id, claims: async () => ({ sub: id, email, email_verified: true }) }
    : undefined),
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  scopes: ['openid', 'email', 'offline_access'],
  pkce: { required: () => true },
  rotateRefreshToken: true,
  ttl: {
    AccessToken: accessTtl,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 14 * 86400,
    Grant: 14 * 86400,
    Session: 3600,
    Interaction: 600,
  },
  features: {
    devInteractions: { enabled: false },
    introspection: { enabled: true },
    revocation: { enabled: true },
  },
  // Returned by introspection as top-level claims: Dovecot's username.
  extraTokenClaims: async (_ctx, token) => (token.kind === 'AccessToken' && token.accountId === subject
    ? { email }
    : undefined),
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
};

const provider = new Provider(issuer, configuration);
provider.on('grant.revoked', (_ctx, grantId) => console.log(`grant revoked: ${grantId}`));
provider.on('server_error', (_ctx, err) => console.error('server_error', err));

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;
  if (prompt.name === 'login') {
    return provider.interactionFinished(req, res, { login: { accountId: subject } }, { mergeWithLastSubmission: false });
  }
  if (prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }
  res.statusCode = 400;
  res.end(`unexpected prompt ${prompt.name}`);
  return undefined;
}

const handler = provider.callback();
const server = http.createServer((req, res) => {
  if (req.url.startsWith('/interaction/')) {
    interaction(req, res).catch((err) => {
      console.error('interaction failed', err);
      res.statusCode = 500;
      res.end('interaction failed');
    });
    return;
  }
  handler(req, res);
});
server.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider ${issuer} listening on 127.0.0.1:${port}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));
