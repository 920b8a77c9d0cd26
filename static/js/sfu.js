// Media through the SFU (DESIGN.md "SFU"): two connections, so offers never collide.
//   publish:   we offer, the SFU answers (`target_id: "sfu"`, `pc: "publish"`)
//   subscribe: the SFU offers whenever what we receive changes; we answer
// A `tracks` message before each subscribe offer says whose media each m-line (mid)
// carries; transceivers (and so mids) are reused for the next track of the same kind.
//
// A `speakers` message says who talks (`speakers`, the dominant one): kept as `speakers`.
// `quality`, `layers` and `track_settings`: adaptation to this receiver (adapt.js).
//
// A connection that was connected and then drops (`disconnected`/`failed`: the network
// changed) is `interrupted`: the link restarts ICE on it (docs/protocol.md "ICE
// restart": a publish offer with `ice_restart: true`; `ice_restart` for the subscribe
// connection, which the SFU answers with a new offer). One that fails before ever
// connecting, or whose restart does not connect, is `failed`: the link starts over.
//
// Screen sharing: a second video transceiver on the publish connection, announced by
// the publish offer's `sources` (mid -> camera | screen | microphone); the SFU's
// `tracks` entries say each received track's `source`. Stopping makes the m-line
// inactive (a re-offer); sharing again re-enables the same transceiver.

import { sourcesOf } from './p2p.js';

import { applyLayers, parseQuality, TileReporter } from './adapt.js';
import { preferCodecs } from './codecs.js';
import { ReceiveWatch } from './liveness.js';
import { parseSpeakers } from './speakers.js';

const SFU = 'sfu';
const ANSWER_WAIT_MS = 10000;

// The camera is published as simulcast (docs/protocol.md "Simulcast"): three VP8
// encodings, LOWEST FIRST (the SFU takes the layers in the offer's a=simulcast order,
// which is this order). Chrome sends only as many as the capture size allows (three
// from 960x540 up), so the camera is captured at 1280x720 where it can be.
const SIMULCAST = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 100_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 400_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];

