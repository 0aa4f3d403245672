// One study: its series and jobs (live), a viewer of a job's frames with its masks drawn over the source
// slices (rendered by the node: GET /jobs/{id}/frames/{n}), the job's key images (its SC outputs), and the
// agent chat: a question goes to POST /studies/{uid}/ask with wait false, then the job is followed until
// its answer comes.

import { api, imageBlob } from './api.js';
import { badge, h, replace, say, short, table, when } from './dom.js';
import { answerView, planView, resultView } from './jobs.js';

export async function studyPage(page, studyUid, wantedJob) {
  const study = await api(`/studies/${encodeURIComponent(studyUid)}`);
  if (!page.alive()) {
    return;
  }
  const facts = h('dl', { class: 'facts' });
  const seriesHolder = h('div');
  const jobsHolder = h('div', { id: 'study-jobs' });
  const message = h('p', { class: 'message' });
  const viewer = new Viewer(page);
  const chat = new Chat(page, studyUid);
  replace(
    page.main,
    h('h1', {}, 'Study ', h('code', { title: studyUid }, short(studyUid, 16))),
    message,
    h(
      'div',
      { class: 'columns' },
      h('section', { class: 'column' }, facts, h('h2', {}, 'Series'), seriesHolder, h('h2', {}, 'Jobs'), jobsHolder, chat.element),
      h('section', { class: 'column' }, viewer.element),
    ),
  );

  let chosen = wantedJob || null;
  let lastStates = '';

  function render(detail) {
    replace(
      facts,
      h('dt', {}, 'State'), h('dd', {}, badge(detail.state)),
      h('dt', {}, 'From'), h('dd', {}, detail.calling_ae_title),
      h('dt', {}, 'Route'), h('dd', {}, detail.route ?? '—'),
      h('dt', {}, 'Instances'), h('dd', {}, detail.instances),
      h('dt', {}, 'Last received'), h('dd', {}, when(detail.last_received_at)),
      h('dt', {}, ''), h('dd', {}, h('button', { type: 'button', class: 'small', onclick: processNow }, 'Process now')),
    );
    replace(
      seriesHolder,
      table(
        ['Series', 'Modality', 'Description', 'Instances'],
        detail.series.map(series =>
          h(
            'tr',
            {},
            h('td', { title: series.series_instance_uid }, short(series.series_instance_uid, 12)),
            h('td', {}, series.attributes.Modality ?? ''),
            h('td', {}, series.attributes.SeriesDescription ?? ''),
            h('td', { class: 'number' }, series.instances),
          ),
        ),
      ),
    );
    replace(
      jobsHolder,
      table(
        ['Job', 'Instruction', 'Tools', 'State', 'Updated', ''],
        detail.jobs
          .slice()
          .reverse()
          .map(job =>
            h(
              'tr',
              { dataset: { job: job.job_id, state: job.state }, class: job.job_id === chosen ? 'chosen' : '' },
              h('td', {}, h('a', { href: `#/jobs/${job.job_id}` }, short(job.job_id, 6))),
              h('td', { class: 'instruction' }, job.instruction),
              h('td', {}, job.tools.join(', ')),
              h('td', {}, badge(job.state)),
              h('td', {}, when(job.updated_at)),
              h('td', {}, h('button', { type: 'button', class: 'small', dataset: { show: job.job_id }, onclick: () => choose(job.job_id) }, 'Show')),
            ),
          ),
      ),
    );
  }

  async function processNow() {
    try {
      const done = await api(`/studies/${encodeURIComponent(studyUid)}/process`, { method: 'POST' });
      say(message, done.job_ids.length ? `Jobs started: ${done.job_ids.join(', ')}` : 'No new job: the study has its jobs.');
    } catch (error) {
      say(message, error.message, 'error');
    }
  }

  function choose(jobId) {
    chosen = jobId;
    for (const row of jobsHolder.querySelectorAll('tr[data-job]')) {
      row.classList.toggle('chosen', row.dataset.job === jobId);
    }
    viewer.show(jobId);
  }

  function defaultJob(jobs) {
    const routed = jobs.filter(job => job.route !== null);
    const done = (routed.length ? routed : jobs).filter(job => job.state === 'done');
    const pool = done.length ? done : jobs;
    return pool.length ? pool[pool.length - 1].job_id : null;
  }

  chat.showHistory(study.jobs.filter(job => job.route === null));
  await page.every(3000, async () => {
    const detail = await api(`/studies/${encodeURIComponent(studyUid)}`);
    if (!page.alive()) {
      return;
    }
    render(detail);
    const states = detail.jobs.map(job => `${job.job_id}:${job.state}`).join(',');
    if (!chosen || !detail.jobs.some(job => job.job_id === chosen)) {
      const first = defaultJob(detail.jobs);
      if (first) {
        choose(first);
      }
    } else if (states !== lastStates) {
      viewer.show(chosen, { keepFrame: true });
    }
    lastStates = states;
  });
}

