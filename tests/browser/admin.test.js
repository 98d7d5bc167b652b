// Browser tests of the admin page at `/`, against `mailconnect demo`.
//
// Starts the real stack itself, as a newcomer would: one `mailconnect demo`
// process (the service plus the sandbox identity provider standing in for
// Microsoft and Google, with its sign-in/consent page) on a free loopback
// port with a fresh SQLite file, then drives Debian's chromium through
// playwright-core: the admin opens the link the demo prints, connects
// mailboxes by clicking through the sandbox consent page, disconnects one,
// and declines a consent. Build the binary first (`tests/browser/run.sh`
// does it all).
//
//   node --test            (in tests/browser)
//
// Environment: CHROMIUM (default /usr/bin/chromium), MAILCONNECT_BIN
// (default <repo>/target/debug/mailconnect). The demo's log is kept in
// target/browser-tests/*.log, with screenshots; KEEP_LOGS=1 also prints it.

'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');

const ROOT = path.resolve(__dirname, '..', '..');
const TARGET = process.env.CARGO_TARGET_DIR
  ? path.resolve(ROOT, process.env.CARGO_TARGET_DIR)
  : path.join(ROOT, 'target');
const MAILCONNECT_BIN = process.env.MAILCONNECT_BIN || path.join(TARGET, 'debug', 'mailconnect');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// The README's screenshot is refreshed only on request, so a test run
// leaves the work tree clean: UPDATE_SCREENSHOT=1 tests/browser/run.sh
const SCREENSHOT = process.env.UPDATE_SCREENSHOT
  ? path.join(ROOT, 'docs', 'admin-connected.png')
  : path.join(TARGET, 'browser-tests', 'admin-connected.png');

// The demo takes JWT_SECRET from the environment when set (as `serve --dev`
// does), so the tests can also mint tokens of their own (an expired one).
const JWT_SECRET = crypto.randomBytes(32).toString('hex');
const TENANT = 'demo-tenant'; // the tenant of the demo's admin link
const MAILBOX = 'megan.bowen@contoso.example'; // a sandbox Microsoft user
const GOOGLE_MAILBOX = 'sam@workspace.example'; // a sandbox Google Workspace user
const SHARED_MAILBOX = 'support@contoso.example'; // opened through MAILBOX
const APP_MAILBOX = 'archive@contoso.example'; // opened with the app's own token
const DIRECTORY_ADMIN = 'adele.vance@contoso.example'; // admin of the sandbox's directory
const SHOTS = path.join(TARGET, 'browser-tests');
const SECRET_EXPIRES_AT = new Date(Date.now() + 12 * 86400000 + 3600000).toISOString().replace(/\.\d+Z$/, 'Z');

const procs = []; // { name, child, log: string[] }
let tmp;
let base; // http://127.0.0.1:PORT of mailconnect
let demoLink; // the admin link the demo prints: {base}/#token=<JWT>
let demoConnectLink; // the connect link it prints: {base}/connect/<token>
let browser;
let context;
let page;
const pageProblems = []; // uncaught errors and CSP violations in the page

// ---------- helpers ----------

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function b64url(buf) {
  return Buffer.from(buf).toString('base64url');
}

/** An HS256 JWT, as the platform would issue it. */
function mintJwt(claims, secret = JWT_SECRET) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = crypto.createHmac('sha256', secret).update(`${head}.${body}`).digest();
  return `${head}.${body}.${b64url(sig)}`;
}

function adminJwt(extra = {}) {
  return mintJwt({
    sub: 'admin-1',
    tenant_id: TENANT,
    role: 'admin',
    exp: Math.floor(Date.now() / 1000) + 3600,
    ...extra,
  });
}

function start(name, bin, args, env) {
  if (!fs.existsSync(bin)) {
    throw new Error(`${bin} is missing: build it first (tests/browser/run.sh does)`);
  }
  const child = spawn(bin, args, {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const entry = { name, child, log: [] };
  for (const stream of [child.stdout, child.stderr]) {
    stream.setEncoding('utf8');
    stream.on('data', (d) => entry.log.push(d));
  }
  child.on('exit', (code, signal) => {
    entry.exited = { code, signal };
  });
  procs.push(entry);
  return entry;
}

/** The first match of `re` in what the process prints on stdout. */
function stdoutMatch(entry, re, timeoutMs = 30000) {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`${entry.name}: no ${re} after ${timeoutMs} ms\n${entry.log.join('')}`)), timeoutMs);
    entry.child.stdout.on('data', (d) => {
      buf += d;
      const m = buf.match(re);
      if (m) {
        clearTimeout(timer);
        resolve(m);
      }
    });
    entry.child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${entry.name} exited with ${code}\n${entry.log.join('')}`));
    });
  });
}

async function waitHealthy(url, entry, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (entry.exited) {
      throw new Error(`${entry.name} exited (${JSON.stringify(entry.exited)})\n${entry.log.join('')}`);
    }
    try {
      const res = await fetch(url);
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} not healthy after ${timeoutMs} ms\n${entry.log.join('')}`);
}

