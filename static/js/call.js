// One call, from the HTTP join to leaving: signaling, local media, and either P2P
// peers (1:1) or the SFU session (group), switching live when the server says so.
// This class wires the parts, each with one job: Joiner (HTTP seat, reload cache),
// Roster (who is there), P2PMesh (peers, newcomer timers), SfuLink (SFU reset policy),
// LocalSending (camera, mic, mute), route (server message -> part), judgeClose (what a
// final signaling close means), callmodel.js (what the UI draws), texts.js (UI text).
//
// Events (CustomEvent detail):
//   'status'  {status, message?}   joining | connecting | waiting | connected | reconnecting | ended | failed
//   'roster'                        participants changed (names, mute/video flags, presence)
//   'media'                         remote or local media changed
//   'notice'  {level, code, message}
//   'invited' {ids}                 someone invited more people
//   'ended'   {code, message}       the call is over for us (left, ended, or a fatal failure)

import { connectionViews, remoteViews } from './callmodel.js';
import { judgeClose } from './closing.js';
import { emit, on } from './events.js';
import { Joiner } from './join.js';
import { P2PMesh } from './mesh.js';
import { MessageLog, route } from './messages.js';
import { Roster } from './roster.js';
import { LocalSending } from './sending.js';
import { SfuLink } from './sfulink.js';
import { Signaling } from './signaling.js';
import { explain } from './texts.js';

/** @typedef {{user_id: string, name: string | null}} Me */

export class CallSession extends EventTarget {
  /**
   * @param {object} o
   * @param {import('./api.js').Api} o.api
   * @param {string} o.callId
   * @param {Me} o.me
   * @param {import('./join.js').CallObject | null} [o.initial]  the initiate answer: the caller is joined already
   * @param {Record<string, {name?: string | null}>} [o.directory]  user_id -> {name}: names known before they join
   */
  constructor({ api, callId, me, initial = null, directory = {} }) {
    super();
    this.api = api;
    this.callId = callId;
    this.me = me;
    this.directory = directory;
    this.joiner = new Joiner({ api, callId, userId: me.user_id, initial });
    /** @type {import('./join.js').CallObject | null} */
    this.call = null;
    this.mode = 'p2p';
    /** @type {RTCIceServer[]} */
    this.iceServers = [];
    this.status = 'idle';
    this.roster = new Roster(me.user_id, directory);
    /** @type {Signaling | null} */
    this.signaling = null;
    this.over = false;
    this.leaving = false;
    /** @type {Map<string, string>} user id or 'sfu' -> why its media failed */
    this.failures = new Map();
    this.messageLog = new MessageLog();
    const send = (/** @type {object} */ message) => this.signaling.send(message);
    const rtcConfig = () => this.rtcConfig();
    const local = () => this.sending.tracks();
    this.mesh = new P2PMesh({
      myId: me.user_id,
      send,
      rtcConfig,
      local,
      failures: this.failures,
      nameOf: (id) => this.roster.nameOf(id),
      wanted: (id) => !this.over && this.mode === 'p2p' && !!(this.roster.get(id) || {}).online,
    });
    this.sfuLink = new SfuLink({
      send,
      rtcConfig,
      local,
      kinds: () => (this.isVideo ? ['audio', 'video'] : ['audio']),
      failures: this.failures,
      checkSignaling: () => this.signaling && this.signaling.check(),
    });
    this.sending = new LocalSending({
      replace: (kind, track) =>
        Promise.allSettled([...this.mesh.replaceTrack(kind, track), ...this.sfuLink.replaceTrack(kind, track)]),
      share: (track) => Promise.allSettled([...this.mesh.setScreen(track), ...this.sfuLink.setScreen(track)]),
      announce: (flags) => {
        if (this.signaling) this.signaling.send({ type: 'mute', ...flags });
      },
      fail: (code, message) => this.notice('error', code, message),
      changed: () => this.emit('media'),
    });
    for (const part of [this.mesh, this.sfuLink]) {
      on(part, 'media', () => this.emit('media'));
      on(part, 'notice', ({ level, code, message }) => this.notice(level, code, message));
    }
  }

  /** The P2P peers by user id (empty in SFU mode). */
  get peers() {
    return this.mesh.peers;
  }

  /** The SFU session, in SFU mode. */
  get sfu() {
    return this.sfuLink.session;
  }

