#!/usr/bin/env node
// Local, scripted OpenID Connect provider for tests (oidc-provider 8.8.1; also runs on 9.x).
//
// Listens on 127.0.0.1 only. Prints exactly one line "READY <issuer>" on stdout
// once it accepts connections; everything else (logs, oidc-provider notices)
// goes to stderr. Runs in the foreground; exits 0 on SIGTERM/SIGINT.
//
// Configuration: env vars, each overridable by a --flag of the same meaning
// (e.g. --port 0 --client-id app). See NOTES.md for the full list.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as querystring from 'node:querystring';

// oidc-provider prints notices with console.info (stdout): keep stdout for READY only.
console.info = (...a) => console.error(...a);
console.log = (...a) => console.error(...a);

const { default: Provider, errors } = await import('oidc-provider');

// ---------------------------------------------------------------- configuration
const argv = process.argv.slice(2);
const flags = {};
for (let i = 0; i < argv.length; i += 1) {
  const a = argv[i];
  if (a === '-h' || a === '--help') {
    process.stderr.write('usage: node idp.js [--port N] [--issuer URL] [--client-id ID] [--client-secret S]\n'
      + '  [--redirect-uris U1,U2] [--post-logout-redirect-uris U1,U2] [--auth-method client_secret_basic|client_secret_post]\n'
      + '  [--access-token-ttl SEC] [--id-token-ttl SEC] [--token-ttl SEC] [--users FILE_OR_JSON] [--consent auto|page]\n'
      + '  [--session-ttl SEC] [--debug]\n');
    process.exit(0);
  }
  if (!a.startsWith('--')) { fail(`unexpected argument ${a}`); }
  const eq = a.indexOf('=');
  if (eq !== -1) { flags[a.slice(2, eq)] = a.slice(eq + 1); } else if (a === '--debug') { flags.debug = '1'; } else {
    if (i + 1 >= argv.length) fail(`missing value for ${a}`);
    flags[a.slice(2)] = argv[i += 1];
  }
}
function opt(flag, env, dflt) {
  if (flags[flag] !== undefined) return flags[flag];
  if (process.env[env] !== undefined && process.env[env] !== '') return process.env[env];
  return dflt;
}
function fail(msg) { process.stderr.write(`idp.js: ${msg}\n`); process.exit(2); }
const list = (s) => (s ? String(s).split(/[\s,]+/).filter(Boolean) : []);
const int = (s, name) => { const n = Number(s); if (!Number.isInteger(n) || n < 0) fail(`${name} must be a non-negative integer`); return n; };

// Loopback by default; a test may name an address of a network namespace it created
// (IDP_HOST), and the hosts its redirect URIs may use (IDP_ALLOWED_HOSTS): nothing else.
const HOST = opt('host', 'IDP_HOST', '127.0.0.1');
const ALLOWED_HOSTS = ['127.0.0.1', 'localhost', '[::1]', HOST, ...list(opt('allowed-hosts', 'IDP_ALLOWED_HOSTS', ''))];
const PORT = int(opt('port', 'IDP_PORT', '0'), 'port');
const ISSUER_OPT = opt('issuer', 'IDP_ISSUER', '');
const CLIENT_ID = opt('client-id', 'IDP_CLIENT_ID', 'test-client');
const CLIENT_SECRET = opt('client-secret', 'IDP_CLIENT_SECRET', 'test-secret');
const REDIRECT_URIS = list(opt('redirect-uris', 'IDP_REDIRECT_URIS', ''));
const POST_LOGOUT_URIS = list(opt('post-logout-redirect-uris', 'IDP_POST_LOGOUT_REDIRECT_URIS', ''));
const AUTH_METHOD = opt('auth-method', 'IDP_TOKEN_ENDPOINT_AUTH_METHOD', 'client_secret_basic');
const TOKEN_TTL = int(opt('token-ttl', 'IDP_TOKEN_TTL', '300'), 'token-ttl');
const AT_TTL = int(opt('access-token-ttl', 'IDP_ACCESS_TOKEN_TTL', String(TOKEN_TTL)), 'access-token-ttl');
const IDT_TTL = int(opt('id-token-ttl', 'IDP_ID_TOKEN_TTL', String(TOKEN_TTL)), 'id-token-ttl');
const SESSION_TTL = int(opt('session-ttl', 'IDP_SESSION_TTL', '3600'), 'session-ttl');
const CONSENT = opt('consent', 'IDP_CONSENT', 'auto'); // auto | page
const DEBUG = opt('debug', 'IDP_DEBUG', '') !== '';
const USERS_OPT = opt('users', 'IDP_USERS', '');

