// Media through the SFU (DESIGN.md "SFU"): two connections, so offers never collide.
//   publish:   we offer, the SFU answers (`target_id: "sfu"`, `pc: "publish"`)
//   subscribe: the SFU offers whenever what we receive changes; we answer
// A `tracks` message before each subscribe offer says whose media each m-line (mid)
// carries; transceivers (and so mids) are reused for the next track of the same kind.
//
// A `speakers` message says who talks (`speakers`, the dominant one): kept as `speakers`.
//
// The SFU (aiortc) has no ICE restart: a failed connection is rebuilt by starting
// over (`reset` event; the call sends a fresh publish offer).

const SFU = 'sfu';

// The camera is published as simulcast (docs/protocol.md "Simulcast"): three VP8
// encodings, LOWEST FIRST (the SFU takes the layers in the offer's a=simulcast order,
// which is this order). Chrome sends only as many as the capture size allows (three
// from 960x540 up), so the camera is captured at 1280x720 where it can be.
const SIMULCAST = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];

/**
 * Who the SFU says is talking (docs/protocol.md `speakers`).
 * @typedef {{dominant: string | null, speaking: Set<string>}} Speakers
 */

/**
 * @param {{dominant?: unknown, speakers?: unknown}} message
 * @returns {Speakers}
 */
function parseSpeakers(message) {
  const dominant = typeof message.dominant === 'string' ? message.dominant : null;
  const entries = Array.isArray(message.speakers) ? message.speakers : [];
  const ids = entries.map((entry) => entry && entry.participant_id).filter((id) => typeof id === 'string');
  return { dominant, speaking: new Set(ids) };
}

function preferCodecs(transceiver, kind) {
  // The SFU forwards without transcoding and understands VP8/H.264 video and Opus.
  if (!window.RTCRtpSender || !RTCRtpSender.getCapabilities || !transceiver.setCodecPreferences) {
    return;
  }
  const caps = RTCRtpSender.getCapabilities(kind);
  if (!caps) return;
  const rank = (codec) => {
    const mime = codec.mimeType.toLowerCase();
    if (kind === 'video') {
      if (mime === 'video/vp8') return 0;
      if (mime === 'video/h264') return 1;
      if (mime === 'video/rtx') return 2;
      return 9;
    }
    return mime === 'audio/opus' ? 0 : 9;
  };
  const codecs = caps.codecs.filter((c) => rank(c) < 9).sort((a, b) => rank(a) - rank(b));
  try {
    transceiver.setCodecPreferences(codecs);
  } catch (err) {
    /* keep the browser's defaults */
  }
}

export class SfuSession extends EventTarget {
  /**
   * @param {object} o
   * @param {(message: object) => void} o.send
   * @param {() => RTCConfiguration} o.rtcConfig
   * @param {() => {stream: MediaStream, audio: MediaStreamTrack|null, video: MediaStreamTrack|null}} o.local
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
    this.trackInfo = new Map(); // mid -> {participant_id, kind, track_id}
    /** @type {Speakers} */
    this.speakers = parseSpeakers({});
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
    const { stream, ...tracks } = this.local();
    for (const kind of this.kinds) {
      /** @type {RTCRtpTransceiverInit} */
      const init = { direction: 'sendonly', streams: [stream] };
      if (kind === 'video') init.sendEncodings = SIMULCAST.map((encoding) => ({ ...encoding }));
      const transceiver = pc.addTransceiver(tracks[kind] || kind, init);
      preferCodecs(transceiver, kind);
      this.senders[kind] = transceiver.sender;
    }
    pc.onicecandidate = ({ candidate }) => {
      if (pc !== this.publishPc || !candidate || !candidate.candidate) return;
      this.send({ type: 'ice_candidate', pc: 'publish', candidate: candidate.toJSON() });
    };
    this.watch(pc, 'publish');
    const offer = await pc.createOffer();
    if (pc !== this.publishPc) return;
    await pc.setLocalDescription(offer);
    this.publishing = true;
    this.send({ type: 'offer', pc: 'publish', sdp: pc.localDescription.sdp });
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
    const check = () => {
      if (this.closed) return;
      const state = pc.connectionState;
      this.emit('state', { pc: name, state });
      if (state === 'failed') {
        if (!failedTimer) {
          failedTimer = setTimeout(() => this.emit('failed', { pc: name }), 0);
        }
      } else if (state === 'disconnected') {
        // Give a transient blip a few seconds before treating it as failure.
        clearTimeout(failedTimer);
        failedTimer = setTimeout(() => {
          if (!this.closed && pc.connectionState === 'disconnected') {
            this.emit('failed', { pc: name });
          }
        }, 6000);
      } else {
        clearTimeout(failedTimer);
        failedTimer = null;
      }
    };
    pc.onconnectionstatechange = check;
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
    await pc.setRemoteDescription({ type: 'answer', sdp: message.sdp });
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

  /** The remote tracks, by participant: Map(participant_id -> {audio, video, mids}). */
  remoteTracks() {
    const result = new Map();
    const pc = this.subscribePc;
    if (!pc) return result;
    for (const transceiver of pc.getTransceivers()) {
      const mid = transceiver.mid;
      if (mid === null) continue;
      const info = this.trackInfo.get(String(mid));
      if (!info || !transceiver.receiver.track) continue;
      const entry = result.get(info.participant_id) || { audio: null, video: null, mids: {} };
      entry[info.kind] = transceiver.receiver.track;
      entry.mids[info.kind] = String(mid);
      result.set(info.participant_id, entry);
    }
    return result;
  }

  /** participant_id for an inbound-rtp stats entry's mid. */
  participantForMid(mid) {
    const info = this.trackInfo.get(String(mid));
    return info ? info.participant_id : null;
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
    this.trackInfo = new Map();
    this.publishing = false;
    this.subscribeQueue = Promise.resolve();
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.closePcs();
    this.emit('tracks');
  }
}