function stop(entry) {
  return new Promise((resolve) => {
    if (entry.exited || entry.child.exitCode !== null) return resolve();
    const timer = setTimeout(() => {
      entry.child.kill('SIGKILL');
    }, 5000);
    entry.child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    entry.child.kill('SIGTERM');
  });
}

/** Waits until fn() returns a truthy value (or throws its last assertion). */
async function eventually(fn, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = new Error('condition stayed false');
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw last;
    await new Promise((r) => setTimeout(r, 100));
  }
}

const byTestId = (id) => page.getByTestId(id);

function rowFor(address) {
  // The row whose own address is exactly this (another row may name it:
  // "Shared, through …").
  const escaped = address.replace(/[.*+?^$()|[\]\\{}]/g, '\\$&');
  const exact = new RegExp('^' + escaped + '$');
  return byTestId('account-row').filter({ has: page.getByTestId('account-email').filter({ hasText: exact }) });
}

async function signIn(jwt) {
  await byTestId('jwt-input').fill(jwt);
  await byTestId('jwt-submit').click();
}

// ---------- the stack ----------

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mailconnect-browser-'));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;

  const demo = start('mailconnect-demo', MAILCONNECT_BIN, [
    'demo',
    '--bind', `127.0.0.1:${port}`,
    '--database-url', `sqlite://${path.join(tmp, 'demo.db')}`,
  ], {
    JWT_SECRET,
    RUST_LOG: process.env.RUST_LOG || 'warn',
    // The Microsoft secret expires in 12 days: the page warns about it.
    MICROSOFT_OAUTH_CLIENT_SECRET_EXPIRES_AT: SECRET_EXPIRES_AT,
  });
  const [, link] = await stdoutMatch(demo, /(http:\/\/\S+\/#token=[A-Za-z0-9_.-]+)/);
  demoLink = link;
  assert.ok(demoLink.startsWith(`${base}/#token=`), demoLink);
  const banner = () => demo.log.join('');
  await waitHealthy(`${base}/healthz`, demo);
  assert.match(banner(), /DEMO MODE — NOT FOR PRODUCTION/);
  const connect = banner().match(/(http:\/\/\S+\/connect\/[A-Za-z0-9_-]{22,})/);
  assert.ok(connect, `the demo prints a connect link\n${banner()}`);
  demoConnectLink = connect[1];
  assert.ok(demoConnectLink.startsWith(`${base}/connect/`), demoConnectLink);

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  context = await browser.newContext({
    viewport: { width: 1180, height: 760 },
    deviceScaleFactor: 1,
    locale: 'en-GB',
    colorScheme: 'light',
  });
  page = await context.newPage();
  page.setDefaultTimeout(10000);
  page.on('pageerror', (e) => pageProblems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) {
      pageProblems.push(`console: ${m.text()}`);
    }
  });
});

after(async () => {
  try {
    if (browser) await browser.close();
  } finally {
    await Promise.all(procs.map(stop));
    // The services' logs, for a failed run: target/browser-tests/<name>.log
    const logDir = path.join(TARGET, 'browser-tests');
    fs.mkdirSync(logDir, { recursive: true });
    for (const p of procs) {
      fs.writeFileSync(path.join(logDir, `${p.name}.log`), p.log.join(''));
      if (process.env.KEEP_LOGS) process.stderr.write(`--- ${p.name} ---\n${p.log.join('')}\n`);
    }
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  }
});

// ---------- the cases (in order: each builds on the previous state) ----------

