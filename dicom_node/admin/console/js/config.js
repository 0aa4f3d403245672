// Editors of the node's configuration through the API: its AE title and port, the sources allowed to send,
// the destinations (with a C-ECHO button each) and the routes. Every change is checked by the node (a bad
// value is refused with the field named), written to its YAML file and applied without a restart.

import { api } from './api.js';
import { h, replace, say, table } from './dom.js';

function field(label, input) {
  return h('label', {}, h('span', {}, label), input);
}

function input(name, attributes = {}) {
  return h('input', { name, ...attributes });
}

/** The form's values by name: numbers for type=number, booleans for checkboxes, '' left out. */
function values(form) {
  const found = {};
  for (const element of form.elements) {
    if (!element.name || element.disabled) {
      continue;
    }
    if (element.type === 'checkbox') {
      if (!element.dataset.list) {
        found[element.name] = element.checked;
      } else if (element.checked) {
        (found[element.name] ||= []).push(element.value);
      }
    } else if (element.value.trim() !== '') {
      found[element.name] = element.type === 'number' ? Number(element.value) : element.value.trim();
    }
  }
  return found;
}

export async function configPage(page) {
  const sections = {
    ae: h('section', { id: 'config-ae' }),
    sources: h('section', { id: 'config-sources' }),
    destinations: h('section', { id: 'config-destinations' }),
    routes: h('section', { id: 'config-routes' }),
  };
  replace(page.main, h('h1', {}, 'Configuration'), Object.values(sections));
  await Promise.all([
    nodeEditor(sections.ae),
    sourcesEditor(sections.sources),
    destinationsEditor(sections.destinations, () => routesEditor.refresh()),
    routesEditor.start(sections.routes),
  ]);
}

async function nodeEditor(section) {
  const message = h('p', { class: 'message' });
  const form = h(
    'form',
    { id: 'ae-form', class: 'editor' },
    field('AE title', input('ae_title', { required: true, maxlength: 16 })),
    field('Port', input('port', { type: 'number', min: 1, max: 65535, required: true })),
    field('Bind address', input('bind')),
    h('button', { type: 'submit' }, 'Save'),
  );
  const listening = h('p', { class: 'muted' });
  async function load() {
    const node = await api('/config/ae');
    form.elements.ae_title.value = node.ae_title;
    form.elements.port.value = node.port;
    form.elements.bind.value = node.bind;
    listening.textContent = `The SCP listens on port ${node.listening_port ?? '— (not listening)'}.`;
  }
  form.addEventListener('submit', async event => {
    event.preventDefault();
    try {
      await api('/config/ae', { method: 'PUT', body: values(form) });
      say(message, 'Saved; the SCP moved without a restart.');
      await load();
    } catch (error) {
      say(message, error.message, 'error');
    }
  });
  replace(section, h('h2', {}, 'This node'), form, listening, message);
  await load();
}

async function sourcesEditor(section) {
  const message = h('p', { class: 'message' });
  const holder = h('div');
  const form = h(
    'form',
    { id: 'source-form', class: 'editor' },
    field('Calling AE title', input('ae_title', { required: true, maxlength: 16 })),
    field('Host (optional)', input('host', { placeholder: 'any host' })),
    h('button', { type: 'submit' }, 'Allow'),
  );
  async function load() {
    const { sources } = await api('/config/sources');
    replace(
      holder,
      table(
        ['Calling AE title', 'Host', ''],
        sources.map(source =>
          h(
            'tr',
            { dataset: { source: source.id } },
            h('td', {}, source.ae_title),
            h('td', {}, source.host ?? 'any'),
            h('td', {}, h('button', { type: 'button', class: 'small danger', onclick: () => remove(source.id) }, 'Remove')),
          ),
        ),
      ),
    );
  }
  async function remove(id) {
    try {
      await api(`/config/sources/${encodeURIComponent(id)}`, { method: 'DELETE' });
      say(message, `Source ${id} removed: its next association is rejected.`);
      await load();
    } catch (error) {
      say(message, error.message, 'error');
    }
  }
  form.addEventListener('submit', async event => {
    event.preventDefault();
    try {
      const added = await api('/config/sources', { method: 'POST', body: values(form) });
      form.reset();
      say(message, `Source ${added.id} allowed.`);
      await load();
    } catch (error) {
      say(message, error.message, 'error');
    }
  });
  replace(section, h('h2', {}, 'Sources (who may send studies)'), holder, form, message);
  await load();
}

