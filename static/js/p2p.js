// One browser-to-browser connection with "perfect negotiation" (W3C WebRTC 1.0 §10.7):
// both sides may offer at any time; on glare the polite side rolls back and takes the
// other's offer, the impolite side ignores the colliding offer.
//
// ICE failure: first an ICE restart; if the path stays broken, the whole
// RTCPeerConnection is rebuilt. The other side recognises a rebuilt peer by the
// session id in the offer's `o=` line and rebuilds its own connection to match.

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
   * @param {() => {stream: MediaStream, audio: MediaStreamTrack|null, video: MediaStreamTrack|null}} o.local
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
    this.senders = {};
    const { stream, audio, video } = this.local();
    // addTrack (not addTransceiver): on glare the polite side's tracks attach to the
    // m-lines of the remote offer instead of adding duplicate ones (JSEP 5.10).
    if (audio) this.senders.audio = pc.addTrack(audio, stream);
    if (video) this.senders.video = pc.addTrack(video, stream);

    pc.onnegotiationneeded = async () => {
      if (pc !== this.pc) return;
      try {
        this.makingOffer = true;
        await pc.setLocalDescription();
        this.send({ type: 'offer', sdp: pc.localDescription.sdp });
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
        await this.handleDescription({ type: message.type, sdp: message.sdp });
      } else if (message.type === 'ice_candidate') {
        await this.handleCandidate(message.candidate);
      }
    } catch (err) {
      this.fail(message.type, err);
    }
  }

  async handleDescription(description) {
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
      this.send({ type: 'answer', sdp: pc.localDescription.sdp });
    }
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
