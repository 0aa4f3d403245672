// The admin API as seen from the console: the token (sessionStorage, this tab only), JSON requests with
// the bearer token, readable errors, images fetched with the token (an <img src> cannot send it).

const TOKEN_KEY = 'medagent.admin.token';
// the API is served by the same app, one level above /console/
const BASE = new URL('../', document.baseURI);

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

let unauthorised = () => {};

/** Call ``handler`` when the API answers 401 (the token was changed or is wrong). */
export function onUnauthorised(handler) {
  unauthorised = handler;
}

export function url(path) {
  return new URL(path.replace(/^\//, ''), BASE);
}

/** A 4xx/5xx body as one sentence: FastAPI's {"detail": "..."} or its list of {loc, msg}. */
export function describe(payload) {
  const detail = payload && typeof payload === 'object' ? payload.detail : payload;
  if (Array.isArray(detail)) {
    return detail
      .map(item => {
        const field = (item.loc || []).filter(part => part !== 'body' && part !== 'query' && part !== 'path');
        return field.length ? `${field.join('.')}: ${item.msg}` : item.msg;
      })
      .join('; ');
  }
  return String(detail ?? payload ?? 'no reason given');
}

async function send(path, { method = 'GET', body, query, bearer = token() } = {}) {
  const target = url(path);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null) {
      target.searchParams.set(key, String(value));
    }
  }
  const headers = { Authorization: `Bearer ${bearer || ''}` };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
  }
  const response = await fetch(target, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
  });
  if (!response.ok) {
    const type = response.headers.get('content-type') || '';
    const payload = type.includes('json') ? await response.json() : await response.text();
    if (response.status === 401 && bearer === token()) {
      unauthorised();
    }
    throw new ApiError(response.status, `${response.status}: ${describe(payload)}`);
  }
  return response;
}

/** JSON from the API (null for 204); ApiError with the API's reason otherwise. */
export async function api(path, options = {}) {
  const response = await send(path, options);
  if (response.status === 204) {
    return null;
  }
  return response.json();
}

/** Whether ``candidate`` is the node's token (asks a route that needs it). */
export async function tokenAccepted(candidate) {
  try {
    await send('/config/ae', { bearer: candidate });
    return true;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      return false;
    }
    throw error;
  }
}

/** An image of the API as a Blob. */
export async function imageBlob(path, query) {
  const response = await send(path, { query });
  return response.blob();
}
