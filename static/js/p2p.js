// One browser-to-browser connection with "perfect negotiation" (W3C WebRTC 1.0 §10.7):
// both sides may offer at any time; on glare the polite side rolls back and takes the
// other's offer, the impolite side ignores the colliding offer.
//
// ICE failure: first an ICE restart; if the path stays broken, the whole
// RTCPeerConnection is rebuilt. The other side recognises a rebuilt peer by the
// session id in the offer's `o=` line and rebuilds its own connection to match.
//
// Screen sharing: a second video transceiver (`screenTransceiver`); every offer and
// answer carries `sources` (our sending mids -> camera | screen | microphone,
// docs/protocol.md), so the other side shows the screen's track in a tile of its own.
// Stopping leaves the transceiver receive-only; sharing again reuses it.

/**
 * What each of our sending m-lines carries, by mid.
 * @param {RTCPeerConnection} pc
 * @param {RTCRtpTransceiver | null} screen  the screen-share transceiver, if any
 * @returns {Record<string, string>}
 */
export function sourcesOf(pc, screen) {
  /** @type {Record<string, string>} */
  const sources = {};
  for (const t of pc.getTransceivers()) {
    if (t.mid === null || t.currentDirection === 'stopped' || !t.sender.track) continue;
    if (t.direction !== 'sendrecv' && t.direction !== 'sendonly') continue;
    if (t === screen) sources[t.mid] = 'screen';
    else sources[t.mid] = t.sender.track.kind === 'audio' ? 'microphone' : 'camera';
  }
  return sources;
}

const RESTART_GRACE_MS = 8000;

function sessionId(sdp) {
  const match = /^o=\S+ (\S+)/m.exec(sdp || '');
  return match ? match[1] : null;
}

export class P2PPeer extends EventTarget {
  /**
   * @param {object} o
   * @param {string} o.remoteId
   * @param {boolean} o.polite
   * @param {(message: object) => void} o.send  sends a signaling message
   * @param {() => RTCConfiguration} o.rtcConfig
   * @param {() => import('./media.js').LocalTracks} o.local
   */
  constructor({ remoteId, polite, send, rtcConfig, local }) {
    super();
    this.remoteId = remoteId;
    this.polite = polite;
    this.sendSignal = send;
    this.rtcConfig = rtcConfig;
    this.local = local;
    this.pc = null;
    this.remoteStream = new MediaStream();
    this.closed = false;
    this.rebuilds = 0;
    this.restartTimer = null;
    this.remoteSession = null;
    this.create();
  }

  send(message) {
    this.sendSignal({ ...message, target_id: this.remoteId });
  }

