// Drives the node's web console in headless Debian chromium (npm playwright-core; no browser download) with
// plain page commands: go to a URL, fill, click, wait for a selector or a condition, read text, evaluate,
// read a canvas as PNG, screenshot.
//
// Protocol, page events, browser launch and command loop: tests/helpers/browser_driver.mjs (shared with
// tests/ohif/driver.mjs); "events" name requests to anything but the console's origin as "external".
//
// Start: node driver.mjs '{"origin": "http://127.0.0.1:PORT", "artifacts": "/dir", "chromium": "/path"}'

import path from 'node:path';
import { chromium } from 'playwright-core';
import * as browserDriver from '../helpers/browser_driver.mjs';

const options = JSON.parse(process.argv[2]);
const origin = new URL(options.origin).origin;
const events = browserDriver.eventLog();

const { context, page, userDataDir } = await browserDriver.launchChromium(chromium, {
  executablePath: options.chromium,
  args: browserDriver.OFFLINE_CHROMIUM_FLAGS,
  viewport: { width: options.width || 1440, height: options.height || 1000 },
  profilePrefix: 'console-chromium-',
  defaultTimeout: 30000,
});
browserDriver.recordPageEvents(page, origin, events.record);

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
};

await browserDriver.serveCommands(commands, { events, screenshot, context, userDataDir });