  /**
   * @param {string} type
   * @param {unknown} [detail]
   */
  emit(type, detail) {
    emit(this, type, detail);
  }

  /**
   * @param {string} status
   * @param {string} [message]
   */
  setStatus(status, message) {
    this.status = status;
    this.emit('status', { status, message });
  }

  /**
   * @param {string} level  'info' | 'warning' | 'error'
   * @param {string} code
   * @param {string} [message]
   */
  notice(level, code, message) {
    this.emit('notice', { level, code, message: message || explain(code) });
  }

  get isVideo() {
    return !this.call || this.call.call_type === 'video';
  }

  /** @returns {RTCConfiguration} */
  rtcConfig() {
    return { iceServers: this.iceServers, bundlePolicy: 'max-bundle' };
  }

  /** HTTP join, local media, then signaling. Throws ApiError for a refused join. */
  async start() {
    this.setStatus('joining');
    await this.httpJoin();
    this.applyCallObject(this.call);
    const warnings = await this.sending.start(this.isVideo);
    for (const warning of warnings) this.notice('error', warning.code, warning.message);
    if (this.over) return;
    this.emit('media');
    this.connectSignaling();
  }

  async httpJoin() {
    const { call, iceServers } = await this.joiner.join();
    this.call = call;
    this.iceServers = iceServers;
    this.mode = call.mode || 'p2p';
  }

  /**
   * Take in an HTTP call object: our own name, and those joined that we do not know yet.
   * @param {import('./join.js').CallObject} call
   */
  applyCallObject(call) {
    const mine = (call.participants || []).find((p) => p.user_id === this.me.user_id);
    if (mine && mine.name && !this.me.name) this.me.name = mine.name;
    this.roster.addFromCall(call);
    this.emit('roster');
  }

  connectSignaling() {
    const signaling = new Signaling({
      callId: this.callId,
      token: () => this.api.token,
      // A refused handshake after the call ended (410) is not worth repeating.
      worthRetrying: async () => (await this.api.call(this.callId)).status !== 'ended',
    });
    this.signaling = signaling;
    on(signaling, 'state', (state) => {
      if (state === 'reconnecting') this.setStatus('reconnecting', 'Reconnecting to the server…');
      else if (state === 'connecting') this.setStatus('connecting');
    });
    on(signaling, 'open', ({ reconnected, republish }) => {
      this.setStatus(this.roster.anyOnline() ? 'connected' : 'waiting');
      if (reconnected) this.notice('info', 'reconnected', 'Reconnected to the server.');
      if (reconnected && this.mode === 'sfu') this.sfuLink.reconnected(republish);
    });
    on(signaling, 'message', (message) => this.onMessage(message));
    on(signaling, 'closed', (close) => this.onSignalingClosed(close));
    signaling.connect();
  }

  /** @param {{code: number, lost?: boolean}} close */
  async onSignalingClosed(close) {
    if (this.over || this.leaving) return;
    const ending = await judgeClose({ api: this.api, callId: this.callId, userId: this.me.user_id }, close);
    if (this.over) return;
    if (ending) {
      this.finish(ending.code, ending.message);
      return;
    }
    try {
      await this.httpJoin();
    } catch (err) {
      this.finish(err.code || 'signaling_lost', explain(err.code, err.message));
      return;
    }
    if (this.over) return; // left while rejoining
    this.notice('info', 'rejoined', 'Rejoined the call after losing the connection.');
    this.resetMedia();
    this.connectSignaling();
  }

  // -- signaling messages -----------------------------------------------------------------

  /** @param {{type: string} & Record<string, any>} message  a server message (docs/protocol.md) */
  onMessage(message) {
    if (this.over) return;
    this.messageLog.add(message);
    route(this, message);
  }

  /** @param {import('./roster.js').PresenceEntry[]} entries */
  onRoster(entries) {
    for (const id of this.roster.replace(entries)) this.removeParticipant(id);
    this.rosterChanged();
  }

  /**
   * Update a participant; only `join` (and a P2P offer) may add one to the roster.
   * @param {string} id
   * @param {Partial<import('./roster.js').RosterEntry>} fields
   * @param {{create?: boolean}} [options]
   */
  upsert(id, fields, options) {
    if (this.roster.upsert(id, fields, options)) this.rosterChanged();
  }

