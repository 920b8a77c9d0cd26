// The P2P side of a 1:1 call: one P2PPeer per remote participant, and the newcomer's
// wait for their offer (docs/protocol.md: those already in the call offer to whoever
// (re)connects; should no offer come, the newcomer offers after NEWCOMER_WAIT_MS).
//
// Events: 'media' (a peer's tracks or state changed), 'notice' {level, code, message}.

import { emit, on } from './events.js';
import { P2PPeer } from './p2p.js';
import { explain } from './texts.js';

const NEWCOMER_WAIT_MS = 4000;

export class P2PMesh extends EventTarget {
  /**
   * @param {object} o
   * @param {string} o.myId
   * @param {(message: object) => void} o.send
   * @param {() => RTCConfiguration} o.rtcConfig
   * @param {() => import('./media.js').LocalTracks} o.local
   * @param {Map<string, string>} o.failures  participant id -> why their media failed (shared)
   * @param {(id: string) => string} o.nameOf
   * @param {(id: string) => boolean} o.wanted  whether a peer with `id` should exist now
   */
  constructor({ myId, send, rtcConfig, local, failures, nameOf, wanted }) {
    super();
    this.myId = myId;
    this.send = send;
    this.rtcConfig = rtcConfig;
    this.local = local;
    this.failures = failures;
    this.nameOf = nameOf;
    this.wanted = wanted;
    /** @type {Map<string, P2PPeer>} */
    this.peers = new Map();
    /** @type {Map<string, ReturnType<typeof setTimeout>>} user id -> waiting for their offer */
    this.offerTimers = new Map();
  }

  /** @param {string} id */
  has(id) {
    return this.peers.has(id);
  }

  /**
   * Someone's socket came (back) up: offer to them. A peer we still hold may belong to
   * a page that reloaded: start afresh (the other side recognises the new session).
   * @param {string} id
   */
  reconnected(id) {
    const peer = this.peers.get(id);
    if (peer) peer.rebuild('reconnected');
    else this.create(id);
  }

  /**
   * We are the newcomer to those online: they offer (no glare). Wait for each offer,
   * and offer ourselves if none came in time (e.g. they have nothing to send).
   * @param {Iterable<string>} onlineIds
   */
  awaitOffers(onlineIds) {
    for (const id of onlineIds) {
      if (this.peers.has(id) || this.offerTimers.has(id)) continue;
      const timer = setTimeout(() => {
        this.offerTimers.delete(id);
        if (this.wanted(id) && !this.peers.has(id)) this.create(id);
      }, NEWCOMER_WAIT_MS);
      this.offerTimers.set(id, timer);
    }
  }

  /**
   * A message from a peer; an offer from someone without a peer creates one.
   * @param {string} sender
   * @param {{type: string}} message
   */
  handle(sender, message) {
    let peer = this.peers.get(sender);
    if (!peer) {
      if (message.type !== 'offer') return;
      peer = this.create(sender);
    }
    peer.handle(message);
  }

  /**
   * @param {string} id
   * @returns {P2PPeer}
   */
  create(id) {
    this.clearTimer(id);
    const peer = new P2PPeer({
      remoteId: id,
      polite: this.myId > id,
      send: this.send,
      rtcConfig: this.rtcConfig,
      local: this.local,
    });
    on(peer, 'tracks', () => emit(this, 'media'));
    on(peer, 'state', (state) => {
      if (state === 'connected') this.failures.delete(id);
      if (state === 'failed') this.failures.set(id, explain('ice_failed'));
      emit(this, 'media');
    });
    on(peer, 'rebuild', (reason) => {
      const message = `Reconnecting media with ${this.nameOf(id)} (${reason})…`;
      emit(this, 'notice', { level: 'warning', code: 'ice_failed', message });
      emit(this, 'media');
    });
    this.peers.set(id, peer);
    emit(this, 'media');
    return peer;
  }

  /**
   * They left: their peer, their timer and their failure go.
   * @param {string} id
   */
  remove(id) {
    this.clearTimer(id);
    const peer = this.peers.get(id);
    if (peer) {
      peer.close();
      this.peers.delete(id);
    }
    this.failures.delete(id);
  }

  /**
   * @param {'audio' | 'video'} kind
   * @param {MediaStreamTrack | null} track
   * @returns {Promise<unknown>[]}
   */
  replaceTrack(kind, track) {
    return [...this.peers.values()].map((peer) => peer.replaceTrack(kind, track));
  }

  /**
   * Start (a track) or stop (null) sharing a screen with every peer.
   * @param {MediaStreamTrack | null} track
   * @returns {Promise<unknown>[]}
   */
  setScreen(track) {
    return [...this.peers.values()].map((peer) => peer.setScreen(track));
  }

  /** @param {string} id */
  clearTimer(id) {
    clearTimeout(this.offerTimers.get(id));
    this.offerTimers.delete(id);
  }

  /** Every peer closed and every wait cancelled (a switch to the SFU, or the end). */
  close() {
    for (const peer of this.peers.values()) peer.close();
    this.peers.clear();
    for (const timer of this.offerTimers.values()) clearTimeout(timer);
    this.offerTimers.clear();
  }
}