if (REDIRECT_URIS.length === 0) fail('at least one redirect URI is required (IDP_REDIRECT_URIS or --redirect-uris)');
if (!['client_secret_basic', 'client_secret_post'].includes(AUTH_METHOD)) fail('auth-method must be client_secret_basic or client_secret_post');
if (!['auto', 'page'].includes(CONSENT)) fail('consent must be auto or page');
for (const u of [...REDIRECT_URIS, ...POST_LOGOUT_URIS]) {
  let url; try { url = new URL(u); } catch { fail(`not a URL: ${u}`); }
  if (!ALLOWED_HOSTS.includes(url.hostname)) fail(`refusing a URI outside the allowed hosts: ${u}`);
}

// Fixed user store. Override with IDP_USERS = path to a JSON file or inline JSON:
// {"alice": {"password": "alice-pw", "claims": {...}}, ...}; "sub" defaults to the username.
const DEFAULT_USERS = {
  alice: {
    password: 'alice-pw',
    claims: {
      sub: 'alice', name: 'Alice Admin', preferred_username: 'alice',
      email: 'alice@example.test', email_verified: true, groups: ['order-admins'],
    },
  },
  bob: {
    password: 'bob-pw',
    claims: {
      sub: 'bob', name: 'Bob Viewer', preferred_username: 'bob',
      email: 'bob@example.test', email_verified: true, groups: ['order-viewers'],
    },
  },
};
let USERS = DEFAULT_USERS;
if (USERS_OPT) {
  const text = USERS_OPT.trim().startsWith('{') ? USERS_OPT : fs.readFileSync(USERS_OPT, 'utf8');
  USERS = JSON.parse(text);
}
const ACCOUNTS = new Map(); // sub -> claims
for (const [username, u] of Object.entries(USERS)) {
  const claims = { sub: username, ...(u.claims || {}) };
  u.claims = claims;
  ACCOUNTS.set(claims.sub, claims);
}
function checkPassword(username, password) {
  const u = Object.prototype.hasOwnProperty.call(USERS, username) ? USERS[username] : undefined;
  if (!u || typeof password !== 'string') return undefined;
  const a = crypto.createHash('sha256').update(String(u.password)).digest();
  const b = crypto.createHash('sha256').update(password).digest();
  return crypto.timingSafeEqual(a, b) ? u.claims.sub : undefined;
}

// ---------------------------------------------------------------- provider
const server = http.createServer();
server.keepAliveTimeout = 2000;
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(PORT, HOST, resolve);
});
const { port } = server.address();
const ISSUER = ISSUER_OPT || `http://${HOST}:${port}`;

// One RS256 signing key per run (tests get it from jwks_uri).
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: `k-${crypto.randomBytes(6).toString('hex')}`, alg: 'RS256', use: 'sig' };

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
// Self-contained pages: no external fonts/scripts (the stock pages @import Google Fonts).
const page = (title, body) => `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${esc(title)}</title>
<style>body{font-family:sans-serif;max-width:28em;margin:2em auto}input,button{display:block;margin:.5em 0;padding:.4em;width:100%}</style>
</head><body>${body}</body></html>`;