function swatch(color) {
  const element = h('span', { class: 'swatch' });
  element.style.backgroundColor = `rgb(${color.join(',')})`; // CSSOM: the page's CSP forbids style attributes
  return element;
}

/** A job's frames with its overlay: a canvas, a slider, the overlay switch, the legend, the key images. */
class Viewer {
  constructor(page) {
    this.page = page;
    this.jobId = null;
    this.frames = null;
    this.frame = 0;
    this.request = 0;
    this.canvas = h('canvas', { id: 'frame-canvas', width: 512, height: 512, dataset: { loaded: 'false' } });
    this.slider = h('input', { type: 'range', id: 'frame-slider', min: 0, max: 0, value: 0, oninput: () => this.draw(Number(this.slider.value)) });
    this.overlay = h('input', { type: 'checkbox', id: 'overlay-toggle', checked: true, onchange: () => this.draw(this.frame) });
    this.label = h('span', { id: 'frame-label', class: 'muted' });
    this.legend = h('ul', { class: 'legend', id: 'legend' });
    this.results = h('div', { id: 'job-results' });
    this.keyImages = h('div', { class: 'key-images', id: 'key-images' });
    this.status = h('p', { class: 'message' });
    this.canvas.addEventListener('wheel', event => {
      event.preventDefault();
      this.step(event.deltaY > 0 ? 1 : -1);
    });
    this.element = h(
      'div',
      { id: 'viewer' },
      h('h2', {}, 'Images ', h('span', { id: 'viewer-job', class: 'muted' })),
      this.status,
      h(
        'div',
        { class: 'viewer-tools' },
        h('button', { type: 'button', class: 'small', onclick: () => this.step(-1) }, '◀'),
        this.slider,
        h('button', { type: 'button', class: 'small', onclick: () => this.step(1) }, '▶'),
        h('button', { type: 'button', class: 'small', onclick: () => this.frames && this.draw(this.frames.key_frame) }, 'Key frame'),
        h('label', {}, this.overlay, ' overlay'),
      ),
      h('div', { class: 'canvas-frame' }, this.canvas),
      this.label,
      this.legend,
      this.results,
      h('h3', {}, 'Key images'),
      this.keyImages,
    );
  }

  step(delta) {
    if (this.frames) {
      this.draw(Math.min(this.frames.frames - 1, Math.max(0, this.frame + delta)));
    }
  }

  async show(jobId, { keepFrame = false } = {}) {
    const changed = jobId !== this.jobId;
    this.jobId = jobId;
    document.getElementById('viewer-job').textContent = `job ${short(jobId, 6)}`;
    try {
      const [frames, job] = await Promise.all([api(`/jobs/${jobId}/frames`), api(`/jobs/${jobId}`)]);
      if (!this.page.alive() || this.jobId !== jobId) {
        return;
      }
      this.frames = frames;
      this.canvas.dataset.job = jobId;
      this.slider.max = String(frames.frames - 1);
      replace(
        this.legend,
        frames.structures.map(structure =>
          h(
            'li',
            { dataset: { label: structure.label, voxels: structure.voxels } },
            swatch(structure.color),
            ` ${structure.label}: ${structure.voxels} voxels on ${structure.frames.length} frames`,
          ),
        ),
        frames.boxes.length ? h('li', {}, `${frames.boxes.length} boxes`) : null,
      );
      this.showResults(job);
      this.showKeyImages(job, changed);
      await this.draw(changed || !keepFrame ? frames.key_frame : Math.min(this.frame, frames.frames - 1));
    } catch (error) {
      say(this.status, error.message, 'error');
    }
  }

  showResults(job) {
    replace(
      this.results,
      job.actions.map(action =>
        h('div', { class: 'action-result' }, h('code', {}, action.API_name), ' ', badge(action.state), resultView(action.result)),
      ),
    );
  }

  async showKeyImages(job, changed) {
    const images = job.outputs.filter(output => output.kind === 'SC');
    const shown = [...this.keyImages.querySelectorAll('img')].map(img => img.dataset.sopInstanceUid).join(',');
    if (!changed && shown === images.map(output => output.sop_instance_uid).join(',')) {
      return;
    }
    for (const img of this.keyImages.querySelectorAll('img')) {
      URL.revokeObjectURL(img.src);
    }
    replace(this.keyImages, images.length ? null : h('p', { class: 'muted' }, 'none yet'));
    for (const output of images) {
      const blob = await imageBlob(`/jobs/${job.job_id}/key-images/${output.sop_instance_uid}`);
      if (this.jobId !== job.job_id) {
        return;
      }
      this.keyImages.append(
        h('img', { src: URL.createObjectURL(blob), alt: 'key image', title: output.sop_instance_uid, dataset: { sopInstanceUid: output.sop_instance_uid } }),
      );
    }
  }