  /**
   * @param {string} id
   * @param {boolean} online
   */
  onPresence(id, online) {
    if (!this.roster.isOther(id)) return;
    // docs/protocol.md: those already in the call offer to whoever (re)connects.
    if (online && this.mode === 'p2p') this.mesh.reconnected(id);
    this.upsert(id, { online: !!online }, { create: !!online });
    if (!online) {
      // Their socket dropped; their seat is kept for the grace period and P2P media may
      // well survive it. Nothing to tear down yet.
      this.notice('info', 'peer_reconnecting', `${this.roster.nameOf(id)} lost the connection…`);
    }
  }

  /** @param {string} id */
  onLeft(id) {
    if (!this.roster.isOther(id)) return;
    const name = this.roster.nameOf(id);
    this.removeParticipant(id);
    this.notice('info', 'left', `${name} left the call.`);
    this.rosterChanged();
  }

  /** @param {string} id */
  removeParticipant(id) {
    this.roster.delete(id);
    this.mesh.remove(id);
    this.emit('media');
  }

  rosterChanged() {
    if (this.over) return;
    if (this.mode === 'p2p') {
      const online = [...this.roster].filter(([, entry]) => entry.online).map(([id]) => id);
      this.mesh.awaitOffers(online);
    }
    if (this.signaling && this.signaling.connected) {
      this.setStatus(this.roster.anyOnline() ? 'connected' : 'waiting');
    }
    this.emit('roster');
  }

  /**
   * @param {string} sender
   * @param {{type: string}} message
   */
  onPeerMessage(sender, message) {
    if (this.mode !== 'p2p') return;
    if (!this.mesh.has(sender)) {
      if (message.type !== 'offer') return;
      this.upsert(sender, { online: true }, { create: true });
    }
    this.mesh.handle(sender, message);
  }

  /** @param {string} mode  the server's `mode` message: 'p2p' | 'sfu' */
  setMode(mode) {
    if (mode !== 'p2p' && mode !== 'sfu') return;
    const switched = mode !== this.mode;
    this.mode = mode;
    if (mode === 'sfu') {
      if (switched) this.notice('info', 'mode', 'More people joined: switching to group mode.');
      this.mesh.close();
      this.sfuLink.start();
    } else {
      this.rosterChanged();
    }
    this.emit('media');
  }

  resetMedia() {
    this.mesh.close();
    this.sfuLink.close();
    this.emit('media');
  }

  // -- local media ----------------------------------------------------------------------

  get local() {
    return this.sending.local;
  }

  get muted() {
    return this.sending.muted;
  }

  get cameraOn() {
    return this.sending.cameraOn;
  }

  /** @param {boolean} muted */
  async setMuted(muted) {
    if (await this.sending.setMuted(muted)) this.emit('media');
  }

  /** @param {boolean} wanted */
  async setCamera(wanted) {
    if (await this.sending.setCamera(wanted)) this.emit('media');
  }

  // -- the call as a whole ----------------------------------------------------------------

  /** @param {string[]} userIds */
  async invite(userIds) {
    const call = await this.api.invite(this.callId, userIds);
    this.call = call;
    return call;
  }

  async leave() {
    if (this.over || this.leaving) return;
    this.leaving = true;
    try {
      await this.api.leave(this.callId);
    } catch (err) {
      // Already gone (ended, not joined): leaving locally is all that is left to do.
    }
    this.finish('left', 'You left the call.');
  }

  async endForAll() {
    if (this.over || this.leaving) return;
    this.leaving = true;
    try {
      await this.api.end(this.callId);
    } catch (err) {
      /* already over */
    }
    this.finish('call_ended', 'You ended the call for everyone.');
  }

  /**
   * @param {string} code
   * @param {string} message
   */
  finish(code, message) {
    if (this.over) return;
    this.over = true;
    if (this.signaling) this.signaling.close();
    this.resetMedia();
    this.sending.stop();
    this.setStatus(code === 'left' || code === 'call_ended' ? 'ended' : 'failed', message);
    this.emit('ended', { code, message });
  }

  /** What the UI draws: one entry per remote participant, with its media. */
  remotes() {
    return remoteViews(this.parts());
  }

  /** Every live RTCPeerConnection, with whose media it carries. */
  connections() {
    return connectionViews(this.parts());
  }

  /** @returns {import('./callmodel.js').CallParts} */
  parts() {
    return { mode: this.mode, roster: this.roster, peers: this.mesh.peers, sfu: this.sfu, failures: this.failures };
  }
}