const configuration = {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    application_type: 'web', // http://127.0.0.1 redirect URIs are accepted for web clients using the code flow
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: REDIRECT_URIS,
    post_logout_redirect_uris: POST_LOGOUT_URIS,
    token_endpoint_auth_method: AUTH_METHOD, // oidc-provider 8/9 accept basic AND post for either value
    id_token_signed_response_alg: 'RS256',
  }],
  jwks: { keys: [jwk] },
  cookies: {
    keys: [crypto.randomBytes(32).toString('base64url')],
    long: { httpOnly: true, sameSite: 'lax' },
    short: { httpOnly: true, sameSite: 'lax' },
  },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  // Put the claims allowed by the granted scopes into the ID token too (not only /me).
  conformIdTokenClaims: false,
  pkce: { required: () => true, methods: ['S256'] },
  responseTypes: ['code'],
  clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
  enabledJWA: { idTokenSigningAlgValues: ['RS256'] },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: {
    AccessToken: () => AT_TTL,
    IdToken: () => IDT_TTL,
    AuthorizationCode: () => 60,
    RefreshToken: () => 24 * 3600,
    Interaction: () => 600,
    Session: () => SESSION_TTL,
    Grant: () => SESSION_TTL,
  },
  findAccount: async (ctx, sub) => {
    const claims = ACCOUNTS.get(sub);
    if (!claims) return undefined;
    return { accountId: sub, claims: async () => ({ ...claims }) };
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  features: {
    devInteractions: { enabled: false },
    rpInitiatedLogout: {
      enabled: true,
      logoutSource: async (ctx, form) => {
        ctx.body = page('Sign out', `<h1>Do you want to sign out from ${esc(ctx.host)}?</h1>${form}
<button id="logout-yes" type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button id="logout-no" type="submit" form="op.logoutForm">No, stay signed in</button>`);
      },
      postLogoutSuccessSource: async (ctx) => {
        ctx.body = page('Signed out', '<h1 id="signed-out">You are signed out.</h1>');
      },
    },
    revocation: { enabled: true },
    introspection: { enabled: true },
    userinfo: { enabled: true },
  },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = page('Error', `<h1 id="oidc-error">Error</h1>${Object.entries(out).map(([k, v]) => `<pre><b>${esc(k)}</b>: ${esc(v)}</pre>`).join('')}`);
  },
};

const provider = new Provider(ISSUER, configuration);
provider.on('server_error', (ctx, err) => console.error('server_error', err));
if (DEBUG) {
  for (const ev of ['grant.error', 'authorization.error', 'end_session.error', 'userinfo.error', 'introspection.error']) {
    provider.on(ev, (ctx, err) => console.error(ev, err?.message, err?.error_description || ''));
  }
}
const oidcCallback = provider.callback();

