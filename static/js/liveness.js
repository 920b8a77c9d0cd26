// Is anything still arriving on a connection? A network change can leave Chromium's
// connection `connected` for several seconds after the path died (measured: ~7 s after
// the address went away); the SFU sends on both connections all the time (media, RTCP
// reports, transport-wide feedback), so silence says more, sooner.

/** Read the connection's transport counters this often (ms). */
const EVERY_MS = 500;
/** Nothing received for this long on a connected connection: it is interrupted (ms). */
const SILENT_MS = 1500;

/**
 * @param {RTCStatsReport} report
 * @returns {number | null} bytes received over the connection's transport(s)
 */
function bytesReceived(report) {
  let total = null;
  report.forEach((entry) => {
    if (entry.type === 'transport' && typeof entry.bytesReceived === 'number') {
      total = (total || 0) + entry.bytesReceived;
    }
  });
  return total;
}

export class ReceiveWatch {
  /**
   * @param {RTCPeerConnection} pc
   * @param {() => void} onSilent  called once per silence (again after bytes arrived)
   */
  constructor(pc, onSilent) {
    this.pc = pc;
    this.onSilent = onSilent;
    this.timer = null;
    this.last = null;
    this.since = 0;
    this.told = false;
  }

  start() {
    if (this.timer) return;
    this.since = Date.now();
    this.timer = setInterval(() => this.sample().catch(() => {}), EVERY_MS);
  }

  async sample() {
    const pc = this.pc;
    if (pc.connectionState === 'closed') {
      this.stop();
      return;
    }
    const bytes = bytesReceived(await pc.getStats());
    const now = Date.now();
    if (bytes === null || bytes !== this.last) {
      this.last = bytes;
      this.since = now;
      this.told = false;
    } else if (!this.told && now - this.since >= SILENT_MS) {
      this.told = true;
      this.onSilent();
    }
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }
}