  async draw(frame) {
    if (!this.frames) {
      return;
    }
    const request = ++this.request;
    this.frame = frame;
    this.slider.value = String(frame);
    this.canvas.dataset.loaded = 'false';
    const overlay = this.overlay.checked;
    try {
      const blob = await imageBlob(`/jobs/${this.jobId}/frames/${frame}`, { overlay });
      const bitmap = await createImageBitmap(blob);
      if (request !== this.request) {
        return;
      }
      this.canvas.width = bitmap.width;
      this.canvas.height = bitmap.height;
      this.canvas.getContext('2d').drawImage(bitmap, 0, 0);
      bitmap.close();
      const on = this.frames.structures.filter(structure => structure.frames.includes(frame)).map(s => s.label);
      this.label.textContent =
        `Frame ${frame + 1} of ${this.frames.frames}${frame === this.frames.key_frame ? ' (key frame)' : ''}` +
        (on.length ? ` · ${on.join(', ')}` : '');
      Object.assign(this.canvas.dataset, {
        frame: String(frame),
        overlay: String(overlay),
        sopInstanceUid: this.frames.sop_instance_uids[frame],
        loaded: 'true',
      });
      this.status.textContent = '';
    } catch (error) {
      say(this.status, error.message, 'error');
    }
  }
}

/** The agent chat: each question shows the plan (thoughts, actions with their states), then the answer. */
class Chat {
  constructor(page, studyUid) {
    this.page = page;
    this.studyUid = studyUid;
    this.question = h('textarea', { id: 'question', rows: 2, placeholder: 'How large is the left lung?', maxlength: 2000 });
    this.sendSr = h('input', { type: 'checkbox', id: 'send-sr' });
    this.button = h('button', { type: 'submit', id: 'ask' }, 'Ask');
    this.log = h('div', { id: 'chat-log' });
    this.element = h(
      'section',
      { id: 'chat' },
      h('h2', {}, 'Ask the agent'),
      this.log,
      h(
        'form',
        { id: 'chat-form', onsubmit: event => this.submit(event) },
        this.question,
        h('div', {}, h('label', {}, this.sendSr, ' also send the answer to the PACS (SR)'), ' ', this.button),
      ),
    );
  }

  async showHistory(questionJobs) {
    for (const summary of questionJobs) {
      const exchange = this.exchange(summary.instruction);
      await this.follow(exchange, summary.job_id);
    }
  }

  exchange(question) {
    const exchange = {
      element: h('div', { class: 'exchange' }),
      question,
      plan: h('div', { class: 'agent' }, h('span', { class: 'muted' }, 'Planning…')),
      answer: h('div', { class: 'agent answer-holder' }),
    };
    exchange.element.append(h('div', { class: 'user' }, question), exchange.plan, exchange.answer);
    this.log.append(exchange.element);
    return exchange;
  }

  async submit(event) {
    event.preventDefault();
    const question = this.question.value.trim();
    if (!question) {
      return;
    }
    this.button.disabled = true;
    const exchange = this.exchange(question);
    try {
      const accepted = await api(`/studies/${encodeURIComponent(this.studyUid)}/ask`, {
        method: 'POST',
        body: { question, wait: false, send_sr: this.sendSr.checked },
      });
      this.question.value = '';
      exchange.element.dataset.job = accepted.job_id;
      replace(exchange.plan, planView(accepted.plan));
      await this.follow(exchange, accepted.job_id);
    } catch (error) {
      replace(exchange.answer, h('p', { class: 'error' }, error.message));
    } finally {
      this.button.disabled = false;
    }
  }

  /** Poll the question's job until its answer is stored (or it failed); show the plan's live states. */
  async follow(exchange, jobId) {
    exchange.element.dataset.job = jobId;
    exchange.element.dataset.state = 'running';
    while (this.page.alive()) {
      let job;
      try {
        job = await api(`/jobs/${jobId}`);
      } catch (error) {
        replace(exchange.answer, h('p', { class: 'error' }, error.message));
        exchange.element.dataset.state = 'failed';
        return;
      }
      replace(exchange.plan, planView(job.plan, job.actions));
      if (job.answer) {
        replace(exchange.answer, answerView(job.answer));
        exchange.element.dataset.state = 'answered';
        return;
      }
      if (job.state === 'failed') {
        replace(exchange.answer, h('p', { class: 'error' }, job.error || 'the question could not be answered'));
        exchange.element.dataset.state = 'failed';
        return;
      }
      await new Promise(resolve => setTimeout(resolve, 1500));
    }
  }
}