// ---------------------------------------------------------------- interactions
function loginPage(uid, details, error) {
  const hint = details.params.login_hint ? esc(details.params.login_hint) : '';
  return page('Sign in', `<h1>Sign in to ${esc(ISSUER)}</h1>
${error ? `<p id="login-error" role="alert">${esc(error)}</p>` : ''}
<form id="login-form" method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
  <label for="username">Username</label>
  <input id="username" name="username" type="text" required autofocus value="${hint}">
  <label for="password">Password</label>
  <input id="password" name="password" type="password" required>
  <button id="login-submit" name="submit" value="login" type="submit">Sign in</button>
</form>
<p><a id="login-abort" href="/interaction/${esc(uid)}/abort">Cancel</a></p>`);
}
function consentPage(uid, details) {
  const scopes = details.prompt.details.missingOIDCScope || [];
  return page('Authorize', `<h1>Authorize ${esc(details.params.client_id)}</h1>
<p>Requested scopes: <span id="consent-scopes">${esc(scopes.join(' '))}</span></p>
<form id="consent-form" method="post" action="/interaction/${esc(uid)}/confirm">
  <button id="consent-submit" name="submit" value="consent" type="submit">Allow</button>
</form>
<p><a id="consent-abort" href="/interaction/${esc(uid)}/abort">Deny</a></p>`);
}
async function grantConsent(req, res, details) {
  const { prompt: { details: missing }, params, session, grantId } = details;
  const grant = grantId ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  if (missing.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) grant.addResourceScope(indicator, scopes.join(' '));
  }
  const id = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId: id } }, { mergeWithLastSubmission: true });
}
function readForm(req, limit = 16 * 1024) {
  return new Promise((resolve, reject) => {
    let size = 0; const chunks = [];
    req.on('data', (c) => { size += c.length; if (size > limit) { reject(new Error('body too large')); req.destroy(); } else chunks.push(c); });
    req.on('end', () => resolve(querystring.parse(Buffer.concat(chunks).toString('utf8'))));
    req.on('error', reject);
  });
}
function send(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

async function interaction(req, res, uid, action) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    return send(res, 400, page('Error', `<h1 id="oidc-error">Error</h1><pre>${esc(err.message)}</pre>`));
  }
  if (details.uid !== uid) return send(res, 400, page('Error', '<h1 id="oidc-error">interaction mismatch</h1>'));
  const promptName = details.prompt.name;
  if (req.method === 'GET' && action === '') {
    if (promptName === 'login') return send(res, 200, loginPage(uid, details));
    if (promptName === 'consent') {
      if (CONSENT === 'page') return send(res, 200, consentPage(uid, details));
      return grantConsent(req, res, details); // auto-granted: redirects straight back to /auth/<uid>
    }
    return send(res, 501, page('Error', `<h1 id="oidc-error">unsupported prompt ${esc(promptName)}</h1>`));
  }
  if (req.method === 'GET' && action === 'abort') {
    return provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'End-User aborted interaction' }, { mergeWithLastSubmission: false });
  }
  if (req.method === 'POST' && action === 'login' && promptName === 'login') {
    const body = await readForm(req);
    const sub = checkPassword(String(body.username ?? ''), body.password === undefined ? undefined : String(body.password));
    if (!sub) {
      if (DEBUG) console.error(`login failed for ${JSON.stringify(body.username)}`);
      return send(res, 401, loginPage(uid, details, 'Invalid username or password.'));
    }
    if (DEBUG) console.error(`login ok: ${sub}`);
    return provider.interactionFinished(req, res, { login: { accountId: sub, amr: ['pwd'] } }, { mergeWithLastSubmission: false });
  }
  if (req.method === 'POST' && action === 'confirm' && promptName === 'consent') {
    await readForm(req);
    return grantConsent(req, res, details);
  }
  return send(res, 400, page('Error', `<h1 id="oidc-error">unexpected ${esc(req.method)} ${esc(action)} for prompt ${esc(promptName)}</h1>`));
}

server.on('request', (req, res) => {
  if (DEBUG) {
    const t0 = Date.now();
    res.on('finish', () => console.error(`${req.method} ${req.url.split('?')[0]} -> ${res.statusCode} ${Date.now() - t0}ms`));
  }
  const m = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|confirm|abort))?\/?(?:\?.*)?$/.exec(req.url);
  if (m) {
    interaction(req, res, m[1], m[2] || '').catch((err) => {
      console.error('interaction error', err);
      if (!res.headersSent) send(res, err instanceof errors.OIDCProviderError ? err.statusCode : 500, page('Error', `<h1 id="oidc-error">Error</h1><pre>${esc(err.message)}</pre>`));
      else res.end();
    });
    return;
  }
  oidcCallback(req, res);
});

function shutdown(sig) {
  console.error(`idp.js: ${sig}, shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
// If the parent test process dies and closes our stdin pipe, exit too (opt-in).
if (process.env.IDP_EXIT_ON_STDIN_EOF) {
  process.stdin.on('end', () => shutdown('stdin EOF')); process.stdin.resume();
}

process.stdout.write(`READY ${ISSUER}\n`);
