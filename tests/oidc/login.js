#!/usr/bin/env node
// Headless-browser login driver (puppeteer-core + Debian's /usr/bin/chromium).
//
//   node login.js [options] URL
//
// Opens URL in a fresh headless Chromium profile, and whenever a page shows a
// login form (a form with a password field) fills --username/--password and
// submits; clicks through a consent page (form posting to /interaction/.../confirm)
// and an RP-initiated-logout confirmation (form#op.logoutForm) if one shows up.
// Prints one JSON document on stdout: every step, the final URL and page text,
// and all cookies of the browser. Exit codes: 0 ok, 2 timeout, 3 login rejected
// (login form shown again after submitting), 4 other error, 64 bad usage.
//
// Options (in any order; --then/--fetch run in the order given, after URL):
//   --username U | env LOGIN_USERNAME      --password P | env LOGIN_PASSWORD
//   --then URL     load URL afterwards in the same browser session (repeatable). A login form
//                  met during a --then step is reported (login.form_seen) but NOT filled,
//                  unless --relogin is given: this is how a test checks the IdP session is reused.
//   --fetch URL    non-navigation fetch() from the current page (Accept: application/json,
//                  X-Requested-With: XMLHttpRequest, credentials: include), repeatable;
//                  reports status/type/body. --fetch-redirect manual|follow (default manual:
//                  a 3xx shows as type "opaqueredirect", status 0).
//   --relogin      also fill login forms met during --then steps
//   --timeout SEC  overall bound (default 30)
//   --chromium P   browser binary (default env CHROMIUM_PATH or /usr/bin/chromium)
//   --screenshot-dir D  save a PNG after every step (debugging)
//   --text-limit N      truncate page texts/bodies to N chars (default 20000)

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const t0 = Date.now();
const usage = () => {
  process.stderr.write('usage: node login.js [--username U] [--password P] [--then URL]... [--fetch URL]... '
    + '[--fetch-redirect manual|follow] [--relogin] [--timeout SEC] [--chromium PATH] [--screenshot-dir DIR] URL\n');
  process.exit(64);
};

// ---------------------------------------------------------------- args
// Loopback, plus what a test names: LOGIN_HOST_MAP="name=10.244.2.10,..." (names the browser
// resolves to addresses of namespaces the test created) and LOGIN_ALLOWED_HOSTS (addresses).
const HOST_MAP = (process.env.LOGIN_HOST_MAP || '').split(/[\s,]+/).filter(Boolean).map((e) => e.split('='));
const ALLOWED_HOSTS = ['127.0.0.1', 'localhost', '[::1]', ...HOST_MAP.map(([name]) => name),
  ...(process.env.LOGIN_ALLOWED_HOSTS || '').split(/[\s,]+/).filter(Boolean)];
const opts = {
  username: process.env.LOGIN_USERNAME, password: process.env.LOGIN_PASSWORD, timeout: 30,
  chromium: process.env.CHROMIUM_PATH || '/usr/bin/chromium', relogin: false, fetchRedirect: 'manual',
  screenshotDir: undefined, textLimit: 20000,
};
const actions = [];
let firstUrl;
{
  const a = process.argv.slice(2);
  const val = (i) => { if (i + 1 >= a.length) usage(); return a[i + 1]; };
  for (let i = 0; i < a.length; i += 1) {
    switch (a[i]) {
      case '--username': opts.username = val(i); i += 1; break;
      case '--password': opts.password = val(i); i += 1; break;
      case '--then': actions.push({ kind: 'navigate', url: val(i) }); i += 1; break;
      case '--fetch': actions.push({ kind: 'fetch', url: val(i) }); i += 1; break;
      case '--fetch-redirect': opts.fetchRedirect = val(i); i += 1; break;
      case '--relogin': opts.relogin = true; break;
      case '--timeout': opts.timeout = Number(val(i)); i += 1; break;
      case '--chromium': opts.chromium = val(i); i += 1; break;
      case '--screenshot-dir': opts.screenshotDir = val(i); i += 1; break;
      case '--text-limit': opts.textLimit = Number(val(i)); i += 1; break;
      case '-h': case '--help': usage(); break;
      default:
        if (a[i].startsWith('--') || firstUrl) usage();
        firstUrl = a[i];
    }
  }
  if (!firstUrl || !(opts.timeout > 0) || !['manual', 'follow'].includes(opts.fetchRedirect)) usage();
  actions.unshift({ kind: 'navigate', url: firstUrl, first: true });
  for (const act of actions) {
    let u; try { u = new URL(act.url); } catch { process.stderr.write(`login.js: not a URL: ${act.url}\n`); process.exit(64); }
    if (!ALLOWED_HOSTS.includes(u.hostname)) { process.stderr.write(`login.js: refusing a URL outside the allowed hosts ${act.url}\n`); process.exit(64); }
  }
}

