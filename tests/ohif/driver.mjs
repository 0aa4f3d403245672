// Drives OHIF Viewer 3.13.2 in headless Debian chromium (npm playwright-core; no browser download) the way
// a radiologist uses it: study list -> viewer, double-click a series in the study browser, answer the SEG
// prompt, open the segmentation panel, step through SR measurements.
//
// Protocol, page events, browser launch and command loop: tests/helpers/browser_driver.mjs (shared with
// tests/console/driver.mjs); "events" name requests to anything but the viewer's origin as "external".
//
// Start: node driver.mjs '{"viewer": "http://127.0.0.1:PORT", "artifacts": "/dir", "chromium": "/path"}'

import path from 'node:path';
import { chromium } from 'playwright-core';
import * as browserDriver from '../helpers/browser_driver.mjs';

const options = JSON.parse(process.argv[2]);
const viewerOrigin = new URL(options.viewer).origin;
const events = browserDriver.eventLog();

// The requests in flight and when the network last changed, for ``networkIdle``.
const inflight = new Set();
let lastNetworkActivity = Date.now();

// The offline flags, and WebGL rendered on the CPU (SwiftShader through ANGLE).
const CHROMIUM_FLAGS = [
  ...browserDriver.OFFLINE_CHROMIUM_FLAGS,
  '--use-angle=swiftshader',
  '--enable-unsafe-swiftshader',
];

const { context, page, userDataDir } = await browserDriver.launchChromium(chromium, {
  executablePath: options.chromium,
  args: CHROMIUM_FLAGS,
  viewport: { width: options.width || 1600, height: options.height || 1000 },
  profilePrefix: 'ohif-chromium-',
});
browserDriver.recordPageEvents(page, viewerOrigin, events.record);

page.on('request', request => {
  inflight.add(request);
  lastNetworkActivity = Date.now();
});
const finished = request => {
  inflight.delete(request);
  lastNetworkActivity = Date.now();
};
page.on('requestfinished', finished);
page.on('requestfailed', finished);

async function networkIdle(quietMs = 600, timeoutMs = 60000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (inflight.size === 0 && Date.now() - lastNetworkActivity >= quietMs) {
      return;
    }
    await page.waitForTimeout(100);
  }
  throw new Error(`network still busy after ${timeoutMs} ms: ${[...inflight].slice(0, 5).map(r => r.url())}`);
}

async function animationFrames() {
  await page.evaluate(() => new Promise(resolve => requestAnimationFrame(() => requestAnimationFrame(resolve))));
}

async function settle(extraMs = 400) {
  await networkIdle();
  await animationFrames();
  await page.waitForTimeout(extraMs);
  await animationFrames();
}

// What the visible cornerstone viewport shows, and where image pixels land on the page: the page
// coordinates of cornerstone's image coordinates (x = column, y = row) (0, 0), (1, 0) and (0, 1); (0, 0)
// is the top-left corner of the top-left pixel (an image fitted to the viewport starts at the canvas edge).
async function viewportState() {
  return page.evaluate(() => {
    const cornerstone = window.cornerstone;
    const enabled = cornerstone
      .getEnabledElements()
      .filter(e => e.viewport?.element?.isConnected && e.viewport.element.getBoundingClientRect().width > 0);
    if (!enabled.length) {
      return null;
    }
    const viewport = enabled[0].viewport;
    const canvas = viewport.canvas || viewport.element.querySelector('canvas');
    const rect = canvas.getBoundingClientRect();
    const imageId = viewport.getCurrentImageId?.();
    const state = {
      viewportId: viewport.id,
      type: viewport.type,
      imageId,
      imageIndex: viewport.getCurrentImageIdIndex?.(),
      imageCount: viewport.getImageIds?.().length,
      canvas: { x: rect.left, y: rect.top, width: rect.width, height: rect.height },
      devicePixelRatio: window.devicePixelRatio,
    };
    const match = /\/instances\/([0-9.]+)/.exec(imageId || '');
    state.sopInstanceUid = match ? match[1] : null;
    if (imageId) {
      const toPage = point => {
        const world = cornerstone.utilities.imageToWorldCoords(imageId, point);
        const onCanvas = viewport.worldToCanvas(world);
        return [rect.left + onCanvas[0], rect.top + onCanvas[1]];
      };
      try {
        state.pixelToPage = { origin: toPage([0, 0]), column: toPage([1, 0]), row: toPage([0, 1]) };
      } catch (error) {
        state.pixelToPageError = String(error);
      }
    }
    return state;
  });
}

async function screenshot(name) {
  const file = path.join(options.artifacts, `${name}.png`);
  await page.screenshot({ path: file });
  return file;
}

