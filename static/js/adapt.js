// What the SFU adapts to this receiver, and what it asks of this publisher
// (docs/protocol.md "Simulcast and adaptation"):
//   quality         the SFU says which layer of each received track we get, or that its
//                   video is paused (our downlink cannot take even its lowest layer);
//   layers          dynacast: the SFU names the simulcast layers worth encoding;
//   track_settings  we tell the SFU how large each received video is shown, and whether
//                   it is visible at all (a hidden tile gets no video).

/**
 * Per participant, what the SFU sends us of their video.
 * @typedef {{layer: string | null, paused: boolean}} VideoQuality
 */

/**
 * @param {{tracks?: unknown}} message a `quality` message
 * @returns {Map<string, VideoQuality>}
 */
export function parseQuality(message) {
  const result = new Map();
  const entries = Array.isArray(message.tracks) ? message.tracks : [];
  for (const entry of entries) {
    if (!entry || entry.kind !== 'video' || typeof entry.participant_id !== 'string') continue;
    result.set(entry.participant_id, {
      layer: typeof entry.layer === 'string' ? entry.layer : null,
      paused: entry.paused === true,
    });
  }
  return result;
}

/**
 * Dynacast: encode only the simulcast layers the SFU names (`active` on the others off).
 * @param {RTCRtpSender | undefined} sender the camera's sender on the publish connection
 * @param {unknown} rids
 */
export async function applyLayers(sender, rids) {
  if (!sender || !Array.isArray(rids)) return;
  const wanted = new Set(rids.filter((rid) => typeof rid === 'string'));
  const params = sender.getParameters();
  if (!params.encodings || params.encodings.length < 2) return;
  let changed = false;
  for (const encoding of params.encodings) {
    if (!encoding.rid) continue;
    const active = wanted.has(encoding.rid);
    if (encoding.active !== active) {
      encoding.active = active;
      changed = true;
    }
  }
  if (changed) await sender.setParameters(params);
}

/**
 * The video element showing each received video mid, from the SFU session's remote
 * tracks and the view's tiles (keyed by participant, and participant + `screenSuffix`).
 * @param {Map<string, {mids: Record<string, string>}>} remoteTracks
 * @param {Map<string, HTMLElement>} tiles
 * @param {string} screenSuffix
 * @returns {Map<string, HTMLElement>}
 */
export function shownVideos(remoteTracks, tiles, screenSuffix) {
  const shown = new Map();
  for (const [participant, entry] of remoteTracks) {
    for (const [slot, key] of [['video', participant], ['screen', participant + screenSuffix]]) {
      const tile = tiles.get(key);
      const mid = entry.mids[slot];
      const video = tile ? tile.querySelector('video') : null;
      if (video && mid !== undefined) shown.set(mid, video);
    }
  }
  return shown;
}

/** Tiles smaller than this many pixels of change are not worth a new report. */
const RESIZE_SLACK = 16;
/** Reports are coalesced over this long (ms). */
const REPORT_DELAY = 300;

/**
 * Tells the SFU how each received video is shown (`track_settings`), as tiles resize,
 * scroll out of view or the page is hidden.
 */
export class TileReporter {
  /** @param {(message: object) => void} send sends to the SFU */
  constructor(send) {
    this.send = send;
    /** @type {Map<string, HTMLElement>} mid -> the element showing it */
    this.elements = new Map();
    /** @type {Map<string, {width: number, height: number, visible: boolean}>} last sent */
    this.sent = new Map();
    /** @type {Set<Element>} elements in the viewport */
    this.inView = new Set();
    this.timer = 0;
    const schedule = () => this.schedule();
    this.resize = typeof ResizeObserver === 'function' ? new ResizeObserver(schedule) : null;
    this.intersect =
      typeof IntersectionObserver === 'function'
        ? new IntersectionObserver((entries) => {
            for (const entry of entries) {
              if (entry.isIntersecting) this.inView.add(entry.target);
              else this.inView.delete(entry.target);
            }
            this.schedule();
          })
        : null;
    this.onVisibility = schedule;
    document.addEventListener('visibilitychange', this.onVisibility);
  }

  /** @param {Map<string, HTMLElement>} elements the video element showing each video mid */
  track(elements) {
    for (const [mid, el] of this.elements) {
      if (elements.get(mid) !== el) this.unwatch(el);
    }
    for (const [mid, el] of elements) {
      if (this.elements.get(mid) !== el) this.watch(el);
    }
    this.elements = new Map(elements);
    this.schedule();
  }

  /** @param {HTMLElement} el */
  watch(el) {
    if (this.resize) this.resize.observe(el);
    if (this.intersect) this.intersect.observe(el);
    else this.inView.add(el);
  }

  /** @param {HTMLElement} el */
  unwatch(el) {
    if (this.resize) this.resize.unobserve(el);
    if (this.intersect) this.intersect.unobserve(el);
    this.inView.delete(el);
  }

  schedule() {
    if (this.timer) return;
    this.timer = window.setTimeout(() => {
      this.timer = 0;
      this.report();
    }, REPORT_DELAY);
  }

  report() {
    const changed = [];
    const pageVisible = document.visibilityState !== 'hidden';
    for (const [mid, el] of this.elements) {
      const box = el.getBoundingClientRect();
      const width = Math.round(box.width * window.devicePixelRatio);
      const height = Math.round(box.height * window.devicePixelRatio);
      // No size yet is not hidden: a tile whose video has no frame yet may have none,
      // and reporting it hidden would keep the SFU from ever sending it one.
      const visible = pageVisible && this.inView.has(el);
      const last = this.sent.get(mid);
      if (
        last &&
        last.visible === visible &&
        Math.abs(last.width - width) < RESIZE_SLACK &&
        Math.abs(last.height - height) < RESIZE_SLACK
      ) {
        continue;
      }
      const setting = { width, height, visible };
      this.sent.set(mid, setting);
      changed.push({ mid, ...setting });
    }
    if (changed.length) this.send({ type: 'track_settings', tracks: changed });
  }

  close() {
    window.clearTimeout(this.timer);
    if (this.resize) this.resize.disconnect();
    if (this.intersect) this.intersect.disconnect();
    document.removeEventListener('visibilitychange', this.onVisibility);
    this.elements.clear();
  }
}
