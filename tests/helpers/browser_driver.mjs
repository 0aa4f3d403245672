// What tests/console/driver.mjs and tests/ohif/driver.mjs share: headless Debian chromium launched off the
// network in a throwaway profile, the page's events kept until the next answer, and the line protocol.
//
// Protocol: one JSON command per line on stdin, one JSON answer per line on stdout:
//   {"cmd": "...", ...}  ->  {"ok": true, "result": ..., "events": [...], "ms": 123}
//                           {"ok": false, "error": "...", "screenshot": "...", "events": [...], "ms": 123}
// "events" are what the page did since the previous answer: console messages, page errors, crashes, failed
// requests, HTTP answers >= 400, requests to anything but the page's origin. "close" ends the driver.
//
// This folder has no node_modules: each driver imports playwright-core from its own and hands ``chromium`` in.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';

// Headless without a sandbox or a GPU, and off the network: everything but 127.0.0.1 is unresolvable.
export const OFFLINE_CHROMIUM_FLAGS = [
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

// The events of the next answer, each stamped with ``t``, the seconds since this log was made.
export function eventLog() {
  const started = Date.now();
  const events = [];
  const seconds = () => +((Date.now() - started) / 1000).toFixed(2);
  const record = (kind, detail) => {
    events.push({ t: seconds(), kind, ...detail });
  };
  const take = () => events.splice(0);
  return { seconds, record, take };
}

// A persistent context of Debian's chromium at ``executablePath`` in a new profile folder under the system's
// temporary folder (``serveCommands`` removes it), and its page. ``defaultTimeout`` (ms), when given, is set
// on the context before the page is taken.
export async function launchChromium(chromium, options) {
  const { executablePath, args, viewport, profilePrefix, defaultTimeout } = options;
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), profilePrefix));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args,
    viewport,
    deviceScaleFactor: 1,
    acceptDownloads: false,
    serviceWorkers: 'block',
  });
  if (defaultTimeout !== undefined) {
    context.setDefaultTimeout(defaultTimeout);
  }
  const page = context.pages()[0] || (await context.newPage());
  return { context, page, userDataDir };
}

// Record what ``page`` does with ``record(kind, detail)``; requests to ``origin`` and data: and blob: URLs are
// the page's own, any other is recorded as "external".
export function recordPageEvents(page, origin, record) {
  page.on('console', message => {
    const location = message.location();
    record('console', { type: message.type(), text: message.text().slice(0, 2000), url: location?.url });
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
}

// Answer the commands on stdin with ``commands[cmd](command)`` until "close" (answered with {}) or the end of
// stdin, then close the browser, remove its profile and exit. A command that throws answers with its error and
// ``screenshot(name)``, the file of a screenshot of the page, when one can still be taken.
export async function serveCommands(driverCommands, { events, screenshot, context, userDataDir }) {
  const commands = { close: async () => ({}), ...driverCommands };
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
    answer.events = events.take();
    process.stdout.write(JSON.stringify(answer) + '\n');
    if (command.cmd === 'close') {
      break;
    }
  }
  lines.close();
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
  process.exit(0);
}