test('GET / serves the page with strict security headers', async () => {
  const res = await fetch(`${base}/`);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-type'), 'text/html; charset=utf-8');
  assert.equal(res.headers.get('cache-control'), 'no-cache');
  assert.equal(res.headers.get('x-frame-options'), 'DENY');
  assert.equal(res.headers.get('referrer-policy'), 'no-referrer');
  const csp = res.headers.get('content-security-policy');
  assert.match(csp, /default-src 'self'/);
  assert.match(csp, /script-src 'sha256-[A-Za-z0-9+/=]+'/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.doesNotMatch(csp, /unsafe/);
  const html = await res.text();
  assert.match(html, /<meta name="viewport"/);
});

test('a bad JWT is refused with a clear message and the page asks again', async () => {
  await page.goto(`${base}/`);
  await byTestId('jwt-input').waitFor();
  await signIn(mintJwt({ sub: 'x', tenant_id: TENANT, role: 'admin', exp: Math.floor(Date.now() / 1000) + 600 }, 'wrong-secret'));
  const err = byTestId('jwt-error');
  await err.waitFor({ state: 'visible' });
  assert.match(await err.textContent(), /not accepted/i);
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'a refused token is not kept');

  // Keyboard: Enter in the field submits.
  await byTestId('jwt-input').fill(adminJwt({ exp: Math.floor(Date.now() / 1000) - 60 }));
  await byTestId('jwt-input').press('Enter');
  await eventually(async () => /expired/i.test(await err.textContent()));
  await byTestId('jwt-input').waitFor({ state: 'visible' });
});

test('the link the demo prints signs the admin in, and leaves no token in the address bar', async () => {
  await page.goto(demoLink);
  await byTestId('no-accounts').waitFor();
  const url = new URL(page.url());
  assert.equal(url.hash, '', 'the token is removed from the address bar');
  assert.equal(url.href, `${base}/`);
  assert.ok(await page.evaluate(() => sessionStorage.getItem('mailconnect.admin_jwt')), 'kept for this tab only');
  assert.equal(await page.evaluate(() => localStorage.length), 0, 'never in localStorage');
  assert.match(await byTestId('signed-in-as').textContent(), /demo-tenant/);
  assert.equal(await byTestId('connect-microsoft').isEnabled(), true);
  assert.equal(await byTestId('connect-google').isEnabled(), true);
  assert.equal(await byTestId('connect-oidc').isDisabled(), true, 'oidc is not configured in the demo');
});

/** On the sandbox consent page: checks what it shows and returns its URL. */
async function onConsentPage(brand) {
  const banner = byTestId('sandbox-banner');
  await banner.waitFor({ state: 'visible' });
  assert.match(await banner.textContent(), new RegExp(`Sandbox identity provider — not ${brand}`));
  const url = new URL(page.url());
  assert.notEqual(url.origin, new URL(base).origin, 'the consent page is the sandbox, not the service');
  const perms = await byTestId('sandbox-permissions').textContent();
  assert.match(perms, /Read and write your mail over IMAP/);
  assert.match(perms, /SMTP/);
  assert.match(perms, /Your email address/);
  assert.match(perms, /Stay signed in \(offline access\)/);
  return url;
}

test('(a) connect with Microsoft: pick a sandbox user, accept, back connected', async () => {
  const connect = byTestId('connect-microsoft');
  await connect.click();
  // authorize → sandbox sign-in/consent page
  await onConsentPage('Microsoft');
  for (const u of ['adele.vance@contoso.example', MAILBOX, 'someone@outlook.example']) {
    await byTestId(`sandbox-user-${u}`).waitFor();
  }
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, 'sandbox-consent.png'), fullPage: true });
  await byTestId(`sandbox-user-${MAILBOX}`).check();
  await byTestId('sandbox-accept').click();

  // → callback → 303 to /?oauth=connected…
  const banner = byTestId('banner');
  await banner.waitFor({ state: 'visible' });
  assert.equal(await banner.getAttribute('role'), 'status');
  await eventually(async () => (await banner.textContent()).includes(MAILBOX));
  assert.match(await banner.textContent(), /connected with Microsoft/);
  assert.equal(new URL(page.url()).origin, new URL(base).origin);
  assert.equal(new URL(page.url()).search, '', 'the outcome query is removed from the URL');

  const row = rowFor(MAILBOX);
  await row.waitFor();
  const status = row.getByTestId('account-status');
  assert.equal((await status.textContent()).trim(), 'Connected');
  const colour = await status.evaluate((e) => getComputedStyle(e).color);
  const [r, g, b] = colour.match(/\d+/g).map(Number);
  assert.ok(g > r && g > b, `Connected is green, got ${colour}`);
  assert.match(await row.textContent(), /Microsoft/);
  assert.ok(await page.evaluate(() => sessionStorage.getItem('mailconnect.admin_jwt')), 'the JWT survived the round trip');
  assert.equal(await byTestId('account-row').count(), 1, 'only the chosen user was connected');
});

