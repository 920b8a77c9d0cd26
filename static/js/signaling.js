// The signaling WebSocket (docs/protocol.md): one per participant per call.
//
// Reconnects with exponential backoff and jitter while the server still holds
// our seat (its disconnect grace period); answers the server's `ping`, sends
// its own pings so a dead socket is noticed, and queues a bounded number of
// messages while reconnecting. On `reconnect` (the node is draining) it reopens the
// socket at once, through the same address (a load balancer sends it to a ready node).
// Emits:
//   'state'   detail: 'connecting' | 'open' | 'reconnecting' | 'lost' | 'closed'
//   'open'    detail: {reconnected: boolean, republish: boolean} (republish: the SFU room
//             moved with a `reconnect`, start the SFU session over now)
//   'message' detail: the parsed server message
//   'closed'  detail: {code, reason, final: boolean}

// Close codes after which reconnecting would not help: of the codes the server sends
// (docs/protocol.md, "Close codes"; signaling/protocol.py CloseCode), only these two.
// Every other one (1001 going away, 1012 node draining, 1009 frame too big, 1011 internal error, 4008
// heartbeat timeout, 4029 flood, 4030 too many invalid messages, 4031 too slow, and
// aiohttp's 1002/1007 for a broken frame) keeps the seat for the grace period, so a
// reconnect is worth it. A refusal before the upgrade (401/403/404/410/503) reaches a
// browser as a bare 1006: `worthRetrying` asks over HTTP instead.
const FINAL_CLOSE_CODES = new Set([
  1000, // left the call, or the call ended
  4001, // replaced: the same participant connected again (another tab, device or node)
]);

