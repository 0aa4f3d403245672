// Building the page from data without innerHTML: every value becomes text, never markup.

/**
 * h('a', {href: '#/jobs', class: 'x', onclick: fn, dataset: {job: id}}, 'text', child, [more])
 * Attributes named on* become listeners; `false`/null/undefined attributes and children are skipped.
 */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === false || value === null || value === undefined) {
      continue;
    }
    if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2), value);
    } else if (name === 'dataset') {
      Object.assign(element.dataset, value);
    } else if (name === 'class') {
      element.className = value;
    } else if (name in element && typeof value !== 'string') {
      element[name] = value;
    } else {
      element.setAttribute(name, value === true ? '' : value);
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) {
      continue;
    }
    if (Array.isArray(child)) {
      append(element, child);
    } else {
      element.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
}

export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** UNIX seconds as local date and time, or an em dash. */
export function when(seconds) {
  if (seconds === null || seconds === undefined) {
    return '—';
  }
  return new Date(seconds * 1000).toLocaleString();
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) {
    return '';
  }
  return seconds >= 60 ? `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s` : `${seconds.toFixed(1)} s`;
}

/** A UID or id cut in the middle, the whole value in its title. */
export function short(value, keep = 10) {
  const text = String(value);
  return text.length <= 2 * keep + 1 ? text : `${text.slice(0, keep)}…${text.slice(-keep)}`;
}

export function badge(state) {
  return h('span', { class: `badge state-${state}`, dataset: { state } }, state);
}

export function table(headings, rows, attributes = {}) {
  return h(
    'table',
    attributes,
    h('thead', {}, h('tr', {}, headings.map(heading => h('th', {}, heading)))),
    h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: headings.length, class: 'muted' }, 'none'))),
  );
}

/** A message line for a section: ok (green) or error (red), replaced by the next one. */
export function say(element, text, kind = 'ok') {
  element.className = `message ${kind}`;
  element.textContent = text;
}

/** A number rounded for reading, as the answers write it. */
export function number(value) {
  if (typeof value !== 'number') {
    return String(value);
  }
  const size = Math.abs(value);
  const decimals = size >= 1000 ? 0 : size >= 10 ? 1 : size >= 0.1 || size === 0 ? 2 : 4;
  return String(Number(value.toFixed(decimals)));
}