test('(a2) connect a Google sandbox mailbox with the keyboard only', async () => {
  await byTestId('connect-google').focus();
  await page.keyboard.press('Enter');
  await onConsentPage('Google');
  // The first user is pre-selected and focused; arrow to the next one,
  // Tab to Accept, Enter.
  const focused = await page.evaluate(() => document.activeElement && document.activeElement.getAttribute('data-testid'));
  assert.equal(focused, 'sandbox-user-alex@gmail.example');
  await page.keyboard.press('ArrowDown');
  assert.equal(await byTestId(`sandbox-user-${GOOGLE_MAILBOX}`).isChecked(), true);
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.getAttribute('data-testid')), 'sandbox-accept');
  await page.keyboard.press('Enter');

  const row = rowFor(GOOGLE_MAILBOX);
  await row.waitFor();
  assert.equal((await row.getByTestId('account-status').textContent()).trim(), 'Connected');
  assert.match(await row.textContent(), /Google/);
  await eventually(async () => (await byTestId('banner').textContent()).includes(GOOGLE_MAILBOX));
  assert.equal((await rowFor(MAILBOX).getByTestId('account-status').textContent()).trim(), 'Connected');

  const tableOverflow = await byTestId('accounts-table').evaluate((t) => t.scrollWidth - t.parentElement.clientWidth);
  assert.ok(tableOverflow <= 0, `the accounts table is ${tableOverflow}px wider than its card`);

  fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });

  // Readable on a phone: nothing scrolls sideways.
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `the page scrolls sideways by ${overflow}px at 390px`);
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, 'admin-phone.png'), fullPage: true });
  await page.setViewportSize({ width: 1180, height: 760 });
});

test('(a3) a shared mailbox says in plain words through whom it is opened', async () => {
  const delegate = await rowFor(MAILBOX).getAttribute('data-account-id');
  const res = await fetch(`${base}/api/accounts`, {
    method: 'POST',
    headers: { authorization: `Bearer ${adminJwt()}`, 'content-type': 'application/json' },
    body: JSON.stringify({ kind: 'shared', email: SHARED_MAILBOX, via_account_id: delegate }),
  });
  assert.equal(res.status, 201, await res.text());
  await page.reload();
  const row = rowFor(SHARED_MAILBOX);
  await row.waitFor();
  assert.equal((await row.getByTestId('account-kind').textContent()).trim(), `Shared, through ${MAILBOX}`);
  assert.equal((await row.getByTestId('account-status').textContent()).trim(), 'Connected');
  assert.equal(await row.getByTestId('reconnect').count(), 0, 'nobody signs in to a shared mailbox: its delegate is reconnected');
  assert.equal(await rowFor(MAILBOX).getByTestId('account-kind').count(), 0, 'a mailbox of its own says nothing more');
});

test('(a4) grant admin consent, then add an app mailbox with the form', async () => {
  const before = byTestId('admin-consent-microsoft');
  assert.match(await before.textContent(), /No admin consent yet/);
  await byTestId('admin-consent-button').click();
  // → the sandbox's admin consent page, as the directory's admin
  const banner = byTestId('sandbox-banner');
  await banner.waitFor({ state: 'visible' });
  assert.notEqual(new URL(page.url()).origin, new URL(base).origin);
  await byTestId(`sandbox-user-${DIRECTORY_ADMIN}`).check();
  await byTestId('sandbox-accept').click();

  const back = byTestId('banner');
  await back.waitFor({ state: 'visible' });
  await eventually(async () => /Admin consent granted/.test(await back.textContent()));
  assert.equal(new URL(page.url()).search, '', 'the outcome query is removed from the URL');
  await eventually(async () => /Admin consent: directory [0-9a-f-]{36}/.test(await byTestId('admin-consent-microsoft').textContent()));

  await page.getByLabel(/app.s own access/).check();
  await page.getByLabel('Mailbox address').fill(APP_MAILBOX);
  await byTestId('add-submit').click();
  await eventually(async () => /Mailbox added/.test(await byTestId('banner').textContent()));
  const row = rowFor(APP_MAILBOX);
  await row.waitFor();
  assert.match((await row.getByTestId('account-kind').textContent()).trim(), /^App access \(directory [0-9a-f-]{36}\)$/);
  assert.equal((await row.getByTestId('account-status').textContent()).trim(), 'Connected');
  assert.equal(await row.getByTestId('reconnect').count(), 0);

  // The demo's stand-in for Exchange Online lets the app open that mailbox,
  // and Megan open the shared one: verify logs in to both for real.
  for (const address of [APP_MAILBOX, SHARED_MAILBOX]) {
    const id = await rowFor(address).getAttribute('data-account-id');
    const res = await fetch(`${base}/api/accounts/${id}/verify`, {
      method: 'POST',
      headers: { authorization: `Bearer ${adminJwt()}` },
    });
    assert.equal(res.status, 200);
    const v = await res.json();
    assert.equal(v.imap.ok, true, `${address}: ${JSON.stringify(v.imap)}`);
    assert.equal(v.smtp.ok, true, `${address}: ${JSON.stringify(v.smtp)}`);
  }
});