  create() {
    const pc = new RTCPeerConnection(this.rtcConfig());
    this.pc = pc;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.settingRemoteAnswer = false;
    this.remoteSession = null;
    this.remoteStream = new MediaStream();
    /** @type {Record<string, string>} the other side's sending mids -> source */
    this.remoteSources = {};
    /** @type {Set<string>} the other side's mids that have carried a screen share */
    this.screenMids = new Set();
    this.senders = {};
    /** @type {RTCRtpTransceiver | null} */
    this.screenTransceiver = null;
    const { stream, audio, video, screen } = this.local();
    // addTrack (not addTransceiver): on glare the polite side's tracks attach to the
    // m-lines of the remote offer instead of adding duplicate ones (JSEP 5.10).
    if (audio) this.senders.audio = pc.addTrack(audio, stream);
    if (video) this.senders.video = pc.addTrack(video, stream);
    if (screen) this.addScreen(screen);

    pc.onnegotiationneeded = async () => {
      if (pc !== this.pc) return;
      try {
        this.makingOffer = true;
        await pc.setLocalDescription();
        this.send({ type: 'offer', sdp: pc.localDescription.sdp, sources: this.sources() });
      } catch (err) {
        this.fail('negotiation', err);
      } finally {
        this.makingOffer = false;
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      if (pc !== this.pc || !candidate || !candidate.candidate) return;
      this.send({ type: 'ice_candidate', candidate: candidate.toJSON() });
    };
    pc.ontrack = ({ track, transceiver }) => {
      if (pc !== this.pc) return;
      if (this.remoteSources[transceiver.mid] === 'screen') {
        this.emit('tracks'); // shown from remoteScreen(), not part of the camera stream
        return;
      }
      if (track.kind === 'audio' || track.kind === 'video') {
        for (const old of this.remoteStream.getTracks().filter((t) => t.kind === track.kind)) {
          this.remoteStream.removeTrack(old);
        }
        this.remoteStream.addTrack(track);
        // A transceiver created by the remote offer: send our track on it too.
        this.attachLocal(transceiver);
        this.emit('tracks');
      }
    };
    pc.onconnectionstatechange = () => {
      if (pc !== this.pc) return;
      this.onConnectionState(pc.connectionState);
    };
    pc.oniceconnectionstatechange = () => {
      if (pc !== this.pc) return;
      if (pc.iceConnectionState === 'failed') this.onConnectionState('failed');
    };
    this.emit('state', 'new');
  }

  attachLocal(transceiver) {
    const kind = transceiver.receiver.track.kind;
    if (this.senders[kind] || transceiver.currentDirection === 'stopped') return;
    if (transceiver === this.screenTransceiver) return;
    const track = this.local()[kind];
    if (!track) return;
    transceiver.direction = 'sendrecv';
    transceiver.sender.replaceTrack(track).catch(() => {});
    this.senders[kind] = transceiver.sender;
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  onConnectionState(state) {
    this.emit('state', state);
    if (state === 'connected') {
      clearTimeout(this.restartTimer);
      this.restartTimer = null;
      return;
    }
    if (state === 'failed') {
      if (this.restartTimer) return;
      // Try an ICE restart first (cheap, keeps the tracks); rebuild if that fails too.
      this.pc.restartIce();
      this.restartTimer = setTimeout(() => {
        this.restartTimer = null;
        if (!this.closed && this.pc.connectionState !== 'connected') this.rebuild('ice_failed');
      }, RESTART_GRACE_MS);
    }
  }

  /** Throw the connection away and negotiate a fresh one (ICE failure, broken state). */
  rebuild(reason) {
    if (this.closed) return;
    this.rebuilds += 1;
    clearTimeout(this.restartTimer);
    this.restartTimer = null;
    const old = this.pc;
    this.pc = null;
    old.close();
    this.emit('rebuild', reason);
    this.create();
    // Only the impolite side starts over on its own; a polite peer's fresh connection
    // offers too (negotiationneeded), and the session-id check settles it.
  }

  fail(what, err) {
    console.warn(`p2p ${this.remoteId}: ${what} failed`, err);
  }

  /** Handle `offer`, `answer` and `ice_candidate` from this peer. */
  async handle(message) {
    if (this.closed) return;
    try {
      if (message.type === 'offer' || message.type === 'answer') {
        await this.handleDescription({ type: message.type, sdp: message.sdp }, message.sources);
      } else if (message.type === 'ice_candidate') {
        await this.handleCandidate(message.candidate);
      }
    } catch (err) {
      this.fail(message.type, err);
    }
  }

  /** @returns {Record<string, string>} what our sending m-lines carry (the `sources` field) */
  sources() {
    return sourcesOf(this.pc, this.screenTransceiver);
  }

  /**
   * The other side's screen share, if it is sending one to us now.
   * @returns {MediaStreamTrack | null}
   */
  remoteScreen() {
    if (!this.pc) return null;
    for (const t of this.pc.getTransceivers()) {
      if (this.remoteSources[t.mid] !== 'screen') continue;
      if (t.currentDirection === 'sendrecv' || t.currentDirection === 'recvonly') return t.receiver.track;
    }
    return null;
  }

  /** @param {MediaStreamTrack} track */
  addScreen(track) {
    const { stream } = this.local();
    const sender = this.pc.addTrack(track, stream); // renegotiates
    this.screenTransceiver = this.pc.getTransceivers().find((t) => t.sender === sender) || null;
  }

  /**
   * Start (a track) or stop (null) sharing a screen with this peer; renegotiates.
   * @param {MediaStreamTrack | null} track
   */
  async setScreen(track) {
    const transceiver = this.screenTransceiver;
    if (!track) {
      if (!transceiver || transceiver.currentDirection === 'stopped') return;
      await transceiver.sender.replaceTrack(null);
      transceiver.direction = 'recvonly'; // renegotiates: the m-line stops sending
      return;
    }
    if (transceiver && transceiver.currentDirection !== 'stopped') {
      await transceiver.sender.replaceTrack(track);
      transceiver.direction = 'sendrecv'; // renegotiates
    } else {
      this.addScreen(track);
    }
  }

  async handleDescription(description, sources) {
    const session = sessionId(description.sdp);
    if (
      description.type === 'offer' &&
      this.remoteSession !== null &&
      session !== null &&
      session !== this.remoteSession
    ) {
      // The other side rebuilt its connection: rebuild ours to match, then answer.
      this.rebuild('remote_rebuilt');
    }
    const pc = this.pc;
    const readyForOffer =
      !this.makingOffer && (pc.signalingState === 'stable' || this.settingRemoteAnswer);
    const collision = description.type === 'offer' && !readyForOffer;
    this.ignoreOffer = !this.polite && collision;
    if (this.ignoreOffer) return;
    this.settingRemoteAnswer = description.type === 'answer';
    // Before applying: its `track` events read what each mid carries.
    this.remoteSources = sources && typeof sources === 'object' ? sources : {};
    for (const [mid, source] of Object.entries(this.remoteSources)) if (source === 'screen') this.screenMids.add(mid);
    try {
      await pc.setRemoteDescription(description); // rolls back our offer on glare
    } finally {
      this.settingRemoteAnswer = false;
    }
    if (pc !== this.pc) return;
    if (session !== null) this.remoteSession = session;
    if (description.type === 'offer') {
      for (const transceiver of pc.getTransceivers()) {
        if (transceiver.receiver.track) this.attachLocal(transceiver);
      }
      await pc.setLocalDescription();
      this.send({ type: 'answer', sdp: pc.localDescription.sdp, sources: this.sources() });
    }
    this.emit('tracks'); // a share may have stopped (its m-line no longer sends to us)
  }

  async handleCandidate(candidate) {
    if (!candidate || !candidate.candidate) return;
    try {
      await this.pc.addIceCandidate(candidate);
    } catch (err) {
      if (!this.ignoreOffer) throw err;
    }
  }

  /** Put a new local track (or null) on the sender of its kind; no renegotiation. */
  async replaceTrack(kind, track) {
    const sender = this.senders[kind];
    if (sender) {
      await sender.replaceTrack(track);
    } else if (track) {
      const { stream } = this.local();
      this.senders[kind] = this.pc.addTrack(track, stream); // renegotiates
    }
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.restartTimer);
    if (this.pc) this.pc.close();
    this.emit('state', 'closed');
  }
}
