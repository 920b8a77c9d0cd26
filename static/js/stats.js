// getStats() per remote participant: bitrate, frame rate, resolution, packet loss,
// RTT, audio level. P2P: everything inbound on a peer's connection is theirs. SFU:
// inbound streams are attributed by `mid` through the SFU's `tracks` message. A screen
// share's video is counted apart (`screen`), by the source its sender announced.

function emptyRemote() {
  return {
    video: {
      framesDecoded: 0,
      framesPerSecond: 0,
      frameWidth: 0,
      frameHeight: 0,
      bytesReceived: 0,
      packetsReceived: 0,
      packetsLost: 0,
      bitrateKbps: 0,
    },
    audio: { bytesReceived: 0, packetsReceived: 0, packetsLost: 0, audioLevel: 0, bitrateKbps: 0 },
    screen: { framesDecoded: 0, frameWidth: 0, frameHeight: 0, bitrateKbps: 0 },
    rttMs: null,
    lossPercent: 0,
  };
}

/** What a received stream carries: its sender's `sources` (P2P) or the SFU's `tracks`. */
function sourceOf(session, role, remote, mid) {
  if (role === 'subscribe') return session.sfu ? session.sfu.sourceForMid(mid) : null;
  const peer = role === 'p2p' ? session.peers.get(remote) : null;
  return peer ? peer.remoteSources[mid] || null : null;
}

/** Whether a P2P peer's `mid` carried a screen share on this connection before. */
function wasScreen(session, remote, mid) {
  const peer = session.peers.get(remote);
  return !!peer && peer.screenMids.has(mid);
}

export class StatsCollector {
  constructor(session) {
    this.session = session;
    this.previous = new Map(); // key -> {bytes, time}
    this.snapshot = { remotes: {}, local: { audioLevel: 0 }, at: 0 };
  }

  rate(key, bytes, timestamp) {
    const prev = this.previous.get(key);
    this.previous.set(key, { bytes, timestamp });
    if (!prev || timestamp <= prev.timestamp || bytes < prev.bytes) return 0;
    return ((bytes - prev.bytes) * 8) / (timestamp - prev.timestamp); // bits/ms = kbit/s
  }

  async collect() {
    const session = this.session;
    const remotes = {};
    const local = { audioLevel: 0, bitrateKbps: 0 };
    const ensure = (id) => {
      if (!remotes[id]) remotes[id] = emptyRemote();
      return remotes[id];
    };
    for (const { pc, role, remote } of session.connections()) {
      let report;
      try {
        report = await pc.getStats();
      } catch (err) {
        continue;
      }
      let rtt = null;
      report.forEach((s) => {
        if (s.type === 'candidate-pair' && s.nominated && s.currentRoundTripTime !== undefined) {
          rtt = s.currentRoundTripTime * 1000;
        }
      });
      report.forEach((s) => {
        if (s.type === 'media-source' && s.kind === 'audio' && typeof s.audioLevel === 'number') {
          local.audioLevel = Math.max(local.audioLevel, s.audioLevel);
        }
        if (s.type === 'outbound-rtp') {
          local.bitrateKbps += this.rate(`${role}:${remote}:out:${s.id}`, s.bytesSent || 0, s.timestamp);
        }
        if (s.type !== 'inbound-rtp') return;
        let owner = remote;
        if (role === 'subscribe') owner = session.sfu ? session.sfu.participantForMid(s.mid) : null;
        if (!owner) return;
        const entry = ensure(owner);
        if (rtt !== null) entry.rttMs = Math.round(rtt);
        const kbps = this.rate(`${role}:${owner}:${s.kind}:${s.mid}`, s.bytesReceived || 0, s.timestamp);
        const source = s.kind === 'video' ? sourceOf(session, role, remote, s.mid) : null;
        // A stopped share's m-line (its transceiver is kept for the next share) keeps
        // its old counters: they are neither the camera's nor a live screen's.
        if (s.kind === 'video' && source === null && role === 'p2p' && wasScreen(session, remote, s.mid)) return;
        if (source === 'screen') {
          const sc = entry.screen;
          sc.framesDecoded += s.framesDecoded || 0;
          sc.frameWidth = Math.max(sc.frameWidth, s.frameWidth || 0);
          sc.frameHeight = Math.max(sc.frameHeight, s.frameHeight || 0);
          sc.bitrateKbps += Math.round(kbps);
        } else if (s.kind === 'video') {
          const v = entry.video;
          v.framesDecoded += s.framesDecoded || 0;
          v.framesPerSecond = Math.max(v.framesPerSecond, Math.round(s.framesPerSecond || 0));
          v.frameWidth = Math.max(v.frameWidth, s.frameWidth || 0);
          v.frameHeight = Math.max(v.frameHeight, s.frameHeight || 0);
          v.bytesReceived += s.bytesReceived || 0;
          v.packetsReceived += s.packetsReceived || 0;
          v.packetsLost += s.packetsLost || 0;
          v.bitrateKbps += Math.round(kbps);
        } else if (s.kind === 'audio') {
          const a = entry.audio;
          a.bytesReceived += s.bytesReceived || 0;
          a.packetsReceived += s.packetsReceived || 0;
          a.packetsLost += s.packetsLost || 0;
          a.audioLevel = Math.max(a.audioLevel, s.audioLevel || 0);
          a.bitrateKbps += Math.round(kbps);
        }
      });
    }
    for (const entry of Object.values(remotes)) {
      const received = entry.video.packetsReceived + entry.audio.packetsReceived;
      const lost = Math.max(0, entry.video.packetsLost + entry.audio.packetsLost);
      entry.lossPercent = received + lost > 0 ? Math.round((1000 * lost) / (received + lost)) / 10 : 0;
    }
    local.bitrateKbps = Math.round(local.bitrateKbps);
    this.snapshot = { remotes, local, at: Date.now() };
    return this.snapshot;
  }
}

/** One line of the stats overlay for a tile. */
export function formatStats(entry) {
  if (!entry) return 'no media yet';
  const v = entry.video;
  const parts = [];
  if (v.frameWidth) parts.push(`${v.frameWidth}×${v.frameHeight}`);
  parts.push(`${v.framesPerSecond} fps`);
  parts.push(`${v.bitrateKbps + entry.audio.bitrateKbps} kbit/s`);
  parts.push(`loss ${entry.lossPercent}%`);
  parts.push(`RTT ${entry.rttMs === null ? '–' : `${entry.rttMs} ms`}`);
  return parts.join(' · ');
}