/** Runs SQL on the demo's SQLite file (Python's sqlite3: node 20 has none). */
function sql(statement, params = []) {
  const { execFileSync } = require('node:child_process');
  execFileSync('python3', ['-c', `
import sqlite3, sys, json
db = sqlite3.connect(sys.argv[1], timeout=10)
db.execute(sys.argv[2], json.loads(sys.argv[3]))
db.commit()
`, path.join(tmp, 'demo.db'), statement, JSON.stringify(params)]);
}

test('(a5) test a connection, read a mailbox\'s history, and see why a troubled one broke', async () => {
  // Test connection: a real login to the demo's Exchange, shown per protocol.
  await rowFor(SHARED_MAILBOX).getByTestId('test-connection').click();
  const dialog = byTestId('details-dialog');
  await dialog.waitFor({ state: 'visible' });
  const imap = dialog.getByTestId('verify-imap');
  await imap.waitFor();
  assert.equal(await imap.getAttribute('data-ok'), 'true');
  assert.equal(await dialog.getByTestId('verify-smtp').getAttribute('data-ok'), 'true');
  await imap.locator('summary').click();
  const transcript = await imap.getByTestId('verify-transcript').textContent();
  assert.match(transcript, /EXAMINE INBOX/);
  assert.match(transcript, /\[initial response elided\]/);
  assert.doesNotMatch(transcript, /auth=Bearer|eyJ/, 'no credential in the transcript');
  await byTestId('details-close').click();
  await dialog.waitFor({ state: 'hidden' });

  // A mailbox the app may not open: the login works, INBOX does not, and
  // the dialog says what to do about it.
  const res = await fetch(`${base}/api/accounts`, {
    method: 'POST',
    headers: { authorization: `Bearer ${adminJwt()}`, 'content-type': 'application/json' },
    body: JSON.stringify({ kind: 'app', email: DIRECTORY_ADMIN }),
  });
  assert.equal(res.status, 201, await res.text());
  await page.reload();
  await rowFor(DIRECTORY_ADMIN).getByTestId('test-connection').click();
  await dialog.waitFor({ state: 'visible' });
  const failed = dialog.getByTestId('verify-imap');
  await failed.waitFor();
  assert.equal(await failed.getAttribute('data-ok'), 'false');
  const fix = failed.getByTestId('verify-fix');
  assert.ok(['mailbox_access_denied', 'imap_auth_refused'].includes(await fix.getAttribute('data-cause')));
  assert.match(await fix.textContent(), /^What to do: /);
  await byTestId('details-close').click();

  // The history of a mailbox opens from its row.
  await rowFor(MAILBOX).getByTestId('history').click();
  await dialog.waitFor({ state: 'visible' });
  await dialog.getByTestId('history-event').first().waitFor();
  assert.match(await dialog.textContent(), /connect/);
  await byTestId('details-close').click();

  // A mailbox whose refresh was refused for MFA shows why and what to do,
  // on a phone too.
  const id = await rowFor(MAILBOX).getAttribute('data-account-id');
  sql(`UPDATE accounts SET status = 'needs_reauth', last_error = 'interaction_required',
         cause = 'mfa_required', cause_at = strftime('%s', 'now') WHERE id = ?`, [id]);
  try {
    await page.reload();
    const row = rowFor(MAILBOX);
    const why = row.getByTestId('account-fix');
    await why.waitFor();
    assert.equal(await why.getAttribute('data-cause'), 'mfa_required');
    assert.match(await why.textContent(), /multi-factor authentication/);
    await page.setViewportSize({ width: 390, height: 844 });
    assert.ok(await why.isVisible(), 'the fix is readable on a phone');
    const sideways = await page.evaluate(() => document.scrollingElement.scrollWidth > window.innerWidth + 1);
    assert.equal(sideways, false, 'nothing scrolls sideways on a phone');
    await row.getByTestId('history').click();
    await dialog.waitFor({ state: 'visible' });
    const box = await dialog.boundingBox();
    assert.ok(box && box.width <= 390, 'the dialog fits a phone');
    await page.screenshot({ path: path.join(SHOTS, 'admin-phone-diagnosis.png'), fullPage: true });
    await byTestId('details-close').click();
  } finally {
    await page.setViewportSize({ width: 1180, height: 760 });
    sql(`UPDATE accounts SET status = 'connected', last_error = NULL, cause = NULL, cause_at = NULL
         WHERE id = ?`, [id]);
    await page.reload();
  }
});