// Park the pointer on the empty bottom of the study browser, so that no hover card covers the viewport.
async function movePointerAway() {
  const size = page.viewportSize();
  await page.mouse.move(20, size.height - 10);
}

async function closeCinePlayer() {
  const close = page.locator('[data-cy=cine-player-close]');
  if (await close.count()) {
    await close.first().click();
  }
}

function thumbnail(seriesNumber) {
  // Study browser items show "S:<Series Number>"; images have a thumbnail, SEG and SR a list entry.
  return page
    .locator('[data-cy=study-browser-thumbnail], [data-cy=study-browser-thumbnail-no-image]')
    .filter({ hasText: new RegExp(`S:${seriesNumber}(\\D|$)`) });
}

async function waitForImageOf(seriesInstanceUid, timeoutMs = 60000) {
  await page.waitForFunction(
    uid => {
      const enabled = window.cornerstone?.getEnabledElements() || [];
      return enabled.some(e => (e.viewport.getCurrentImageId?.() || '').includes(`/series/${uid}/`));
    },
    seriesInstanceUid,
    { timeout: timeoutMs, polling: 200 },
  );
}

async function segmentationRows() {
  return page.evaluate(() =>
    [...document.querySelectorAll('[data-cy=data-row]')].map(row => ({
      title: row.querySelector('[data-cy=data-row-title]')?.textContent?.trim(),
      color: row.querySelector('[data-cy=data-row-colorhex]')?.style?.backgroundColor,
      number: row.children[1]?.textContent?.trim(),
    })),
  );
}

// The measurement the SR viewport shows: its texts, the image, a screenshot. OHIF 3.13.2 sometimes loads an
// SR's annotations without drawing them until the viewport renders again (seen when every image was cached
// already); a user then scrolls a slice away and back, and so does this (reported as "nudged").
async function shownMeasurement(name) {
  let nudged = false;
  try {
    await page.waitForFunction(() => document.querySelectorAll('svg text').length > 0, null, { timeout: 5000 });
  } catch {
    nudged = true;
    const before = (await viewportState()).imageIndex;
    const box = await page.locator('[data-cy=viewport-pane]').first().boundingBox();
    await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
    await page.mouse.wheel(0, 120); // a slice away (nothing happens on the last slice) ...
    await settle(300);
    if ((await viewportState()).imageIndex === before) {
      await page.mouse.wheel(0, -120);
      await settle(300);
    }
    for (let step = 0; step < 3 && (await viewportState()).imageIndex !== before; step += 1) {
      const now = (await viewportState()).imageIndex; // ... and back
      await page.mouse.wheel(0, now > before ? -120 : 120);
      await settle(300);
    }
    await movePointerAway();
    await page.waitForFunction(() => document.querySelectorAll('svg text').length > 0, null, { timeout: 15000 });
  }
  await settle(300);
  return {
    texts: await annotationTexts(),
    viewport: await viewportState(),
    nudged,
    screenshot: name ? await screenshot(name) : null,
  };
}

async function annotationTexts() {
  return page.evaluate(() =>
    [...document.querySelectorAll('svg text')]
      .map(node => node.textContent.trim())
      .filter(Boolean),
  );
}