// ---------------------------------------------------------------- lifecycle
let browser;
let profileDir;
let phase = 'starting';
let finished = false;
function cleanupSync() {
  const pid = browser?.process()?.pid;
  if (pid) {
    // puppeteer starts the browser detached, in its own process group: kill the whole group.
    try { process.kill(-pid, 'SIGKILL'); } catch { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
  }
  if (profileDir) { try { fs.rmSync(profileDir, { recursive: true, force: true }); } catch { /* ignore */ } }
}
function die(code, message, extra = {}) {
  if (finished) return;
  finished = true;
  process.stderr.write(`login.js: ERROR: ${message}\n`);
  process.stdout.write(`${JSON.stringify({ ok: false, error: message, exit_code: code, phase, elapsed_ms: Date.now() - t0, ...extra }, null, 2)}\n`);
  cleanupSync();
  process.exit(code);
}
const deadline = t0 + opts.timeout * 1000;
const remaining = () => Math.max(1, deadline - Date.now());
setTimeout(() => die(2, `timeout: no result within ${opts.timeout}s (while ${phase})`), opts.timeout * 1000).unref?.();
// Keep the event loop alive until we finish (the timer above is unref'd to allow a clean exit).
const keepAlive = setInterval(() => {}, 1000);
for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(sig, () => die(4, `killed by ${sig}`));
process.on('uncaughtException', (e) => die(4, `uncaught: ${e?.stack || e}`));
process.on('unhandledRejection', (e) => die(4, `unhandled rejection: ${e?.stack || e}`));

const clip = (s) => (typeof s === 'string' && s.length > opts.textLimit ? `${s.slice(0, opts.textLimit)}…[truncated]` : s);

// ---------------------------------------------------------------- page inspection
async function inspect(page) {
  return page.evaluate(() => {
    const forms = [...document.forms];
    const login = forms.find((f) => f.querySelector('input[type=password]'));
    const logout = document.getElementById('op.logoutForm');
    const consent = document.getElementById('consent-form')
      || forms.find((f) => f !== login && /\/interaction\/[^/]+\/(confirm|consent)/.test(f.getAttribute('action') || ''));
    const err = document.querySelector('#login-error, [role=alert]');
    return {
      kind: login ? 'login' : (logout ? 'logout-confirm' : (consent ? 'consent' : 'other')),
      loginError: login && err ? err.innerText.trim() : undefined,
    };
  });
}
async function fillLogin(page) {
  return page.evaluate((username, password) => {
    const form = [...document.forms].find((f) => f.querySelector('input[type=password]'));
    const pw = form.querySelector('input[type=password]');
    const user = form.querySelector('input[name=username], input[name=login], input[name=email], input[autocomplete=username], input[type=email]')
      || [...form.querySelectorAll('input')].find((i) => ['text', 'email', ''].includes(i.getAttribute('type') || '') && i !== pw);
    const setVal = (el, v) => { el.focus(); el.value = v; el.dispatchEvent(new Event('input', { bubbles: true })); el.dispatchEvent(new Event('change', { bubbles: true })); };
    if (user) setVal(user, username);
    setVal(pw, password);
    const submit = form.querySelector('button[type=submit], input[type=submit], button:not([type])');
    // Mark the elements so the caller can click them through the DOM with a real navigation.
    form.setAttribute('data-login-driver', 'form');
    if (submit) submit.setAttribute('data-login-driver', 'submit');
    return {
      form_action: form.getAttribute('action'), form_method: form.getAttribute('method'),
      username_field: user ? user.name : null, password_field: pw.name,
      submit_button: submit ? { tag: submit.tagName.toLowerCase(), id: submit.id || null, name: submit.name || null, text: (submit.innerText || submit.value || '').trim() } : null,
    };
  }, opts.username ?? '', opts.password ?? '');
}

async function clickAndWait(page, selectorOrFn) {
  const nav = page.waitForNavigation({ waitUntil: 'load', timeout: remaining() });
  if (typeof selectorOrFn === 'string') await page.click(selectorOrFn);
  else await page.evaluate(selectorOrFn);
  return nav;
}

function hop(via, response, page) {
  const chain = response ? [...response.request().redirectChain().map((r) => r.url()), response.url()] : [page.url()];
  return { via, status: response ? response.status() : null, url: page.url(), chain };
}

async function navigateStep(page, act, idx) {
  const stepStart = Date.now();
  const step = {
    kind: 'navigate', url: act.url, hops: [],
    login: { form_seen: false, performed: false }, consent_clicked: false, logout_confirmed: false, timings_ms: {},
  };
  phase = `step ${idx}: loading ${act.url}`;
  let resp = await page.goto(act.url, { waitUntil: 'load', timeout: remaining() });
  step.hops.push(hop('goto', resp, page));
  const mayLogin = act.first || opts.relogin;
  for (let round = 0; round < 10; round += 1) {
    const info = await inspect(page);
    if (info.kind === 'login') {
      step.login.form_seen = true;
      step.timings_ms.login_page_shown = step.timings_ms.login_page_shown ?? Date.now() - stepStart;
      if (step.login.performed) {
        die(3, `login rejected: the login form was shown again after submitting${info.loginError ? ` (${info.loginError})` : ''}`,
          { final_url: page.url(), text: clip(await page.evaluate(() => document.body?.innerText ?? '')) });
      }
      if (!mayLogin) break; // report it; do not fill
      if (opts.username === undefined || opts.password === undefined) die(64, 'a login form was shown but --username/--password were not given');
      phase = `step ${idx}: submitting login form at ${page.url()}`;
      step.login.form = await fillLogin(page);
      const tSubmit = Date.now();
      resp = await clickAndWait(page, step.login.form.submit_button ? '[data-login-driver=submit]' : () => document.querySelector('[data-login-driver=form]').requestSubmit());
      step.login.performed = true;
      step.timings_ms.login_submit_to_load = Date.now() - tSubmit;
      step.hops.push(hop('login-submit', resp, page));
    } else if (info.kind === 'consent') {
      phase = `step ${idx}: confirming consent at ${page.url()}`;
      resp = await clickAndWait(page, () => {
        const f = document.getElementById('consent-form') || [...document.forms].find((x) => /\/interaction\//.test(x.getAttribute('action') || ''));
        const b = f.querySelector('button[type=submit], input[type=submit], button:not([type])');
        if (b) b.click(); else f.requestSubmit();
      });
      step.consent_clicked = true;
      step.hops.push(hop('consent-submit', resp, page));
    } else if (info.kind === 'logout-confirm') {
      phase = `step ${idx}: confirming logout at ${page.url()}`;
      resp = await clickAndWait(page, () => {
        const yes = document.querySelector('button[form="op.logoutForm"][name=logout][value=yes], #logout-yes');
        if (yes) { yes.click(); return; }
        const f = document.getElementById('op.logoutForm');
        const i = document.createElement('input'); i.type = 'hidden'; i.name = 'logout'; i.value = 'yes'; f.appendChild(i); f.requestSubmit();
      });
      step.logout_confirmed = true;
      step.hops.push(hop('logout-confirm', resp, page));
    } else {
      break;
    }
  }
  step.final_url = page.url();
  step.status = resp ? resp.status() : null;
  step.title = await page.title();
  step.text = clip(await page.evaluate(() => document.body?.innerText ?? ''));
  step.elapsed_ms = Date.now() - stepStart;
  return step;
}

async function fetchStep(page, act) {
  phase = `fetch ${act.url}`;
  const started = Date.now();
  const r = await page.evaluate(async (url, redirect, timeoutMs) => {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), timeoutMs);
    try {
      const res = await fetch(url, {
        method: 'GET', credentials: 'include', redirect, signal: ctl.signal,
        headers: { Accept: 'application/json', 'X-Requested-With': 'XMLHttpRequest' },
      });
      const body = res.type === 'opaqueredirect' ? '' : await res.text();
      return { status: res.status, ok: res.ok, type: res.type, redirected: res.redirected, final_url: res.url, content_type: res.headers.get('content-type'), body };
    } catch (e) {
      return { error: String(e) };
    } finally { clearTimeout(timer); }
  }, act.url, opts.fetchRedirect, Math.max(1, remaining() - 500));
  return { kind: 'fetch', url: act.url, from_page: page.url(), redirect_mode: opts.fetchRedirect, ...r, body: clip(r.body), elapsed_ms: Date.now() - started };
}