test('(a6) a client secret that expires within 30 days is warned about above the providers', async () => {
  const warning = byTestId('credential-warning-microsoft');
  await warning.waitFor();
  assert.equal(await warning.getAttribute('data-days'), '12');
  assert.match(await warning.textContent(), /Microsoft client secret expires in 12 days/);
  assert.match(await warning.textContent(), /Certificates & secrets/);
  assert.equal(await byTestId('credential-warning-google').count(), 0, 'a secret without a date is not warned about');
});

test('(b) disconnect through the confirmation dialog', async () => {
  const row = rowFor(MAILBOX);
  const dialog = byTestId('confirm-dialog');

  await row.getByTestId('disconnect').click();
  await dialog.waitFor({ state: 'visible' });
  assert.match(await dialog.textContent(), new RegExp(MAILBOX.replace(/\./g, '\\.')));
  await byTestId('confirm-cancel').click();
  await dialog.waitFor({ state: 'hidden' });
  assert.equal((await row.getByTestId('account-status').textContent()).trim(), 'Connected', 'cancel changes nothing');

  await row.getByTestId('disconnect').click();
  await dialog.waitFor({ state: 'visible' });
  await byTestId('confirm-disconnect').click();
  await eventually(async () => (await row.getByTestId('account-status').textContent()).trim() === 'Disconnected');
  assert.equal(await row.getByTestId('disconnect').count(), 0, 'no Disconnect on a disconnected account');
  assert.match(await byTestId('banner').textContent(), /disconnected/i);
  assert.equal((await rowFor(GOOGLE_MAILBOX).getByTestId('account-status').textContent()).trim(), 'Connected', 'the other mailbox is untouched');
});

test('(c) Cancel on the consent page shows the plain-words banner for a declined consent', async () => {
  await byTestId('connect-microsoft').click();
  await onConsentPage('Microsoft');
  await byTestId('sandbox-cancel').click();

  const banner = byTestId('banner');
  await banner.waitFor({ state: 'visible' });
  assert.equal(await banner.getAttribute('role'), 'alert');
  assert.match(await banner.textContent(), /Connection cancelled/);
  assert.match(await banner.textContent(), /You declined the permission request at Microsoft/);
  assert.equal(new URL(page.url()).origin, new URL(base).origin);
  assert.equal(new URL(page.url()).search, '', 'the outcome query is removed from the URL');
  // still signed in: the list loads beneath the banner, unchanged
  await rowFor(MAILBOX).waitFor();
  assert.equal((await rowFor(MAILBOX).getByTestId('account-status').textContent()).trim(), 'Disconnected');
  // Megan, Sam, the shared and the two app mailboxes of (a4) and (a5).
  assert.equal(await byTestId('account-row').count(), 5);
  assert.equal((await rowFor(SHARED_MAILBOX).getByTestId('account-status').textContent()).trim(), 'Disconnected', 'the shared mailbox followed its delegate');
});

test('every callback reason has its own plain-words banner', async () => {
  const expected = {
    consent_required: /admin consent/,
    state_expired: /10 minutes/,
    token_exchange_failed: /could not be verified/,
    provider_unavailable: /could not be reached/,
    email_unavailable: /verified email address/,
    account_mismatch: /different mailbox/,
  };
  for (const [reason, re] of Object.entries(expected)) {
    await page.goto(`${base}/?oauth=error&provider=microsoft&reason=${reason}`);
    const banner = byTestId('banner');
    await banner.waitFor({ state: 'visible' });
    assert.match(await banner.textContent(), re, reason);
  }
  // Text from the URL is shown as text, never as markup.
  await page.goto(`${base}/?oauth=error&provider=%3Cimg%20src%3Dx%3E&reason=%3Cb%3Ex%3C%2Fb%3E`);
  const banner = byTestId('banner');
  await banner.waitFor({ state: 'visible' });
  assert.match(await banner.textContent(), /<b>x<\/b>/);
  assert.equal(await banner.locator('b, img').count(), 0);
});

// ---------- connect links: the mailbox owner's side ----------

const AXE = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

