// Entry point: decides what the page does from its URL and the embedding app.
//
//   /?call_id=<id>&token=<jwt>          join that call at once (HTTP join, then media)
//   /?call_id=<id>&token=<jwt>&ring=1   show the incoming call first (accept / decline)
//   /  in an iframe                       wait for postMessage {type: 'huddle:join', call_id, token}
//   /  otherwise (dev mode)               pick a name, create a conversation, start calls
//
// The page exposes `window.huddle` (state(), stats(), session) for tests and embedders.

import { Api, ApiError, tokenClaims } from './api.js';
import { CallSession } from './call.js';
import { CallView } from './callview.js';
import { Embed } from './embed.js';
import { Lobby } from './lobby.js';
import { byId } from './dom.js';
import { on } from './events.js';
import { explain } from './texts.js';

const $ = byId;

const SCREENS = ['loading', 'name', 'lobby', 'incoming', 'call', 'message'];

class App {
  constructor() {
    this.params = new URLSearchParams(location.search);
    this.session = null;
    this.view = null;
    this.devIdentity = null;
    this.lobby = new Lobby(this);
    this.embed = new Embed(this);
    this.screen = 'loading';
    const app = this;
    /** @type {any} */ (window).huddle = {
      state: () => this.state(),
      stats: () => (this.view ? this.view.stats.snapshot.remotes : {}),
      messages: () => (this.session ? this.session.messageLog.entries : []),
      collectStats: async () => (this.view ? (await this.view.stats.collect()).remotes : {}),
      get session() {
        return app.session;
      },
      app: this,
    };
  }

  show(screen) {
    this.screen = screen;
    for (const name of SCREENS) $(`screen-${name}`).hidden = name !== screen;
    document.body.dataset.screen = screen;
    const heading = $(`screen-${screen}`).querySelector('h2');
    if (heading && screen !== 'call') heading.setAttribute('tabindex', '-1');
  }

  focusScreen() {
    const heading = $(`screen-${this.screen}`).querySelector('h2, h3');
    if (heading instanceof HTMLElement) {
      heading.setAttribute('tabindex', '-1');
      heading.focus({ preventScroll: true });
    }
  }

  toast(level, text) {
    const el = document.createElement('div');
    el.className = 'toast';
    el.dataset.level = level;
    el.textContent = text;
    $('toasts').append(el);
    setTimeout(() => el.remove(), level === 'error' ? 9000 : 5000);
  }

  setConnState(state, text) {
    const el = $('conn-state');
    el.dataset.state = state;
    el.textContent = text || '';
  }

  setWho(name) {
    const el = $('whoami');
    el.hidden = !name;
    el.textContent = name ? `Signed in as ${name}` : '';
  }

  async start() {
    const callId = this.params.get('call_id');
    let token = this.params.get('token');
    if (callId && token) {
      // Keep the token out of the address bar (and Referer headers); a reload reads it back.
      sessionStorage.setItem(`huddle.token.${callId}`, token);
      const clean = new URLSearchParams(this.params);
      clean.delete('token');
      history.replaceState(null, '', `${location.pathname}?${clean}`);
    } else if (callId) {
      token = sessionStorage.getItem(`huddle.token.${callId}`);
    }
    if (callId && token) {
      if (this.params.get('ring') === '1') await this.showIncoming(callId, token);
      else await this.joinCall(callId, token);
      return;
    }
    if (this.embed.embedded) {
      this.show('loading');
      $('screen-loading').querySelector('p').textContent = 'Waiting for the app to start the call…';
      this.embed.ready();
      return;
    }
    await this.lobby.start();
  }

  /** The incoming-call screen (invite links in dev mode ring before joining). */
  async showIncoming(callId, token) {
    const api = new Api(token);
    const claims = tokenClaims(token) || {};
    this.setWho(claims.name);
    let call;
    try {
      call = await api.call(callId);
    } catch (err) {
      this.showMessage(err.code, explain(err.code, err.message));
      return;
    }
    if (call.status === 'ended') {
      this.showMessage('call_ended', explain('call_ended'));
      return;
    }
    const mine = call.participants.find((p) => p.user_id === claims.sub);
    if (mine && mine.joined_at && !mine.left_at) {
      await this.joinCall(callId, token);
      return;
    }
    const caller = call.participants.find((p) => p.user_id === call.caller_id);
    const who = (caller && caller.name) || 'Someone';
    $('incoming-title').textContent = `${who} is calling`;
    $('incoming-text').textContent = `${call.call_type === 'video' ? 'Video' : 'Audio'} call`;
    this.show('incoming');
    this.focusScreen();
    let watching = true;
    const watch = setInterval(async () => {
      if (!watching) return;
      try {
        const now = await api.call(callId);
        if (now.status === 'ended' && watching) {
          watching = false;
          clearInterval(watch);
          this.showMessage('call_ended', 'The caller hung up before you answered.');
        }
      } catch (err) {
        /* keep ringing; the accept will tell */
      }
    }, 2000);
    const stop = () => {
      watching = false;
      clearInterval(watch);
      $('accept-call').onclick = null;
      $('decline-call').onclick = null;
    };
    $('accept-call').onclick = () => {
      stop();
      this.joinCall(callId, token);
    };
    $('decline-call').onclick = async () => {
      stop();
      try {
        await api.decline(callId);
        this.showMessage('declined', 'You declined the call.');
      } catch (err) {
        this.showMessage(err.code, explain(err.code, err.message));
      }
    };
  }

