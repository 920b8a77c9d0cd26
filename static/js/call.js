// One call, from the HTTP join to leaving: signaling, local media, and either P2P
// peers (1:1) or the SFU session (group), switching live when the server says so.
//
// Events (CustomEvent detail):
//   'status'  {status, message?}   joining | ringing | connecting | connected | reconnecting | ended | failed
//   'roster'                        participants changed (names, mute/video flags, presence)
//   'media'                         remote or local media changed
//   'notice'  {level, code, message}
//   'ended'   {code, message}       the call is over for us (left, ended, or a fatal failure)

import { ApiError } from './api.js';
import { LocalMedia } from './media.js';
import { P2PPeer } from './p2p.js';
import { SfuSession } from './sfu.js';
import { Signaling } from './signaling.js';

const SERVER = 'server';
const SFU = 'sfu';
const NEWCOMER_WAIT_MS = 4000;

/** Human text for HTTP and signaling error codes a participant can meet. */
export function explain(code, fallback) {
  const texts = {
    call_ended: 'This call has ended.',
    ringing_expired: 'This call stopped ringing before it was answered.',
    participant_limit_reached: 'This call is full: no more participants can join.',
    not_invited: 'You are not invited to this call.',
    not_a_member: 'You are not a member of this conversation.',
    call_not_found: 'This call does not exist (check the link).',
    token_missing: 'You need to sign in (no token was given).',
    token_expired: 'Your session has expired. Get a new link from the app that sent you here.',
    token_invalid: 'Your sign-in token is not valid for this server.',
    network_error: 'Cannot reach the server. Check your connection.',
    signaling_lost: 'Lost the connection to the server. Rejoin to continue.',
    replaced: 'You joined this call from another tab or device, so this one was disconnected.',
    ice_failed: 'Could not establish a media connection (ICE failed). Retrying…',
    rate_limited: 'Too many attempts. Wait a moment and try again.',
    already_declined: 'You already declined this call.',
  };
  return texts[code] || fallback || code;
}

const END_REASONS = {
  completed: 'The call has ended.',
  declined: 'The call was declined.',
  missed: 'The call was not answered.',
  expired: 'The call reached its maximum duration and was ended.',
  cleaned: 'The call was closed by the server.',
};