export class SfuSession extends EventTarget {
  /**
   * @param {object} o
   * @param {(message: object) => void} o.send
   * @param {() => RTCConfiguration} o.rtcConfig
   * @param {() => import('./media.js').LocalTracks} o.local
   * @param {string[]} o.kinds  what to publish: ['audio'] or ['audio', 'video']
   */
  constructor({ send, rtcConfig, local, kinds }) {
    super();
    this.sendSignal = send;
    this.rtcConfig = rtcConfig;
    this.local = local;
    this.kinds = kinds;
    this.publishPc = null;
    this.subscribePc = null;
    this.senders = {};
    /** @type {RTCRtpTransceiver | null} */
    this.screenTransceiver = null;
    this.trackInfo = new Map(); // mid -> {participant_id, kind, source, track_id}
    /** @type {import('./speakers.js').Speakers} */
    this.speakers = parseSpeakers({});
    /** What the SFU sends us of each participant's video (docs/protocol.md `quality`). */
    this.quality = parseQuality({});
    /** Tells the SFU how large each received video is shown (`track_settings`). */
    this.tiles = new TileReporter((message) => this.send(message));
    /** The camera's transceiver on the publish connection (its mid names it in `layers`). */
    this.videoTransceiver = null;
    this.layersQueue = Promise.resolve();
    /** @type {(() => void) | null} resolves the outstanding publish offer's wait */
    this.answered = null;
    this.publishQueue = Promise.resolve();
    this.closed = false;
    this.publishing = false;
    this.pendingCandidates = { publish: [], subscribe: [] };
    this.subscribeQueue = Promise.resolve();
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  send(message) {
    this.sendSignal({ ...message, target_id: SFU });
  }

  /** Create the publish connection and offer it to the SFU. */
  async publish() {
    if (this.closed) return;
    const pc = new RTCPeerConnection(this.rtcConfig());
    this.publishPc = pc;
    this.senders = {};
    this.screenTransceiver = null;
    const { stream, screen, ...tracks } = this.local();
    for (const kind of this.kinds) {
      /** @type {RTCRtpTransceiverInit} */
      const init = { direction: 'sendonly', streams: [stream] };
      if (kind === 'video') init.sendEncodings = SIMULCAST.map((encoding) => ({ ...encoding }));
      const transceiver = pc.addTransceiver(tracks[kind] || kind, init);
      preferCodecs(transceiver, kind);
      this.senders[kind] = transceiver.sender;
      if (kind === 'video') this.videoTransceiver = transceiver;
    }
    if (screen && this.kinds.includes('video')) this.addScreen(screen);
    pc.onicecandidate = ({ candidate }) => {
      if (pc !== this.publishPc || !candidate || !candidate.candidate) return;
      this.send({ type: 'ice_candidate', pc: 'publish', candidate: candidate.toJSON() });
    };
    this.watch(pc, 'publish');
    // A share started meanwhile queues behind this first offer's answer.
    const first = this.offerPublish(pc);
    this.publishQueue = first.catch(() => {});
    await first;
  }

  /**
   * Offer the publish connection (again) and wait for the SFU's answer: one offer at
   * a time. Resolves early if the connection is replaced meanwhile.
   * @param {RTCPeerConnection} pc
   */
  async offerPublish(pc, iceRestart = false) {
    if (iceRestart) pc.restartIce();
    const offer = await pc.createOffer();
    if (pc !== this.publishPc) return;
    await pc.setLocalDescription(offer);
    this.publishing = true;
    // An offer the SFU refuses gets an `error`, not an answer: don't wait forever.
    const answered = new Promise((resolve) => {
      const timer = setTimeout(resolve, ANSWER_WAIT_MS);
      this.answered = () => {
        clearTimeout(timer);
        resolve(undefined);
      };
    });
    /** @type {Record<string, unknown>} */
    const message = {
      type: 'offer',
      pc: 'publish',
      sdp: pc.localDescription.sdp,
      sources: sourcesOf(pc, this.screenTransceiver),
    };
    if (iceRestart) message.ice_restart = true;
    this.send(message);
    await answered;
  }

  /**
   * Restart ICE on one connection (its network changed). Publish: a new offer with
   * new credentials, ahead of one whose answer may have been lost with the socket.
   * Subscribe: ask the SFU, which offers new credentials.
   * @param {'publish' | 'subscribe'} name
   */
  restartIce(name) {
    if (this.closed) return;
    if (name === 'subscribe') {
      if (this.subscribePc) this.send({ type: 'ice_restart' });
      return;
    }
    const pc = this.publishPc;
    if (!pc) return;
    if (this.answered) this.answered(); // an offer still waiting: its answer is not coming
    const run = () => (pc === this.publishPc && !this.closed ? this.offerPublish(pc, true) : undefined);
    this.publishQueue = this.publishQueue.then(run).catch((err) => this.fail('ICE restart', err));
  }

  /** @param {MediaStreamTrack} track */
  addScreen(track) {
    const { stream } = this.local();
    const transceiver = this.publishPc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
    preferCodecs(transceiver, 'video');
    this.screenTransceiver = transceiver;
  }

  /**
   * Start (a track) or stop (null) the screen share; renegotiates the publish connection.
   * @param {MediaStreamTrack | null} track
   */
  setScreen(track) {
    const run = async () => {
      const pc = this.publishPc;
      if (!pc || this.closed) return; // publish() picks the share up from local()
      const transceiver = this.screenTransceiver;
      if (track && !transceiver) {
        this.addScreen(track);
      } else if (transceiver) {
        await transceiver.sender.replaceTrack(track);
        transceiver.direction = track ? 'sendonly' : 'inactive';
      } else {
        return;
      }
      await this.offerPublish(pc);
    };
    this.publishQueue = this.publishQueue.then(run).catch((err) => this.fail('screen share', err));
    return this.publishQueue;
  }

  ensureSubscribe() {
    if (this.subscribePc) return this.subscribePc;
    const pc = new RTCPeerConnection(this.rtcConfig());
    this.subscribePc = pc;
    pc.onicecandidate = ({ candidate }) => {
      if (pc !== this.subscribePc || !candidate || !candidate.candidate) return;
      this.send({ type: 'ice_candidate', pc: 'subscribe', candidate: candidate.toJSON() });
    };
    pc.ontrack = () => this.emit('tracks');
    this.watch(pc, 'subscribe');
    return pc;
  }

  watch(pc, name) {
    let failedTimer = null;
    let connected = false;
    // Silence on a connected connection: interrupted before Chromium says so.
    const silence = new ReceiveWatch(pc, () => {
      if (!this.closed && connected) this.emit('interrupted', { pc: name });
    });
    const check = () => {
      if (this.closed || pc.connectionState === 'closed') {
        silence.stop();
        return;
      }
      const state = pc.connectionState;
      this.emit('state', { pc: name, state });
      if (state === 'connected') {
        silence.start();
        connected = true;
        clearTimeout(failedTimer);
        failedTimer = null;
      } else if ((state === 'disconnected' || state === 'failed') && connected) {
        // It worked and stopped: the network changed. Restart ICE (the link's policy).
        this.emit('interrupted', { pc: name });
      } else if (state === 'failed') {
        if (!failedTimer) {
          failedTimer = setTimeout(() => this.emit('failed', { pc: name }), 0);
        }
      } else if (state === 'disconnected') {
        // Never connected yet: give a transient blip a few seconds before failing.
        clearTimeout(failedTimer);
        failedTimer = setTimeout(() => {
          if (!this.closed && pc.connectionState === 'disconnected') {
            this.emit('failed', { pc: name });
          }
        }, 6000);
      }
    };
    pc.onconnectionstatechange = check;
  }

  /** @param {'publish' | 'subscribe'} name */
  connectionState(name) {
    const pc = name === 'publish' ? this.publishPc : this.subscribePc;
    return pc ? pc.connectionState : 'closed';
  }

  /** Handle a message from the SFU (`sender_id: "sfu"`): negotiation, `tracks`, `speakers`. */
  handle(message) {
    if (this.closed) return;
    if (message.type === 'tracks') {
      this.trackInfo = new Map();
      for (const entry of message.tracks || []) {
        if (entry.mid !== undefined && entry.mid !== null) this.trackInfo.set(String(entry.mid), entry);
      }
      this.emit('tracks');
      return;
    }
    if (message.type === 'speakers') {
      this.speakers = parseSpeakers(message);
      this.emit('speakers');
      return;
    }
    if (message.type === 'quality') {
      this.quality = parseQuality(message);
      this.emit('quality');
      return;
    }
    if (message.type === 'layers') {
      const transceiver = this.videoTransceiver;
      if (transceiver && transceiver.mid !== null && String(message.mid) === transceiver.mid) {
        // One setParameters at a time (a second one while the first is pending fails).
        this.layersQueue = this.layersQueue
          .then(() => applyLayers(transceiver.sender, message.rids))
          .catch((err) => console.warn('sfu: layers', err));
      }
      return;
    }
    if (message.pc === 'publish') {
      if (message.type === 'answer') {
        this.onPublishAnswer(message).catch((err) => this.fail('publish answer', err));
      } else if (message.type === 'ice_candidate') {
        this.addCandidate(this.publishPc, message.candidate);
      }
    } else if (message.pc === 'subscribe') {
      if (message.type === 'offer') {
        // Serialise: an offer must not overtake the previous one's answer.
        this.subscribeQueue = this.subscribeQueue
          .then(() => this.onSubscribeOffer(message))
          .catch((err) => this.fail('subscribe offer', err));
      } else if (message.type === 'ice_candidate') {
        this.addCandidate(this.subscribePc, message.candidate);
      }
    }
  }

  async onPublishAnswer(message) {
    const pc = this.publishPc;
    if (!pc || pc.signalingState !== 'have-local-offer') return;
    try {
      await pc.setRemoteDescription({ type: 'answer', sdp: message.sdp });
    } finally {
      const answered = this.answered;
      this.answered = null;
      if (answered) answered();
    }
  }

  async onSubscribeOffer(message) {
    if (this.closed) return;
    const pc = this.ensureSubscribe();
    await pc.setRemoteDescription({ type: 'offer', sdp: message.sdp });
    await pc.setLocalDescription();
    if (pc !== this.subscribePc) return;
    this.send({ type: 'answer', pc: 'subscribe', sdp: pc.localDescription.sdp });
    this.emit('tracks');
  }

  addCandidate(pc, candidate) {
    if (!pc || !candidate || !candidate.candidate) return;
    pc.addIceCandidate(candidate).catch((err) => console.warn('sfu: bad candidate', err));
  }

  fail(what, err) {
    console.warn(`sfu: ${what} failed`, err);
    this.emit('error', { what, message: String((err && err.message) || err) });
  }

  /** The remote tracks, by participant: Map(participant_id -> {audio, video, screen, mids}). */
  remoteTracks() {
    const result = new Map();
    const pc = this.subscribePc;
    if (!pc) return result;
    for (const transceiver of pc.getTransceivers()) {
      const mid = transceiver.mid;
      if (mid === null) continue;
      const info = this.trackInfo.get(String(mid));
      if (!info || !transceiver.receiver.track) continue;
      const entry = result.get(info.participant_id) || { audio: null, video: null, screen: null, mids: {} };
      const slot = info.source === 'screen' ? 'screen' : info.kind;
      entry[slot] = transceiver.receiver.track;
      entry.mids[slot] = String(mid);
      result.set(info.participant_id, entry);
    }
    return result;
  }

  /** participant_id for an inbound-rtp stats entry's mid. */
  participantForMid(mid) {
    const info = this.trackInfo.get(String(mid));
    return info ? info.participant_id : null;
  }

  /** The source (camera, screen, microphone) of what arrives on `mid`, if announced. */
  sourceForMid(mid) {
    const info = this.trackInfo.get(String(mid));
    return info ? info.source || null : null;
  }

  async replaceTrack(kind, track) {
    const sender = this.senders[kind];
    if (sender) await sender.replaceTrack(track);
  }

  closePcs() {
    for (const pc of [this.publishPc, this.subscribePc]) {
      if (pc) pc.close();
    }
    this.publishPc = null;
    this.subscribePc = null;
    this.senders = {};
    this.videoTransceiver = null;
    this.screenTransceiver = null;
    this.trackInfo = new Map();
    this.publishing = false;
    if (this.answered) this.answered();
    this.answered = null;
    this.subscribeQueue = Promise.resolve();
  }

  /** @param {Map<string, HTMLElement>} elements the element showing each received video mid */
  showTiles(elements) {
    if (!this.closed) this.tiles.track(elements);
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.tiles.close();
    this.closePcs();
    this.emit('tracks');
  }
}