async function destinationsEditor(section, changed) {
  const message = h('p', { class: 'message', id: 'destinations-message' });
  const holder = h('div');
  let editing = null;
  const save = h('button', { type: 'submit' }, 'Add');
  const cancel = h('button', { type: 'button', class: 'secondary', hidden: true }, 'Cancel');
  const form = h(
    'form',
    { id: 'destination-form', class: 'editor' },
    field('Name', input('name', { required: true, maxlength: 64 })),
    field('AE title', input('ae_title', { required: true, maxlength: 16 })),
    field('Host', input('host', { required: true })),
    field('Port', input('port', { type: 'number', min: 1, max: 65535, required: true })),
    field('Transfer syntaxes (optional, comma separated UIDs)', input('transfer_syntaxes')),
    h('label', { class: 'inline' }, input('storage_commitment', { type: 'checkbox' }), ' storage commitment'),
    save,
    cancel,
  );
  function edit(destination) {
    editing = destination;
    for (const name of ['name', 'ae_title', 'host', 'port']) {
      form.elements[name].value = destination[name];
    }
    form.elements.transfer_syntaxes.value = destination.transfer_syntaxes.join(', ');
    form.elements.storage_commitment.checked = destination.storage_commitment;
    form.elements.name.readOnly = true;
    save.textContent = 'Save';
    cancel.hidden = false;
  }
  function stopEditing() {
    editing = null;
    form.reset();
    form.elements.name.readOnly = false;
    save.textContent = 'Add';
    cancel.hidden = true;
  }
  cancel.addEventListener('click', stopEditing);
  const echoes = new Map(); // the last C-ECHO result of each destination, shown again after a reload
  function showEcho(cell, echoed) {
    cell.className = `echo ${echoed.success === undefined ? 'muted' : echoed.success ? 'ok' : 'error'}`;
    cell.textContent = echoed.text;
    if (echoed.success === undefined) {
      delete cell.dataset.success;
    } else {
      cell.dataset.success = String(echoed.success);
    }
  }
  async function echo(name, cell) {
    showEcho(cell, { text: 'C-ECHO…' });
    let echoed;
    try {
      const result = await api(`/config/destinations/${encodeURIComponent(name)}/cecho`);
      const text = `${result.success ? '✔' : '✘'} ${result.message} (${Math.round(result.elapsed_ms)} ms)`;
      echoed = { success: result.success, text };
    } catch (error) {
      echoed = { success: false, text: error.message };
    }
    echoes.set(name, echoed);
    const current = holder.querySelector(`td[data-echo-result="${CSS.escape(name)}"]`) || cell;
    showEcho(current, echoed);
  }
  async function load() {
    const { destinations } = await api('/config/destinations');
    replace(
      holder,
      table(
        ['Name', 'AE title', 'Host', 'Port', '', 'C-ECHO'],
        destinations.map(destination => {
          const cell = h('td', { class: 'echo', dataset: { echoResult: destination.name } });
          if (echoes.has(destination.name)) {
            showEcho(cell, echoes.get(destination.name));
          }
          return h(
            'tr',
            { dataset: { destination: destination.name } },
            h('td', {}, destination.name),
            h('td', {}, destination.ae_title),
            h('td', {}, destination.host),
            h('td', { class: 'number' }, destination.port),
            h(
              'td',
              { class: 'buttons' },
              h('button', { type: 'button', class: 'small', dataset: { echo: destination.name }, onclick: () => echo(destination.name, cell) }, 'C-ECHO'),
              h('button', { type: 'button', class: 'small secondary', dataset: { edit: destination.name }, onclick: () => edit(destination) }, 'Edit'),
              h('button', { type: 'button', class: 'small danger', dataset: { remove: destination.name }, onclick: () => remove(destination.name) }, 'Remove'),
            ),
            cell,
          );
        }),
      ),
    );
  }
  async function remove(name) {
    try {
      await api(`/config/destinations/${encodeURIComponent(name)}`, { method: 'DELETE' });
      echoes.delete(name);
      say(message, `Destination ${name} removed.`);
      await load();
      changed();
    } catch (error) {
      say(message, error.message, 'error');
    }
  }
  form.addEventListener('submit', async event => {
    event.preventDefault();
    const body = values(form);
    body.transfer_syntaxes = (body.transfer_syntaxes || '').split(',').map(uid => uid.trim()).filter(Boolean);
    try {
      if (editing) {
        await api(`/config/destinations/${encodeURIComponent(editing.name)}`, { method: 'PUT', body });
        say(message, `Destination ${body.name} saved.`);
      } else {
        await api('/config/destinations', { method: 'POST', body });
        say(message, `Destination ${body.name} added; test it with C-ECHO.`);
      }
      stopEditing();
      await load();
      changed();
    } catch (error) {
      say(message, error.message, 'error');
    }
  });
  replace(section, h('h2', {}, 'Destinations (where results go)'), holder, form, message);
  await load();
}