  /** Join a call and show it; every refusal ends on a screen that says why. */
  async joinCall(callId, token, { contacts = null, initial = null } = {}) {
    const api = new Api(token);
    const claims = tokenClaims(token);
    if (!claims || !claims.sub) {
      this.showMessage('token_invalid', explain('token_invalid'));
      return;
    }
    this.setWho(claims.name);
    this.endSession();
    this.contacts = contacts || this.lobby.contacts;
    const session = new CallSession({
      api,
      callId,
      me: { user_id: claims.sub, name: claims.name || null },
      initial,
      directory: this.contacts,
    });
    this.session = session;
    on(session, 'status', (detail) => {
      const texts = {
        joining: 'Joining…',
        connecting: 'Connecting…',
        waiting: 'Connected',
        connected: 'Connected',
        reconnecting: 'Reconnecting…',
        ended: 'Call ended',
        failed: 'Disconnected',
      };
      this.setConnState(detail.status, texts[detail.status] || '');
      document.body.dataset.callStatus = detail.status;
      this.embed.post({ type: 'huddle:status', status: detail.status, message: detail.message || null });
    });
    on(session, 'notice', (detail) => {
      this.toast(detail.level, detail.message);
      if (detail.level === 'error') this.embed.post({ type: 'huddle:error', code: detail.code, message: detail.message });
    });
    on(session, 'ended', (detail) => {
      this.embed.post({ type: 'huddle:ended', code: detail.code, message: detail.message });
      this.showMessage(detail.code, detail.message, { callId, token });
    });
    session.addEventListener('roster', () => this.lobby.renderInvites());
    session.addEventListener('invited', () => this.lobby.refreshCall());
    this.show('call');
    this.view = new CallView(session, this);
    try {
      await session.start();
    } catch (err) {
      const code = err instanceof ApiError ? err.code : 'join_failed';
      session.finish(code, explain(code, err.message));
      return;
    }
    this.lobby.renderInvites();
  }

  endSession() {
    if (this.view) this.view.destroy();
    this.view = null;
    this.session = null;
  }

  showMessage(code, text, { callId = null, token = null } = {}) {
    this.endSession();
    const el = $('message-text');
    el.textContent = text;
    el.dataset.code = code || '';
    document.body.dataset.messageCode = code || '';
    $('message-title').textContent = code === 'left' || code === 'call_ended' ? 'Call ended' : 'Call';
    const rejoin = $('message-rejoin');
    rejoin.hidden = !(callId && token && ['left', 'signaling_lost', 'replaced', 'join_failed'].includes(code));
    rejoin.onclick = () => this.joinCall(callId, token);
    const back = $('message-back');
    back.hidden = !this.lobby.identity;
    back.onclick = () => this.lobby.show();
    this.setConnState(code === 'left' ? 'ended' : 'failed', '');
    this.show('message');
    this.focusScreen();
  }

  state() {
    const s = this.session;
    const base = {
      screen: this.screen,
      message: this.screen === 'message' ? { code: $('message-text').dataset.code, text: $('message-text').textContent } : null,
    };
    if (!s) return base;
    return {
      ...base,
      callId: s.callId,
      me: s.me,
      status: s.status,
      mode: s.mode,
      muted: s.muted,
      cameraOn: s.cameraOn,
      signaling: s.signaling ? s.signaling.state : null,
      reconnects: s.signaling ? s.signaling.reconnects : 0,
      sfuRestarts: s.sfuLink.restarts,
      sfuResets: s.sfuLink.resets,
      iceRestarts: s.sfuLink.iceRestarts,
      peers: [...s.peers.keys()],
      sfu: s.sfu
        ? {
            publish: s.sfu.publishPc ? s.sfu.publishPc.connectionState : null,
            subscribe: s.sfu.subscribePc ? s.sfu.subscribePc.connectionState : null,
          }
        : null,
      remotes: s.remotes().map((r) => ({
        user_id: r.user_id,
        name: r.name,
        muted: !!r.muted,
        video: r.video !== false,
        online: !!r.online,
        connection: r.connection,
        hasVideoTrack: !!r.videoTrack,
        hasAudioTrack: !!r.audio,
        failure: r.failure,
      })),
    };
  }
}

const app = new App();
app.start().catch((err) => {
  console.warn('huddle: start failed', err);
  app.showMessage('start_failed', `Something went wrong starting the page: ${err.message}`);
});