async function allCookies(page) {
  let cookies;
  try {
    const s = await browser.target().createCDPSession();
    ({ cookies } = await s.send('Storage.getCookies'));
  } catch {
    const s = await page.createCDPSession();
    ({ cookies } = await s.send('Network.getAllCookies'));
  }
  return cookies.map((c) => ({
    name: c.name, value: c.value, domain: c.domain, path: c.path, httpOnly: c.httpOnly, secure: c.secure,
    sameSite: c.sameSite ?? null, expires: c.expires, session: c.session,
  }));
}

// ---------------------------------------------------------------- main
async function main() {
  const { default: puppeteer } = await import('puppeteer-core');
  profileDir = fs.mkdtempSync(path.join(os.tmpdir(), 'login-js-profile-'));
  phase = 'launching chromium';
  const tLaunch = Date.now();
  browser = await puppeteer.launch({
    executablePath: opts.chromium,
    headless: true, // => --headless=new
    pipe: true, // CDP over a pipe: the browser opens no debugging port
    userDataDir: profileDir,
    timeout: remaining(),
    protocolTimeout: remaining(),
    handleSIGINT: false, handleSIGTERM: false, handleSIGHUP: false,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-default-apps',
      '--disable-extensions', '--metrics-recording-only', '--no-pings', '--password-store=basic',
      // Only the allowed hosts: every other name resolves to nothing (rules apply to IP literals too).
      `--host-resolver-rules=${[...HOST_MAP.map(([name, ip]) => `MAP ${name} ${ip}`), 'MAP * ~NOTFOUND',
        ...ALLOWED_HOSTS.filter((h) => !HOST_MAP.some(([name]) => name === h)).map((h) => `EXCLUDE ${h}`)].join(', ')}`,
      // The ingress's self-signed certificate (LOGIN_INSECURE_TLS=1, tests only).
      ...(process.env.LOGIN_INSECURE_TLS === '1' ? ['--ignore-certificate-errors'] : []),
    ],
  });
  const launchMs = Date.now() - tLaunch;
  const page = await browser.newPage();
  page.setDefaultTimeout(remaining());
  page.setDefaultNavigationTimeout(remaining());
  const steps = [];
  for (let i = 0; i < actions.length; i += 1) {
    const act = actions[i];
    const step = act.kind === 'navigate' ? await navigateStep(page, act, i) : await fetchStep(page, act);
    steps.push(step);
    if (opts.screenshotDir) {
      fs.mkdirSync(opts.screenshotDir, { recursive: true });
      await page.screenshot({ path: path.join(opts.screenshotDir, `step-${i}.png`), fullPage: true });
    }
  }
  phase = 'reading cookies';
  const cookies = await allCookies(page);
  const lastNav = [...steps].reverse().find((s) => s.kind === 'navigate');
  const out = {
    ok: true,
    browser: await browser.version(),
    final_url: lastNav.final_url,
    text: lastNav.text,
    steps,
    cookies,
    timings_ms: { launch: launchMs, first_step: steps[0].elapsed_ms, total: Date.now() - t0 },
  };
  phase = 'closing browser';
  await Promise.race([browser.close(), new Promise((r) => { setTimeout(r, 3000); })]);
  cleanupSync();
  finished = true;
  clearInterval(keepAlive);
  process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
  process.exit(0);
}

main().catch((e) => {
  const msg = String(e?.message || e);
  if (/timeout|timed out/i.test(msg) && Date.now() >= deadline - 1000) die(2, `timeout: no result within ${opts.timeout}s (while ${phase}): ${msg}`);
  die(4, `${msg} (while ${phase})`);
});