export class CallSession extends EventTarget {
  /**
   * @param {object} o
   * @param {import('./api.js').Api} o.api
   * @param {string} o.callId
   * @param {{user_id: string, name: string|null}} o.me
   */
  constructor({ api, callId, me, initial = null, directory = {} }) {
    super();
    this.api = api;
    this.callId = callId;
    this.me = me;
    this.initial = initial; // the initiate answer: the caller is joined already
    this.directory = directory; // user_id -> {name}: names known before they join
    this.call = null;
    this.mode = 'p2p';
    this.iceServers = [];
    this.status = 'idle';
    this.roster = new Map(); // user_id -> {user_id, name, muted, video, online}
    this.peers = new Map(); // user_id -> P2PPeer
    this.sfu = null;
    this.local = new LocalMedia();
    this.muted = false;
    this.cameraOn = true;
    this.signaling = null;
    this.over = false;
    this.sfuResets = 0;
    this.failures = new Map(); // user_id or 'sfu' -> message
    this.offerTimers = new Map(); // user_id -> timer: waiting for their offer
    this.messageLog = [];
    this.leaving = false;
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  setStatus(status, message) {
    this.status = status;
    this.emit('status', { status, message });
  }

  notice(level, code, message) {
    this.emit('notice', { level, code, message: message || explain(code) });
  }

  get isVideo() {
    return !this.call || this.call.call_type === 'video';
  }

  rtcConfig() {
    return { iceServers: this.iceServers, bundlePolicy: 'max-bundle' };
  }

  /** HTTP join, local media, then signaling. Throws ApiError for a refused join. */
  async start() {
    this.setStatus('joining');
    await this.httpJoin();
    this.applyCallObject(this.call);
    await this.local.start(this.isVideo);
    this.cameraOn = !!this.local.video;
    for (const warning of this.local.warnings) this.notice('error', warning.code, warning.message);
    if (this.over) return;
    this.emit('media');
    this.connectSignaling();
  }

  async httpJoin() {
    const cacheKey = `huddle.ice.${this.callId}`;
    if (this.initial) {
      this.call = this.initial;
      this.initial = null;
      this.iceServers = this.call.ice_servers || [];
    } else if (sessionStorage.getItem(cacheKey) && (await this.stillJoined())) {
      // A reload: the seat is still ours (grace period), so no join (it would be a 409).
      this.iceServers = await this.cachedIceServers(cacheKey);
    } else {
      try {
        this.call = await this.api.join(this.callId);
        this.iceServers = this.call.ice_servers || [];
      } catch (err) {
        // The caller is joined from initiation; a reload within the grace period is too.
        if (!(err instanceof ApiError) || err.code !== 'already_joined') throw err;
        this.call = await this.api.call(this.callId);
        this.iceServers = await this.cachedIceServers(cacheKey);
      }
    }
    // A reload keeps the seat (already joined) but gets no ice_servers: remember them.
    sessionStorage.setItem(cacheKey, JSON.stringify(this.iceServers));
    this.mode = this.call.mode || 'p2p';
  }

  async stillJoined() {
    try {
      const call = await this.api.call(this.callId);
      const mine = (call.participants || []).find((p) => p.user_id === this.me.user_id);
      if (call.status !== 'ended' && mine && mine.joined_at && !mine.left_at) {
        this.call = call;
        return true;
      }
    } catch (err) {
      /* fall through to a join, which explains any refusal */
    }
    return false;
  }

  async cachedIceServers(cacheKey) {
    const cached = sessionStorage.getItem(cacheKey);
    if (cached) return JSON.parse(cached);
    try {
      const turn = await this.api.turnCredentials();
      return [{ urls: turn.uris, username: turn.username, credential: turn.password }];
    } catch (err) {
      return []; // no TURN configured (404): host candidates only
    }
  }

  applyCallObject(call) {
    for (const p of call.participants || []) {
      if (p.user_id === this.me.user_id) {
        if (p.name && !this.me.name) this.me.name = p.name;
        continue;
      }
      const joined = p.joined_at && !p.left_at;
      const entry = this.roster.get(p.user_id);
      if (joined && !entry) {
        this.roster.set(p.user_id, {
          user_id: p.user_id,
          name: p.name,
          muted: p.muted,
          video: p.video,
          online: false,
        });
      } else if (entry && !entry.name && p.name) {
        entry.name = p.name;
      }
    }
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
    signaling.addEventListener('state', ({ detail }) => {
      if (detail === 'reconnecting') this.setStatus('reconnecting', 'Reconnecting to the server…');
      else if (detail === 'connecting') this.setStatus('connecting');
    });
    signaling.addEventListener('open', ({ detail }) => {
      this.setStatus(this.hasRemote() ? 'connected' : 'waiting');
      if (detail.reconnected) this.notice('info', 'reconnected', 'Reconnected to the server.');
    });
    signaling.addEventListener('message', ({ detail }) => this.onMessage(detail));
    signaling.addEventListener('closed', ({ detail }) => this.onSignalingClosed(detail));
    signaling.connect();
  }

  async onSignalingClosed({ code, lost }) {
    if (this.over || this.leaving) return;
    if (code === 4001) {
      this.finish('replaced', explain('replaced'));
      return;
    }
    if (code === 1000) {
      // We left (perhaps from another device) or the call ended: never rejoin on our own.
      let ended = false;
      try {
        ended = (await this.api.call(this.callId)).status === 'ended';
      } catch (err) {
        /* treat as left */
      }
      if (ended) this.finish('call_ended', explain('call_ended'));
      else this.finish('left', 'You left the call.');
      return;
    }
    // Refused before the upgrade, or gone for longer than the grace period: ask why.
    let call = null;
    try {
      call = await this.api.call(this.callId);
    } catch (err) {
      this.finish('signaling_lost', explain('signaling_lost'));
      return;
    }
    if (call.status === 'ended') {
      this.finish('call_ended', END_REASONS[call.end_reason] || explain('call_ended'));
      return;
    }
    const mine = (call.participants || []).find((p) => p.user_id === this.me.user_id);
    if (mine && mine.joined_at && !mine.left_at && !lost) {
      this.finish('signaling_lost', explain('signaling_lost'));
      return;
    }
    // Our seat was given up: take it again (a rejoin is allowed) and reconnect.
    try {
      await this.httpJoin();
    } catch (err) {
      this.finish(err.code || 'signaling_lost', explain(err.code, err.message));
      return;
    }
    this.notice('info', 'rejoined', 'Rejoined the call after losing the connection.');
    this.resetMedia();
    this.connectSignaling();
  }

  hasRemote() {
    for (const entry of this.roster.values()) if (entry.online) return true;
    return false;
  }

  // -- signaling messages -----------------------------------------------------------------

  onMessage(message) {
    if (this.over) return;
    // A short history for debugging (window.huddle.messages()); SDP left out.
    this.messageLog.push({ type: message.type, sender: message.sender_id, at: Date.now(),
      detail: message.participant_id || message.mode || message.code || message.pc || null });
    if (this.messageLog.length > 300) this.messageLog.shift();
    const sender = message.sender_id;
    switch (message.type) {
      case 'participants':
        this.onRoster(message.participants || []);
        break;
      case 'presence':
        this.onPresence(message.participant_id, message.online);
        break;
      case 'join':
        this.upsert(message.participant_id, { name: message.name }, { create: true });
        break;
      case 'leave':
        this.onLeft(message.participant_id);
        break;
      case 'declined':
        this.onDeclined(message.participant_id);
        break;
      case 'invited':
        this.emit('invited', { ids: message.invited_ids || [] });
        break;
      case 'mute':
        this.upsert(message.participant_id, { muted: message.muted, video: message.video });
        break;
      case 'mode':
        this.setMode(message.mode);
        break;
      case 'call_ended':
        this.finish('call_ended', END_REASONS[message.reason] || explain('call_ended'));
        break;
      case 'error':
        this.onError(message);
        break;
      case 'tracks':
        if (this.sfu) this.sfu.handle(message);
        break;
      case 'offer':
      case 'answer':
      case 'ice_candidate':
        if (sender === SFU) {
          if (this.sfu) this.sfu.handle(message);
        } else if (sender && sender !== SERVER) {
          this.onPeerMessage(sender, message);
        }
        break;
      default:
        break;
    }
  }

  onRoster(entries) {
    const seen = new Set();
    for (const entry of entries) {
      const id = entry.participant_id || entry.user_id;
      if (!id || id === this.me.user_id) continue;
      seen.add(id);
      const existing = this.roster.get(id) || {};
      this.roster.set(id, {
        ...existing,
        user_id: id,
        name: entry.name || existing.name || null,
        muted: !!entry.muted,
        video: entry.video !== false,
        online: entry.online !== false,
      });
    }
    for (const id of [...this.roster.keys()]) {
      if (!seen.has(id)) this.removeParticipant(id);
    }
    this.rosterChanged();
  }

  /** Update a participant; only `join` (and a P2P offer) may add one to the roster. */
  upsert(id, fields, { create = false } = {}) {
    if (!id || id === this.me.user_id) return;
    if (!create && !this.roster.has(id)) return;
    const entry = this.roster.get(id) || { user_id: id, name: null, muted: false, video: true, online: false };
    for (const [key, value] of Object.entries(fields)) {
      if (value !== undefined && value !== null) entry[key] = value;
    }
    this.roster.set(id, entry);
    this.rosterChanged();
  }

  onPresence(id, online) {
    if (!id || id === this.me.user_id) return;
    if (online && this.mode === 'p2p') {
      // docs/protocol.md: those already in the call offer to whoever (re)connects. A
      // peer we still hold may belong to a page that reloaded: start afresh (the
      // other side recognises the new session and follows).
      const peer = this.peers.get(id);
      if (peer) peer.rebuild('reconnected');
      else this.createPeer(id);
    }
    this.upsert(id, { online: !!online }, { create: !!online });
    if (!online) {
      // Their socket dropped; their seat is kept for the grace period and P2P media may
      // well survive it. Nothing to tear down yet.
      this.notice('info', 'peer_reconnecting', `${this.nameOf(id)} lost the connection…`);
    }
  }

  onLeft(id) {
    if (!id || id === this.me.user_id) return;
    const name = this.nameOf(id);
    this.removeParticipant(id);
    this.notice('info', 'left', `${name} left the call.`);
    this.rosterChanged();
  }

  onDeclined(id) {
    this.notice('info', 'declined', `${this.nameOf(id)} declined the call.`);
  }

  onError(message) {
    const code = message.code || 'error';
    if (code === 'signaling_degraded') {
      this.notice('warning', code, 'Signaling is degraded: some messages may be lost.');
      return;
    }
    if (code === 'call_ended') {
      this.finish('call_ended', explain('call_ended'));
      return;
    }
    this.notice('error', code, message.message || code);
  }

  nameOf(id) {
    const entry = this.roster.get(id);
    const known = this.directory[id];
    return (entry && entry.name) || (known && known.name) || 'A participant';
  }

  removeParticipant(id) {
    this.roster.delete(id);
    clearTimeout(this.offerTimers.get(id));
    this.offerTimers.delete(id);
    const peer = this.peers.get(id);
    if (peer) {
      peer.close();
      this.peers.delete(id);
    }
    this.failures.delete(id);
    this.emit('media');
  }

  rosterChanged() {
    if (this.over) return;
    if (this.mode === 'p2p') {
      // We are the newcomer to those already online: they offer (no glare). Should no
      // offer come (e.g. they have nothing to send), offer ourselves after a while.
      for (const [id, entry] of this.roster) {
        if (entry.online && !this.peers.has(id) && !this.offerTimers.has(id)) {
          const timer = setTimeout(() => {
            this.offerTimers.delete(id);
            const now = this.roster.get(id);
            if (!this.over && this.mode === 'p2p' && now && now.online && !this.peers.has(id)) {
              this.createPeer(id);
            }
          }, NEWCOMER_WAIT_MS);
          this.offerTimers.set(id, timer);
        }
      }
    }
    if (this.signaling && this.signaling.connected) {
      this.setStatus(this.hasRemote() ? 'connected' : 'waiting');
    }
    this.emit('roster');
  }

  // -- P2P ------------------------------------------------------------------------------

  createPeer(id) {
    clearTimeout(this.offerTimers.get(id));
    this.offerTimers.delete(id);
    const peer = new P2PPeer({
      remoteId: id,
      polite: this.me.user_id > id,
      send: (message) => this.signaling.send(message),
      rtcConfig: () => this.rtcConfig(),
      local: () => this.localTracks(),
    });
    peer.addEventListener('tracks', () => this.emit('media'));
    peer.addEventListener('state', ({ detail }) => {
      if (detail === 'connected') this.failures.delete(id);
      if (detail === 'failed') this.failures.set(id, explain('ice_failed'));
      this.emit('media');
    });
    peer.addEventListener('rebuild', ({ detail }) => {
      this.notice('warning', 'ice_failed', `Reconnecting media with ${this.nameOf(id)} (${detail})…`);
      this.emit('media');
    });
    this.peers.set(id, peer);
    this.emit('media');
    return peer;
  }

  onPeerMessage(sender, message) {
    if (this.mode !== 'p2p') return;
    let peer = this.peers.get(sender);
    if (!peer) {
      if (message.type !== 'offer') return;
      this.upsert(sender, { online: true }, { create: true });
      peer = this.peers.get(sender) || this.createPeer(sender);
    }
    peer.handle(message);
  }

  closePeers() {
    for (const peer of this.peers.values()) peer.close();
    this.peers.clear();
    for (const timer of this.offerTimers.values()) clearTimeout(timer);
    this.offerTimers.clear();
  }

  // -- SFU ------------------------------------------------------------------------------

  setMode(mode) {
    if (mode !== 'p2p' && mode !== 'sfu') return;
    const switched = mode !== this.mode;
    this.mode = mode;
    if (mode === 'sfu') {
      if (switched) this.notice('info', 'mode', 'More people joined: switching to group mode.');
      this.closePeers();
      if (!this.sfu) this.startSfu();
    } else {
      this.rosterChanged();
    }
    this.emit('media');
  }

  startSfu() {
    const sfu = new SfuSession({
      send: (message) => this.signaling.send(message),
      rtcConfig: () => this.rtcConfig(),
      local: () => this.localTracks(),
      kinds: this.isVideo ? ['audio', 'video'] : ['audio'],
    });
    this.sfu = sfu;
    sfu.addEventListener('tracks', () => this.emit('media'));
    sfu.addEventListener('state', ({ detail }) => {
      if (detail.state === 'connected') this.failures.delete(SFU);
      this.emit('media');
    });
    sfu.addEventListener('failed', () => this.onSfuFailed());
    sfu.addEventListener('error', ({ detail }) => this.notice('error', 'sfu_error', detail.message));
    sfu.publish().catch((err) => this.notice('error', 'sfu_error', `Could not publish: ${err.message}`));
  }

  onSfuFailed() {
    if (this.over || !this.sfu) return;
    this.sfuResets += 1;
    if (this.sfuResets > 5) {
      this.failures.set(SFU, 'Media connection to the server failed (ICE failed). Rejoin to retry.');
      this.notice('error', 'ice_failed', 'Media connection to the server keeps failing (ICE failed).');
      this.emit('media');
      return;
    }
    this.failures.set(SFU, explain('ice_failed'));
    this.notice('warning', 'ice_failed', 'Media connection to the server failed: reconnecting…');
    this.resetSfu();
  }

  /** Rebuild both SFU connections: a fresh publish offer makes the SFU start over. */
  resetSfu() {
    if (!this.sfu) return;
    this.sfu.closePcs();
    this.sfu.publish().catch((err) => this.notice('error', 'sfu_error', err.message));
    this.emit('media');
  }

  resetMedia() {
    this.closePeers();
    if (this.sfu) {
      this.sfu.close();
      this.sfu = null;
    }
    this.emit('media');
  }

  // -- local media ----------------------------------------------------------------------

  localTracks() {
    const { stream, audio, video } = this.local.tracks();
    return { stream, audio: this.muted ? null : audio, video: this.cameraOn ? video : null };
  }

  async replaceEverywhere(kind, track) {
    const jobs = [...this.peers.values()].map((peer) => peer.replaceTrack(kind, track));
    if (this.sfu) jobs.push(this.sfu.replaceTrack(kind, track));
    await Promise.allSettled(jobs);
  }

  async setMuted(muted) {
    if (!this.local.audio && !muted) {
      this.notice('error', 'no_device', 'No microphone is available.');
      return;
    }
    this.muted = muted;
    // No track on the sender: no audio packets leave at all (not merely silence).
    await this.replaceEverywhere('audio', muted ? null : this.local.audio);
    if (this.signaling) this.signaling.send({ type: 'mute', muted });
    this.emit('media');
  }

  async setCamera(on) {
    if (!this.isVideo && on) return;
    let track = null;
    try {
      track = await this.local.setCamera(on);
    } catch (err) {
      this.notice('error', err.code || 'media_error', err.message);
      return;
    }
    this.cameraOn = !!track;
    await this.replaceEverywhere('video', track);
    if (this.signaling) this.signaling.send({ type: 'mute', video: this.cameraOn });
    this.emit('media');
  }

  // -- the call as a whole ----------------------------------------------------------------

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

  finish(code, message) {
    if (this.over) return;
    this.over = true;
    if (this.signaling) this.signaling.close();
    this.resetMedia();
    this.local.stop();
    this.setStatus(code === 'left' || code === 'call_ended' ? 'ended' : 'failed', message);
    this.emit('ended', { code, message });
  }

  /** What the UI draws: one entry per remote participant, with its media. */
  remotes() {
    const sfuTracks = this.sfu ? this.sfu.remoteTracks() : new Map();
    const result = [];
    for (const [id, entry] of this.roster) {
      let audio = null;
      let video = null;
      let connection = 'new';
      const peer = this.peers.get(id);
      if (this.mode === 'p2p' && peer) {
        audio = peer.remoteStream.getAudioTracks()[0] || null;
        video = peer.remoteStream.getVideoTracks()[0] || null;
        connection = peer.pc ? peer.pc.connectionState : 'closed';
      } else if (this.mode === 'sfu' && this.sfu) {
        const tracks = sfuTracks.get(id);
        if (tracks) {
          audio = tracks.audio;
          video = tracks.video;
        }
        connection = this.sfu.subscribePc ? this.sfu.subscribePc.connectionState : 'new';
      }
      result.push({
        ...entry,
        audio,
        video: entry.video,
        videoTrack: video,
        connection,
        failure: this.failures.get(id) || (this.mode === 'sfu' ? this.failures.get(SFU) : null) || null,
      });
    }
    return result;
  }

  /** Every live RTCPeerConnection, with whose media it carries. */
  connections() {
    const list = [];
    for (const [id, peer] of this.peers) if (peer.pc) list.push({ pc: peer.pc, role: 'p2p', remote: id });
    if (this.sfu) {
      if (this.sfu.publishPc) list.push({ pc: this.sfu.publishPc, role: 'publish', remote: null });
      if (this.sfu.subscribePc) list.push({ pc: this.sfu.subscribePc, role: 'subscribe', remote: null });
    }
    return list;
  }
}
