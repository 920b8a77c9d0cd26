// Embedding Huddle in an iframe: the parent app talks to the page with postMessage.
//
// Parent → Huddle:  {type: 'huddle:join', call_id, token}
//                   {type: 'huddle:leave'} | {type: 'huddle:end'}
//                   {type: 'huddle:mute', muted: bool} | {type: 'huddle:camera', on: bool}
// Huddle → parent:  {type: 'huddle:ready'}  (waiting for huddle:join)
//                   {type: 'huddle:status', status, message}
//                   {type: 'huddle:error', code, message}
//                   {type: 'huddle:ended', code, message}
//
// Messages are only taken from the parent window, and only from `parent_origin`
// (query parameter) when given; replies go to that origin (else the referrer's).

export class Embed {
  constructor(app) {
    this.app = app;
    this.embedded = window.parent !== window;
    const params = new URLSearchParams(location.search);
    this.allowedOrigin = params.get('parent_origin');
    let referrerOrigin;
    try {
      referrerOrigin = document.referrer ? new URL(document.referrer).origin : null;
    } catch (err) {
      referrerOrigin = null;
    }
    this.targetOrigin = this.allowedOrigin || referrerOrigin || '*';
    if (this.embedded) window.addEventListener('message', (event) => this.onMessage(event));
  }

  post(message) {
    if (!this.embedded) return;
    window.parent.postMessage(message, this.targetOrigin);
  }

  ready() {
    this.post({ type: 'huddle:ready' });
  }

  onMessage(event) {
    if (event.source !== window.parent) return;
    if (this.allowedOrigin && event.origin !== this.allowedOrigin) return;
    const data = event.data;
    if (!data || typeof data !== 'object' || typeof data.type !== 'string') return;
    const session = this.app.session;
    switch (data.type) {
      case 'huddle:join':
        if (typeof data.call_id === 'string' && typeof data.token === 'string') {
          this.app.joinCall(data.call_id, data.token);
        }
        break;
      case 'huddle:leave':
        if (session) session.leave();
        break;
      case 'huddle:end':
        if (session) session.endForAll();
        break;
      case 'huddle:mute':
        if (session) session.setMuted(!!data.muted);
        break;
      case 'huddle:camera':
        if (session) session.setCamera(!!data.on);
        break;
      default:
        break;
    }
  }
}