/** axe-core on what `p` shows now: no serious or critical violation. */
async function accessible(p, what) {
  // Evaluated through the DevTools protocol: the page's CSP (no script at
  // all) stays as it is.
  if (!(await p.evaluate(() => typeof window.axe === 'object'))) await p.evaluate(AXE);
  const result = await p.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  const bad = result.violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
  assert.deepEqual(bad, [], `${what}: accessibility violations`);
}

/** A private window: no cookie or storage of the admin's. */
async function ownerWindow(options) {
  const ctx = await browser.newContext({ locale: 'en-GB', colorScheme: 'light', ...options });
  const p = await ctx.newPage();
  p.setDefaultTimeout(10000);
  const problems = [];
  p.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  p.on('console', (m) => {
    if (m.type() === 'error' && !/^Failed to load resource/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  return { ctx, p, problems };
}

async function noSidewaysScroll(p, what) {
  const [scroll, width] = await p.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  assert.ok(scroll <= width, `${what}: ${scroll} px wide in a ${width} px viewport`);
}

/** Picks `user` on the sandbox consent page (in `p`) and accepts. */
async function consentAs(p, user) {
  await p.getByTestId(`sandbox-user-${user}`).check();
  await p.getByTestId('sandbox-accept').click();
}

const PHONE = { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true };
const OWNER = 'someone@outlook.example'; // connects through the demo's link
const PHONE_OWNER = 'alex@gmail.example'; // through a link the admin makes

test('(d) the owner connects through the link the demo prints, in a private window', async () => {
  const res = await fetch(demoConnectLink);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('cache-control'), 'no-store');
  assert.equal(res.headers.get('referrer-policy'), 'no-referrer');
  assert.match(res.headers.get('content-security-policy'), /default-src 'none'/);
  assert.doesNotMatch(await res.text(), /<script|https?:\/\/(?!127\.0\.0\.1)/, 'no script, no external resource');

  const { ctx, p, problems } = await ownerWindow({ viewport: { width: 1180, height: 760 } });
  try {
    await p.goto(demoConnectLink);
    assert.equal(await p.locator('h1').textContent(), 'Connect your mailbox');
    const text = await p.locator('main').textContent();
    assert.match(text, /demo-tenant/);
    assert.match(text, /read your mail and send mail as you/);
    await accessible(p, 'start page');
    await p.getByRole('button', { name: 'Connect with Microsoft' }).click();

    // The same sandbox consent page an admin's connect goes through.
    const banner = p.getByTestId('sandbox-banner');
    await banner.waitFor({ state: 'visible' });
    assert.match(await banner.textContent(), /not Microsoft/);
    await consentAs(p, OWNER);

    await p.locator('h1', { hasText: 'Connected' }).waitFor();
    assert.match(await p.locator('main').textContent(), new RegExp(`Connected: ${OWNER.replace(/\./g, '\\.')}\\. You can close this window\\.`));
    assert.equal(new URL(p.url()).origin, new URL(base).origin);
    await accessible(p, 'finish page');
    fs.mkdirSync(SHOTS, { recursive: true });
    await p.screenshot({ path: path.join(SHOTS, 'connect-link-connected.png'), fullPage: true });

    // Once only.
    const again = await p.goto(demoConnectLink);
    assert.equal(again.status(), 410);
    assert.match(await p.locator('main').textContent(), /already used/);
    await accessible(p, 'used-link page');
    const unknown = await p.goto(`${base}/connect/no-such-link-at-all-here`);
    assert.equal(unknown.status(), 404);
    await accessible(p, 'unknown-link page');
    assert.deepEqual(problems, [], 'no script errors or CSP reports on the owner pages');
  } finally {
    await ctx.close();
  }

  // The admin sees the mailbox, connected by the link's admin.
  await page.goto(`${base}/`);
  const row = rowFor(OWNER);
  await row.waitFor();
  assert.equal((await row.getByTestId('account-status').textContent()).trim(), 'Connected');
  await eventually(async () => /1 used/.test(await byTestId('links-summary').textContent()));
});

test('(e) the admin makes a link for one Google mailbox, copies it, and its owner connects on a phone with the keyboard', async () => {
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
  await byTestId('link-provider').selectOption('google');
  await byTestId('link-email').fill(PHONE_OWNER);
  await byTestId('link-lifetime').selectOption('86400');
  await byTestId('link-submit').click();
  const made = byTestId('link-made');
  await made.waitFor({ state: 'visible' });
  const url = await byTestId('link-url').inputValue();
  assert.match(url, new RegExp(`^${base.replace(/[.]/g, '\\.')}/connect/[A-Za-z0-9_-]{22,}$`));
  assert.match(await byTestId('link-made-hint').textContent(), new RegExp(`${PHONE_OWNER.replace(/\./g, '\\.')} at Google`));
  await byTestId('link-copy').click();
  await eventually(async () => (await byTestId('link-made-hint').textContent()) === 'Copied.');
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), url);
  const listed = byTestId('link-row');
  await eventually(async () => (await listed.count()) === 1);
  assert.match(await listed.textContent(), new RegExp(PHONE_OWNER.replace(/\./g, '\\.')));
  assert.doesNotMatch(await byTestId('links').textContent(), new RegExp(url.split('/connect/')[1]), 'the list never shows a token');

  const { ctx, p, problems } = await ownerWindow(PHONE);
  try {
    await p.goto(url);
    assert.equal(await p.getByRole('button').count(), 1, 'only the link\'s provider is offered');
    assert.match(await p.locator('main').textContent(), new RegExp(PHONE_OWNER.replace(/\./g, '\\.')));
    await noSidewaysScroll(p, 'start page on a phone');
    await accessible(p, 'start page on a phone');
    await p.keyboard.press('Tab');
    assert.equal(await p.evaluate(() => document.activeElement.textContent), 'Connect with Google');
    await p.keyboard.press('Enter');
    await p.getByTestId('sandbox-banner').waitFor({ state: 'visible' });
    await consentAs(p, PHONE_OWNER);
    await p.locator('h1', { hasText: 'Connected' }).waitFor();
    assert.match(await p.locator('main').textContent(), /You can close this window/);
    await noSidewaysScroll(p, 'finish page on a phone');
    await accessible(p, 'finish page on a phone');
    await p.screenshot({ path: path.join(SHOTS, 'connect-link-phone.png'), fullPage: true });
    assert.deepEqual(problems, []);
  } finally {
    await ctx.close();
  }
  await page.reload();
  await rowFor(PHONE_OWNER).waitFor();
  await eventually(async () => (await byTestId('link-row').count()) === 0);
  assert.match(await byTestId('links-summary').textContent(), /2 used/);
});

