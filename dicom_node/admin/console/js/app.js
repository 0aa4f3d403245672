// The console's shell: log in with the token, then one page per hash route. A page gets a context whose
// `every(ms, refresh)` polls until the user goes to another page.

import { api, clearToken, onUnauthorised, setToken, token, tokenAccepted } from './api.js';
import { configPage } from './config.js';
import { replace } from './dom.js';
import { jobPage, jobsPage } from './jobs.js';
import { studiesPage } from './studies.js';
import { studyPage } from './study.js';

const view = document.getElementById('view');
const login = document.getElementById('login');
const nav = document.getElementById('nav');
let generation = 0;

const ROUTES = [
  [/^#\/studies\/([^/?]+)(?:\?job=([^&]+))?$/, (page, m) => studyPage(page, decodeURIComponent(m[1]), m[2] && decodeURIComponent(m[2]))],
  [/^#\/jobs\/([^/?]+)$/, (page, m) => jobPage(page, decodeURIComponent(m[1]))],
  [/^#\/jobs$/, page => jobsPage(page)],
  [/^#\/config$/, page => configPage(page)],
  [/^(?:#\/?(?:studies)?)?$/, page => studiesPage(page)],
];

function pageContext(mine) {
  const alive = () => mine === generation;
  return {
    main: view,
    alive,
    /** Run ``refresh`` now and every ``ms`` after it ends, while this page is shown. */
    every(ms, refresh) {
      const tick = async () => {
        if (!alive()) {
          return;
        }
        try {
          await refresh();
        } catch (error) {
          console.warn('refresh failed:', error.message);
        }
        if (alive()) {
          setTimeout(tick, ms);
        }
      };
      return tick();
    },
  };
}

function showLogin(message = '') {
  generation += 1;
  nav.hidden = true;
  view.hidden = true;
  login.hidden = false;
  document.getElementById('login-message').textContent = message;
  document.getElementById('token').focus();
}

async function show() {
  if (!token()) {
    showLogin();
    return;
  }
  login.hidden = true;
  nav.hidden = false;
  view.hidden = false;
  generation += 1;
  const page = pageContext(generation);
  const hash = location.hash || '#/studies';
  for (const link of nav.querySelectorAll('[data-nav]')) {
    link.classList.toggle('current', hash.startsWith(`#/${link.dataset.nav}`));
  }
  replace(view);
  for (const [pattern, render] of ROUTES) {
    const match = hash.match(pattern);
    if (match) {
      try {
        await render(page, match);
      } catch (error) {
        if (page.alive()) {
          replace(view, Object.assign(document.createElement('p'), { className: 'message error', textContent: error.message }));
        }
      }
      return;
    }
  }
  replace(view, Object.assign(document.createElement('p'), { className: 'message error', textContent: `No page ${hash}` }));
}

async function showNodeTitle() {
  try {
    const node = await api('/config/ae');
    document.getElementById('node-ae').textContent = `${node.ae_title} · DICOM port ${node.listening_port ?? 'closed'}`;
  } catch {
    // the pages say what is wrong
  }
}

document.getElementById('login-form').addEventListener('submit', async event => {
  event.preventDefault();
  const candidate = document.getElementById('token').value.trim();
  const message = document.getElementById('login-message');
  try {
    if (!(await tokenAccepted(candidate))) {
      message.textContent = 'The node refused this token.';
      return;
    }
  } catch (error) {
    message.textContent = `The node cannot be reached: ${error.message}`;
    return;
  }
  setToken(candidate);
  document.getElementById('token').value = '';
  showNodeTitle();
  show();
});

document.getElementById('logout').addEventListener('click', () => {
  clearToken();
  showLogin('Logged out.');
});

onUnauthorised(() => {
  clearToken();
  showLogin('The node refused the token; log in again.');
});

window.addEventListener('hashchange', show);
if (token()) {
  showNodeTitle();
}
show();
