// HTTP API client (DESIGN.md "HTTP API (v1)"): JSON in, JSON out, and one error type
// carrying the server's {"error": {"code", "message"}} so the UI can explain failures.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

export class Api {
  constructor(token = null, base = '') {
    this.token = token;
    this.base = base;
  }

  async request(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    let response;
    try {
      response = await fetch(this.base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new ApiError(0, 'network_error', 'Cannot reach the server. Check your connection.');
    }
    let data;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      const error = (data && data.error) || {};
      throw new ApiError(
        response.status,
        error.code || `http_${response.status}`,
        error.message || `The server answered ${response.status}.`,
      );
    }
    return data;
  }

  devToken(name) {
    return this.request('POST', '/v1/dev/token', { name });
  }

  createConversation(memberIds, title) {
    const body = { member_ids: memberIds };
    if (title) body.title = title;
    return this.request('POST', '/v1/conversations', body);
  }

  conversation(id) {
    return this.request('GET', `/v1/conversations/${encodeURIComponent(id)}`);
  }

  initiate(conversationId, callType, calleeIds) {
    return this.request('POST', '/v1/calls/initiate', {
      call_type: callType,
      conversation_id: conversationId,
      callee_ids: calleeIds,
    });
  }

  call(id) {
    return this.request('GET', `/v1/calls/${encodeURIComponent(id)}`);
  }

  history(conversationId) {
    return this.request('GET', `/v1/calls?conversation_id=${encodeURIComponent(conversationId)}`);
  }

  callAction(id, action, body) {
    return this.request('POST', `/v1/calls/${encodeURIComponent(id)}/${action}`, body);
  }

  join(id) {
    return this.callAction(id, 'join');
  }

  invite(id, calleeIds) {
    return this.callAction(id, 'invite', { callee_ids: calleeIds });
  }

  decline(id) {
    return this.callAction(id, 'decline');
  }

  leave(id) {
    return this.callAction(id, 'leave');
  }

  end(id) {
    return this.callAction(id, 'end');
  }

  turnCredentials() {
    return this.request('GET', '/v1/turn/credentials');
  }
}

/** The user id inside a JWT (its `sub`), without verifying it: the server does that. */
export function tokenClaims(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const padded = part + '='.repeat((4 - (part.length % 4)) % 4);
    const json = decodeURIComponent(
      Array.from(atob(padded), (c) => '%' + c.charCodeAt(0).toString(16).padStart(2, '0')).join(''),
    );
    return JSON.parse(json);
  } catch (err) {
    return null;
  }
}