test('(f) a revoked link says so to its owner', async () => {
  await byTestId('link-submit').click();
  await eventually(async () => (await byTestId('link-row').count()) === 1);
  const url = await byTestId('link-url').inputValue();
  const row = byTestId('link-row');
  assert.match(await row.textContent(), /Any mailbox/);

  await row.getByTestId('link-revoke').click();
  const dialog = byTestId('confirm-dialog');
  await dialog.waitFor({ state: 'visible' });
  assert.match(await dialog.textContent(), /Revoke connect link\?/);
  await byTestId('confirm-disconnect').click();
  await eventually(async () => (await byTestId('link-row').count()) === 0);
  assert.match(await byTestId('links-summary').textContent(), /1 revoked/);
  assert.match(await byTestId('banner').textContent(), /no longer works/);

  const { ctx, p } = await ownerWindow(PHONE);
  try {
    const res = await p.goto(url);
    assert.equal(res.status(), 410);
    assert.match(await p.locator('main').textContent(), /revoked/);
    await noSidewaysScroll(p, 'revoked page on a phone');
    await accessible(p, 'revoked-link page');
  } finally {
    await ctx.close();
  }
  // The disconnect dialog still says disconnect.
  await rowFor(GOOGLE_MAILBOX).getByTestId('disconnect').click();
  await dialog.waitFor({ state: 'visible' });
  assert.match(await dialog.textContent(), /Disconnect mailbox\?/);
  await byTestId('confirm-cancel').click();
  await dialog.waitFor({ state: 'hidden' });
});

test('the admin page has no serious accessibility violation, on a desktop and a phone', async () => {
  await page.goto(`${base}/`);
  await byTestId('links-summary').waitFor();
  await accessible(page, 'admin page');
  const { ctx, p } = await ownerWindow(PHONE);
  try {
    await p.goto(demoLink);
    await p.getByTestId('links-summary').waitFor();
    await noSidewaysScroll(p, 'admin page on a phone');
    await accessible(p, 'admin page on a phone');
  } finally {
    await ctx.close();
  }
});

test('sign out forgets the JWT', async () => {
  await byTestId('signout').click();
  await byTestId('jwt-input').waitFor({ state: 'visible' });
  assert.equal(await byTestId('link-url').inputValue(), '', 'a shown link is forgotten too');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('mailconnect.admin_jwt')), null);
  await page.reload();
  await byTestId('jwt-input').waitFor({ state: 'visible' });
  assert.deepEqual(pageProblems, [], 'no script errors or CSP violations');
});
