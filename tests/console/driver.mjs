// Drives the node's web console in headless Debian chromium (npm playwright-core; no browser download) with
// plain page commands: go to a URL, fill, click, wait for a selector or a condition, read text, evaluate,
// read a canvas as PNG, screenshot.
//
// Protocol (as tests/ohif/driver.mjs): one JSON command per line on stdin, one JSON answer per line on stdout:
//   {"cmd": "...", ...}  ->  {"ok": true, "result": ..., "events": [...], "ms": 123}
//                           {"ok": false, "error": "...", "screenshot": "...", "events": [...], "ms": 123}
// "events" are what the page did since the previous answer: console messages, page errors, failed requests,
// HTTP answers >= 400, requests to anything but the console's origin.
//
// Start: node driver.mjs '{"origin": "http://127.0.0.1:PORT", "artifacts": "/dir", "chromium": "/path"}'

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { chromium } from 'playwright-core';

const options = JSON.parse(process.argv[2]);
const origin = new URL(options.origin).origin;
const started = Date.now();
const seconds = () => +((Date.now() - started) / 1000).toFixed(2);

const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-default-apps',
  '--disable-extensions',
  '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
];

const events = [];
function record(kind, detail) {
  events.push({ t: seconds(), kind, ...detail });
}

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'console-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: options.chromium,
  headless: true,
  args: CHROMIUM_FLAGS,
  viewport: { width: options.width || 1440, height: options.height || 1000 },
  deviceScaleFactor: 1,
  acceptDownloads: false,
  serviceWorkers: 'block',
});
context.setDefaultTimeout(30000);
const page = context.pages()[0] || (await context.newPage());

page.on('console', message => {
  record('console', { type: message.type(), text: message.text().slice(0, 2000), url: message.location()?.url });
});
page.on('pageerror', error => record('pageerror', { text: String(error?.stack || error).slice(0, 4000) }));
page.on('crash', () => record('crash', { text: 'the page crashed' }));
page.on('request', request => {
  const url = request.url();
  if (!url.startsWith(origin) && !url.startsWith('data:') && !url.startsWith('blob:')) {
    record('external', { url, method: request.method() });
  }
});
page.on('requestfailed', request => {
  record('requestfailed', { url: request.url(), error: request.failure()?.errorText });
});
page.on('response', response => {
  if (response.status() >= 400) {
    record('http', { url: response.url(), status: response.status() });
  }
});

// A function's source called with a JSON argument, as an expression: playwright evaluates a string as an
// expression (a function's source would be a function value, always truthy, never called).
function call(functionSource, arg) {
  return `(${functionSource})(${JSON.stringify(arg)})`;
}

async function screenshot(name, fullPage = true) {
  const file = path.join(options.artifacts, `${name}.png`);
  await page.screenshot({ path: file, fullPage });
  return file;
}

const commands = {
  async goto({ url }) {
    await page.goto(new URL(url, origin).href, { waitUntil: 'load' });
    return { url: page.url() };
  },
  async fill({ selector, value }) {
    await page.locator(selector).fill(String(value));
    return {};
  },
  async check({ selector, checked = true }) {
    await page.locator(selector).setChecked(checked);
    return {};
  },
  async click({ selector }) {
    await page.locator(selector).click();
    return {};
  },
  async wait({ selector, state = 'visible', timeout = 30000 }) {
    await page.locator(selector).first().waitFor({ state, timeout });
    return {};
  },
  // ``expression``: a function source, called with ``arg`` in the page until it returns something truthy
  // (polled from here: page.waitForFunction evaluates its predicate with eval inside the page, which the
  // console's Content-Security-Policy forbids, as it should)
  async waitFor({ expression, arg = null, timeout = 30000, polling = 500 }) {
    const deadline = Date.now() + timeout;
    for (;;) {
      const value = await page.evaluate(call(expression, arg));
      if (value) {
        return value;
      }
      if (Date.now() > deadline) {
        throw new Error(`timed out after ${timeout} ms waiting for ${expression}`);
      }
      await page.waitForTimeout(polling);
    }
  },
  async text({ selector }) {
    return await page.locator(selector).first().innerText();
  },
  async evaluate({ expression, arg = null }) {
    return await page.evaluate(call(expression, arg));
  },
  // the pixels a canvas shows, as a PNG data URL (the page draws same-origin blobs, so it is readable)
  async canvas({ selector }) {
    return await page.locator(selector).evaluate(canvas => canvas.toDataURL('image/png'));
  },
  async screenshot({ name, fullPage = true }) {
    return { screenshot: await screenshot(name, fullPage) };
  },
  async close() {
    return {};
  },
};

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) {
    continue;
  }
  const command = JSON.parse(line);
  const begun = Date.now();
  let answer;
  try {
    const handler = commands[command.cmd];
    if (!handler) {
      throw new Error(`unknown command ${command.cmd}`);
    }
    answer = { ok: true, result: await handler(command) };
  } catch (error) {
    let shot = null;
    try {
      shot = await screenshot(`error-${command.cmd}-${Date.now()}`);
    } catch {
      // the page may be gone
    }
    answer = { ok: false, error: String(error?.stack || error), screenshot: shot };
  }
  answer.ms = Date.now() - begun;
  answer.events = events.splice(0);
  process.stdout.write(JSON.stringify(answer) + '\n');
  if (command.cmd === 'close') {
    break;
  }
}
lines.close();
await context.close();
fs.rmSync(userDataDir, { recursive: true, force: true });
process.exit(0);