const commands = {
  // The study list, the study's row, then a workflow button ("Basic Viewer").
  async open_study({ row_text, study_instance_uid, workflow = 'Basic Viewer' }) {
    await page.goto(`${options.viewer}/`);
    const row = page.getByText(row_text, { exact: true }).first();
    await row.waitFor({ timeout: 60000 });
    const listShown = events.seconds();
    await row.click();
    await page.getByRole('button', { name: workflow }).click();
    await page.waitForURL(url => url.searchParams.get('StudyInstanceUIDs') === study_instance_uid, {
      timeout: 60000,
    });
    await page.locator('[data-cy=study-browser-thumbnail]').first().waitFor({ timeout: 60000 });
    await settle();
    await closeCinePlayer();
    const items = await page
      .locator('[data-cy=study-browser-thumbnail], [data-cy=study-browser-thumbnail-no-image]')
      .allInnerTexts();
    return { url: page.url(), list_shown_s: listShown, study_browser: items.map(t => t.replace(/\s+/g, ' ')) };
  },

  // Double-click an image series (CT, MR, SC) in the study browser and wait until it is drawn.
  async show_series({ series_number, series_instance_uid, name }) {
    await thumbnail(series_number).first().dblclick();
    await waitForImageOf(series_instance_uid);
    await settle(800);
    await closeCinePlayer();
    await settle(200);
    const state = await viewportState();
    return { viewport: state, screenshot: name ? await screenshot(name) : null };
  },

  // Double-click a SEG, answer "Yes" to open it (hydrate), open the segmentation panel, read its rows.
  async load_seg({ series_number, name }) {
    await thumbnail(series_number).first().dblclick();
    const yes = page.getByRole('button', { name: 'Yes' });
    await yes.waitFor({ timeout: 60000 });
    const previewScreenshot = name ? await screenshot(`${name}-prompt`) : null;
    await yes.click();
    await settle();
    const panelButton = page.locator('[data-cy=panelSegmentation-btn]');
    if ((await page.locator('[data-cy=data-row]').count()) === 0) {
      await panelButton.click();
    }
    await page.locator('[data-cy=data-row]').first().waitFor({ timeout: 30000 });
    await settle();
    await closeCinePlayer();
    const segmentations = await page.evaluate(() =>
      window.services.segmentationService.getSegmentations().map(s => ({
        id: s.segmentationId,
        label: s.label,
        segments: Object.values(s.segments || {})
          .filter(Boolean)
          .map(segment => ({ index: segment.segmentIndex, label: segment.label })),
      })),
    );
    return {
      rows: await segmentationRows(),
      segmentations,
      selected: await page.locator('[data-cy=segmentation-select-value]').first().textContent().catch(() => null),
      viewport: await viewportState(),
      prompt_screenshot: previewScreenshot,
    };
  },

  // Click a segment's row: OHIF jumps to the slice through the segment's centre.
  // Click a segment's row: OHIF jumps to the slice through the segment's centre. The pointer then leaves
  // the row, so that the statistics card OHIF may show on hover does not cover the viewport.
  async select_segment({ title, name }) {
    await page.locator('[data-cy=data-row-title]', { hasText: title }).first().click();
    await movePointerAway();
    await page.getByText('Voxel Count', { exact: true }).first().waitFor({ state: 'hidden', timeout: 10000 });
    await settle(800);
    return { viewport: await viewportState(), screenshot: name ? await screenshot(name) : null };
  },

  // Hide or show every segment with the panel's eye, then screenshot.
  async toggle_segments({ name }) {
    await page.locator('[data-cy=all-segments-visibility-toggle]').first().click();
    await movePointerAway();
    await settle(800);
    return { viewport: await viewportState(), screenshot: name ? await screenshot(name) : null };
  },

  // Double-click an SR: OHIF loads it and shows its first measurement on the image that measurement's 2D
  // outline references.
  async load_sr({ series_number, series_instance_uid, name }) {
    await thumbnail(series_number).first().dblclick();
    await page.waitForFunction(
      uid => {
        const displaySet = window.services.displaySetService
          .getActiveDisplaySets()
          .find(d => d.SeriesInstanceUID === uid);
        const drawable = window.cornerstoneTools.annotation.state
          .getAllAnnotations()
          .some(a => a.metadata?.toolName === 'DICOMSRDisplay');
        return displaySet?.isLoaded && drawable;
      },
      series_instance_uid,
      { timeout: 60000, polling: 200 },
    );
    await settle(800);
    await closeCinePlayer();
    const displaySet = await page.evaluate(
      uid => {
        const found = window.services.displaySetService
          .getActiveDisplaySets()
          .find(d => d.SeriesInstanceUID === uid);
        return {
          isLoaded: found.isLoaded,
          isRehydratable: found.isRehydratable,
          measurements: (found.measurements || []).map(m => ({
            TrackingIdentifier: m.TrackingIdentifier,
            TrackingUniqueIdentifier: m.TrackingUniqueIdentifier,
            graphicType: m.graphicType,
            ReferencedSOPInstanceUID: m.ReferencedSOPInstanceUID,
            labels: m.labels,
          })),
        };
      },
      series_instance_uid,
    );
    // OHIF asks "Do you want to continue tracking measurements for this study?" when it thinks it can turn
    // the SR into editable measurements; the test only views the SR and leaves the question open.
    const trackingPrompt = await page.getByText('continue tracking measurements').count();
    return { display_set: displaySet, tracking_prompt: trackingPrompt > 0, shown: await shownMeasurement(name) };
  },

  // The viewport's "next measurement" arrow, ``count`` times; then what is shown.
  async sr_next({ count = 1, name }) {
    for (let step = 0; step < count; step += 1) {
      await page.locator('[data-cy=viewport-action-arrows-right]').first().click();
      await settle(300);
    }
    await settle(500);
    return { shown: await shownMeasurement(name) };
  },

  async screenshot({ name }) {
    return { screenshot: await screenshot(name), viewport: await viewportState() };
  },
};

await browserDriver.serveCommands(commands, { events, screenshot, context, userDataDir });