/** Routes: the first whose match fits a study's first instance wins. */
const routesEditor = {
  section: null,
  async start(section) {
    this.section = section;
    this.message = h('p', { class: 'message', id: 'routes-message' });
    this.holder = h('div');
    this.targets = h('div', { class: 'checkboxes' });
    this.editing = null;
    this.save = h('button', { type: 'submit' }, 'Add');
    this.cancel = h('button', { type: 'button', class: 'secondary', hidden: true, onclick: () => this.stopEditing() }, 'Cancel');
    this.form = h(
      'form',
      { id: 'route-form', class: 'editor' },
      field('Name', input('name', { required: true, maxlength: 64 })),
      field('Match (one Keyword=regex a line)', h('textarea', { name: 'match', rows: 2, placeholder: 'Modality=CT' })),
      field('Instruction', input('instruction', { required: true, placeholder: 'Segment both lungs' })),
      h('fieldset', {}, h('legend', {}, 'Destinations'), this.targets),
      field('Quiet seconds before a study counts as complete (optional)', input('quiet_seconds', { type: 'number', min: 0.1, step: 'any' })),
      h('label', { class: 'inline' }, input('first', { type: 'checkbox' }), ' try this route first'),
      this.save,
      this.cancel,
    );
    this.form.addEventListener('submit', event => this.submit(event));
    replace(section, h('h2', {}, 'Routes (first match wins)'), this.holder, this.form, this.message);
    await this.refresh();
  },

  async refresh() {
    if (!this.section) {
      return;
    }
    const [{ routes }, { destinations }] = await Promise.all([api('/config/routes'), api('/config/destinations')]);
    const checked = new Set([...this.targets.querySelectorAll('input:checked')].map(box => box.value));
    replace(
      this.targets,
      destinations.length
        ? destinations.map(destination =>
            h('label', { class: 'inline' }, input('destinations', { type: 'checkbox', value: destination.name, checked: checked.has(destination.name), dataset: { list: 'true' } }), ` ${destination.name}`),
          )
        : h('span', { class: 'muted' }, 'no destination yet (results stay on the node)'),
    );
    replace(
      this.holder,
      table(
        ['#', 'Name', 'Match', 'Instruction', 'Destinations', ''],
        routes.map((route, position) =>
          h(
            'tr',
            { dataset: { route: route.name } },
            h('td', { class: 'number' }, position + 1),
            h('td', {}, route.name),
            h('td', {}, Object.entries(route.match).map(([key, value]) => `${key}=${value}`).join(', ') || 'every study'),
            h('td', { class: 'instruction' }, route.instruction),
            h('td', {}, route.destinations.join(', ') || '—'),
            h(
              'td',
              { class: 'buttons' },
              h('button', { type: 'button', class: 'small secondary', onclick: () => this.edit(route) }, 'Edit'),
              h('button', { type: 'button', class: 'small danger', onclick: () => this.remove(route.name) }, 'Remove'),
            ),
          ),
        ),
      ),
    );
  },

  edit(route) {
    this.editing = route;
    const form = this.form;
    form.elements.name.value = route.name;
    form.elements.name.readOnly = true;
    form.elements.match.value = Object.entries(route.match).map(([key, value]) => `${key}=${value}`).join('\n');
    form.elements.instruction.value = route.instruction;
    form.elements.quiet_seconds.value = route.completion?.quiet_seconds ?? '';
    form.elements.first.disabled = true;
    for (const box of this.targets.querySelectorAll('input')) {
      box.checked = route.destinations.includes(box.value);
    }
    this.save.textContent = 'Save';
    this.cancel.hidden = false;
  },

  stopEditing() {
    this.editing = null;
    this.form.reset();
    this.form.elements.name.readOnly = false;
    this.form.elements.first.disabled = false;
    this.save.textContent = 'Add';
    this.cancel.hidden = true;
  },

  async remove(name) {
    try {
      await api(`/config/routes/${encodeURIComponent(name)}`, { method: 'DELETE' });
      say(this.message, `Route ${name} removed.`);
      await this.refresh();
    } catch (error) {
      say(this.message, error.message, 'error');
    }
  },

  async submit(event) {
    event.preventDefault();
    const form = values(this.form);
    const match = {};
    for (const line of (form.match || '').split('\n')) {
      if (line.trim()) {
        const [key, ...pattern] = line.split('=');
        match[key.trim()] = pattern.join('=').trim();
      }
    }
    const body = {
      name: form.name,
      match,
      instruction: form.instruction,
      destinations: form.destinations || [],
    };
    const completion = { ...(this.editing?.completion || {}) };
    if (form.quiet_seconds !== undefined) {
      completion.quiet_seconds = form.quiet_seconds;
    }
    if (Object.keys(completion).length) {
      body.completion = completion;
    }
    try {
      if (this.editing) {
        await api(`/config/routes/${encodeURIComponent(this.editing.name)}`, { method: 'PUT', body });
        say(this.message, `Route ${body.name} saved.`);
      } else {
        await api('/config/routes', { method: 'POST', body, query: { position: form.first ? 0 : undefined } });
        say(this.message, `Route ${body.name} added: studies that arrive from now on are matched against it.`);
      }
      this.stopEditing();
      await this.refresh();
    } catch (error) {
      say(this.message, error.message, 'error');
    }
  },
};
