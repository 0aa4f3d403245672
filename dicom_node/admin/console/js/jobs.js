// Jobs with their live state, and one job in full: the plan (thoughts, actions, value), each action's
// state, timing and result, the answer of a question, the outputs and their deliveries.

import { api } from './api.js';
import { badge, duration, h, number, replace, say, short, table, when } from './dom.js';

function studyLink(job) {
  const target = `#/studies/${encodeURIComponent(job.study_instance_uid)}?job=${encodeURIComponent(job.job_id)}`;
  return h('a', { href: target, title: job.study_instance_uid }, short(job.study_instance_uid, 12));
}

export async function jobsPage(page) {
  const holder = h('div', { id: 'jobs' });
  replace(page.main, h('h1', {}, 'Jobs'), holder);
  await page.every(2000, async () => {
    const { jobs } = await api('/jobs', { query: { limit: 200 } });
    const rows = jobs.map(job =>
      h(
        'tr',
        { dataset: { job: job.job_id, study: job.study_instance_uid, state: job.state } },
        h('td', {}, h('a', { href: `#/jobs/${job.job_id}` }, short(job.job_id, 8))),
        h('td', {}, studyLink(job)),
        h('td', {}, job.route ?? h('em', {}, 'question')),
        h('td', { class: 'instruction' }, job.instruction),
        h('td', {}, job.tools.join(', ')),
        h('td', {}, badge(job.state)),
        h('td', {}, when(job.created_at)),
        h('td', {}, when(job.updated_at)),
        h('td', { class: 'error' }, job.error ?? ''),
      ),
    );
    if (page.alive()) {
      replace(holder, table(['Job', 'Study', 'Route', 'Instruction', 'Tools', 'State', 'Created', 'Updated', 'Error'], rows));
    }
  });
}

/** What an action returned, in a few lines: measurements, labels, structures, text, error. */
export function resultView(result) {
  if (!result) {
    return h('span', { class: 'muted' }, 'no result yet');
  }
  const lines = [];
  for (const item of result.measurements || []) {
    lines.push(h('li', { class: 'measurement' }, `${item.label}: ${String(item.name).toLowerCase()} ${number(item.value)} ${item.unit}`));
  }
  const labels = Object.entries(result.labels || {}).sort((a, b) => b[1] - a[1]).slice(0, 3);
  if (labels.length) {
    lines.push(h('li', {}, `Most likely: ${labels.map(([name, p]) => `${name} (${number(p)})`).join('; ')}`));
  }
  if ((result.structures || []).length && !(result.measurements || []).length) {
    lines.push(h('li', {}, `Outlined: ${result.structures.join(', ')}`));
  }
  if (result.boxes) {
    lines.push(h('li', {}, `${result.boxes} box${result.boxes === 1 ? '' : 'es'}`));
  }
  if (result.text) {
    lines.push(h('li', { class: 'text' }, result.text));
  }
  if (result.error) {
    lines.push(h('li', { class: 'error' }, result.error));
  }
  return h('ul', { class: 'result' }, h('li', { class: 'muted' }, `${result.engine ?? ''} ${result.engine_version ?? ''}`), lines);
}

/** The plan as the agent wrote it, with each action's live state when ``actions`` (job detail) is given. */
export function planView(plan, actions = []) {
  const byIndex = new Map(actions.map(action => [action.index, action]));
  return h(
    'div',
    { class: 'plan' },
    h('p', { class: 'thoughts' }, h('strong', {}, 'Thoughts: '), plan.thoughts || '—'),
    h(
      'ol',
      { class: 'actions' },
      plan.actions.map((action, index) => {
        const state = byIndex.get(index);
        return h(
          'li',
          { dataset: { action: index, state: state?.state ?? 'pending' } },
          h('code', {}, action.API_name),
          ' ',
          h('code', { class: 'params' }, JSON.stringify(action.API_params)),
          ' ',
          badge(state?.state ?? 'pending'),
          state?.seconds != null ? h('span', { class: 'muted' }, ` ${duration(state.seconds)}`) : null,
          state?.state === 'running' && state.started_at
            ? h('span', { class: 'muted' }, ` for ${duration(Math.max(0, Date.now() / 1000 - state.started_at))}`)
            : null,
          state?.result ? resultView(state.result) : null,
        );
      }),
    ),
    h('p', { class: 'value' }, h('strong', {}, 'Plan: '), plan.value || '—'),
  );
}

export function answerView(answer) {
  return h(
    'div',
    { class: 'answer', dataset: { engine: answer.engine } },
    h('p', { class: 'answer-text' }, answer.answer),
    answer.note ? h('p', { class: 'muted' }, `Note: ${answer.note}`) : null,
  );
}

export async function jobPage(page, jobId) {
  const message = h('p', { class: 'message' });
  const holder = h('div', { id: 'job', dataset: { job: jobId } });
  replace(page.main, h('h1', {}, 'Job ', h('code', {}, jobId)), message, holder);

  async function resubmit(includeDelivered) {
    try {
      const done = await api(`/jobs/${jobId}/resubmit`, { method: 'POST', body: { include_delivered: includeDelivered } });
      say(message, `${done.queued} deliveries queued again.`);
    } catch (error) {
      say(message, error.message, 'error');
    }
  }

  await page.every(2000, async () => {
    const job = await api(`/jobs/${jobId}`);
    if (!page.alive()) {
      return;
    }
    holder.dataset.state = job.state;
    replace(
      holder,
      h(
        'dl',
        { class: 'facts' },
        h('dt', {}, 'State'), h('dd', {}, badge(job.state), job.error ? h('span', { class: 'error' }, ` ${job.error}`) : null),
        h('dt', {}, 'Study'), h('dd', {}, studyLink(job)),
        h('dt', {}, 'Route'), h('dd', {}, job.route ?? 'a question'),
        h('dt', {}, 'Instruction'), h('dd', {}, job.instruction),
        h('dt', {}, 'Destinations'), h('dd', {}, job.destinations.join(', ') || '—'),
        h('dt', {}, 'Created'), h('dd', {}, when(job.created_at)),
        h('dt', {}, 'Updated'), h('dd', {}, when(job.updated_at)),
      ),
      h('h2', {}, 'Plan'),
      planView(job.plan, job.actions),
      job.answer ? [h('h2', {}, 'Answer'), answerView(job.answer)] : null,
      h('h2', {}, 'Outputs'),
      table(
        ['Kind', 'SOP Instance UID', 'Created'],
        job.outputs.map(output => h('tr', {}, h('td', {}, output.kind), h('td', {}, h('code', {}, output.sop_instance_uid)), h('td', {}, when(output.created_at)))),
      ),
      h('h2', {}, 'Deliveries'),
      table(
        ['Kind', 'Destination', 'State', 'Attempts', 'Last error', 'Delivered'],
        job.deliveries.map(delivery =>
          h(
            'tr',
            { dataset: { destination: delivery.destination, state: delivery.state } },
            h('td', {}, delivery.kind),
            h('td', {}, delivery.destination),
            h('td', {}, badge(delivery.state)),
            h('td', { class: 'number' }, delivery.attempts),
            h('td', { class: 'error' }, delivery.last_error ?? ''),
            h('td', {}, when(delivery.delivered_at)),
          ),
        ),
      ),
      h(
        'p',
        {},
        h('button', { type: 'button', onclick: () => resubmit(false) }, 'Resubmit dead letters'),
        ' ',
        h('button', { type: 'button', class: 'secondary', onclick: () => resubmit(true) }, 'Send everything again'),
      ),
    );
  });
}