export class Signaling extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.callId
   * @param {() => string} options.token  current access token
   * @param {number} [options.retryForMs]  how long to keep reconnecting (the grace period and then some)
   * @param {number} [options.pingEveryMs]  how often to ping the server
   * @param {number} [options.deadAfterMs]  silence after which the socket is taken for dead
   * @param {() => Promise<boolean>} [options.worthRetrying]  asked after a refused handshake
   *   (a browser cannot see why: 403, 410…); false stops reconnecting, e.g. once the call ended
   */
  constructor({
    callId,
    token,
    retryForMs = 20000,
    pingEveryMs = 15000,
    deadAfterMs = 40000,
    worthRetrying = null,
  }) {
    super();
    this.callId = callId;
    this.token = token;
    this.worthRetrying = worthRetrying;
    this.retryForMs = retryForMs;
    this.pingEveryMs = pingEveryMs;
    this.deadAfterMs = deadAfterMs;
    this.ws = null;
    this.state = 'idle';
    this.queue = [];
    this.attempt = 0;
    this.lostSince = null;
    this.everOpened = false;
    this.stopped = false;
    this.timer = null;
    this.heartbeat = null;
    this.lastHeard = 0;
    this.lastClose = null;
    this.reconnects = 0;
    this.republishPending = false;
  }

  url() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const query = new URLSearchParams({ call_id: this.callId, access_token: this.token() });
    return `${scheme}//${location.host}/v1/calls/ws/signaling?${query}`;
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: state }));
  }

  connect() {
    this.stopped = false;
    this.open();
  }

  open() {
    if (this.stopped) return;
    this.setState(this.everOpened ? 'reconnecting' : 'connecting');
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch (err) {
      this.scheduleReconnect({ code: 0, reason: String(err) });
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      opened = true;
      const reconnected = this.everOpened;
      if (reconnected) this.reconnects += 1;
      this.everOpened = true;
      this.attempt = 0;
      this.lostSince = null;
      this.lastHeard = Date.now();
      this.setState('open');
      this.startHeartbeat();
      const republish = this.republishPending;
      this.republishPending = false;
      this.dispatchEvent(new CustomEvent('open', { detail: { reconnected, republish } }));
      const queued = this.queue.splice(0);
      for (const message of queued) this.send(message);
    };
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      this.lastHeard = Date.now();
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (err) {
        console.warn('signaling: ignoring a frame that is not JSON');
        return;
      }
      if (message.type === 'ping') {
        this.send({ type: 'pong' });
        return;
      }
      if (message.type === 'pong') return;
      this.dispatchEvent(new CustomEvent('message', { detail: message }));
      if (message.type === 'reconnect') {
        // docs/protocol.md: this node is draining. Reopen now; republish once open.
        this.republishPending = this.republishPending || message.republish === true;
        this.dropSocket();
      }
    };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this.ws = null;
      this.stopHeartbeat();
      this.lastClose = { code: event.code, reason: event.reason };
      if (this.stopped) {
        this.setState('closed');
        return;
      }
      const close = { code: event.code, reason: event.reason };
      if (FINAL_CLOSE_CODES.has(event.code) || (!this.everOpened && this.attempt >= 3)) {
        this.finalClose(close);
        return;
      }
      if (!opened && this.worthRetrying) {
        // Refused before the upgrade: ask (over HTTP) whether trying again can help.
        this.worthRetrying().then(
          (retry) => {
            if (this.stopped || this.ws) return;
            if (retry) this.scheduleReconnect(close);
            else this.finalClose(close);
          },
          () => {
            if (!this.stopped && !this.ws) this.scheduleReconnect(close);
          },
        );
        return;
      }
      this.scheduleReconnect(close);
    };
    // onerror is always followed by onclose; nothing to do here but keep the console quiet.
    ws.onerror = () => {};
  }

  finalClose(close) {
    this.stopped = true;
    this.setState('closed');
    this.dispatchEvent(new CustomEvent('closed', { detail: { ...close, final: true } }));
  }

  scheduleReconnect(close) {
    if (this.lostSince === null) this.lostSince = Date.now();
    if (Date.now() - this.lostSince > this.retryForMs) {
      this.stopped = true;
      this.setState('lost');
      this.dispatchEvent(new CustomEvent('closed', { detail: { ...close, final: true, lost: true } }));
      return;
    }
    this.setState('reconnecting');
    const base = Math.min(5000, 250 * 2 ** this.attempt);
    const delay = base / 2 + Math.random() * (base / 2);
    this.attempt += 1;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.open(), delay);
  }

  startHeartbeat() {
    this.stopHeartbeat();
    this.heartbeat = setInterval(() => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
      if (Date.now() - this.lastHeard > this.deadAfterMs) {
        // Nothing heard for too long: the socket is dead even if the OS has not noticed.
        this.dropSocket();
        return;
      }
      this.send({ type: 'ping' });
    }, this.pingEveryMs);
  }

  stopHeartbeat() {
    clearInterval(this.heartbeat);
    this.heartbeat = null;
  }

  /**
   * Is the socket alive? Pings now and drops it (reconnecting) unless the server is heard
   * within `withinMs`: after a network change the OS may not notice a dead socket for
   * minutes, and messages sent into it are lost.
   * @param {number} [withinMs]
   */
  check(withinMs = 1000) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return; // reconnecting already
    const asked = Date.now();
    this.send({ type: 'ping' });
    setTimeout(() => {
      if (this.ws === ws && this.lastHeard < asked) this.dropSocket();
    }, withinMs);
  }

    /** Close the socket as if the network had dropped it: the reconnect logic takes over. */
  dropSocket() {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    this.stopHeartbeat();
    try {
      ws.close(4000, 'reconnect');
    } catch (err) {
      /* already closing */
    }
    this.scheduleReconnect({ code: 4000, reason: 'dropped' });
  }

  get connected() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  send(message) {
    if (this.connected) {
      this.ws.send(JSON.stringify(message));
      return true;
    }
    if (!this.stopped && this.queue.length < 200) this.queue.push(message);
    return false;
  }

  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.stopHeartbeat();
    this.queue = [];
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      try {
        ws.close(1000, 'bye');
      } catch (err) {
        /* already closed */
      }
    }
    this.setState('closed');
  }
}
