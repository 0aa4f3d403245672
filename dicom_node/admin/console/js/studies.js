// Studies received, newest first, with their live state; "Process now" completes one without waiting.

import { api } from './api.js';
import { badge, h, replace, say, short, table, when } from './dom.js';

export async function studiesPage(page) {
  const message = h('p', { class: 'message' });
  const holder = h('div', { id: 'studies' });
  replace(page.main, h('h1', {}, 'Studies'), message, holder);

  async function processNow(uid) {
    try {
      const done = await api(`/studies/${encodeURIComponent(uid)}/process`, { method: 'POST' });
      say(message, done.job_ids.length ? `Jobs started: ${done.job_ids.join(', ')}` : 'No new job: the study has its jobs.');
    } catch (error) {
      say(message, error.message, 'error');
    }
  }

  await page.every(3000, async () => {
    const { studies } = await api('/studies', { query: { limit: 200 } });
    const rows = studies.map(study =>
      h(
        'tr',
        { dataset: { study: study.study_instance_uid } },
        h('td', {}, h('a', { href: `#/studies/${encodeURIComponent(study.study_instance_uid)}`, title: study.study_instance_uid }, short(study.study_instance_uid, 14))),
        h('td', {}, study.calling_ae_title),
        h('td', {}, study.route ?? '—'),
        h('td', {}, badge(study.state)),
        h('td', { class: 'number' }, study.series),
        h('td', { class: 'number' }, study.instances),
        h('td', { class: 'number' }, study.jobs),
        h('td', {}, when(study.last_received_at)),
        h('td', {}, h('button', { type: 'button', class: 'small', onclick: () => processNow(study.study_instance_uid) }, 'Process now')),
      ),
    );
    if (page.alive()) {
      replace(holder, table(['Study', 'From', 'Route', 'State', 'Series', 'Instances', 'Jobs', 'Last received', ''], rows));
    }
  });
}
