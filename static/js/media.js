// Local camera and microphone: acquisition with a clear message for every failure,
// and fallbacks (no camera → audio only; nothing → receive only) instead of a dead end.

export class MediaError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

// 1280x720 where the camera allows (ideal, never exact): the SFU's simulcast needs it
// for three layers (sfu.js); a P2P call sends it as one encoding, scaled by the browser.
const VIDEO_CONSTRAINTS = {
  width: { ideal: 1280 },
  height: { ideal: 720 },
  frameRate: { ideal: 24, max: 30 },
};

/** A message for a getUserMedia failure; `what` is "camera", "microphone" or both. */
export function describeMediaError(err, what) {
  const name = err && err.name;
  if (name === 'NotAllowedError' || name === 'SecurityError' || name === 'PermissionDeniedError') {
    return new MediaError(
      'permission_denied',
      `Permission to use your ${what} was denied. Allow it in the browser's site settings, then rejoin.`,
    );
  }
  if (name === 'NotFoundError' || name === 'OverconstrainedError' || name === 'DevicesNotFoundError') {
    return new MediaError('no_device', `No ${what} was found on this device.`);
  }
  if (name === 'NotReadableError' || name === 'TrackStartError' || name === 'AbortError') {
    return new MediaError('device_busy', `Your ${what} is in use by another application or failed to start.`);
  }
  return new MediaError('media_error', `Could not start your ${what}: ${(err && err.message) || err}`);
}

/**
 * What is sent: the local stream and its tracks (null when muted, off or missing).
 * @typedef {{stream: MediaStream, audio: MediaStreamTrack | null, video: MediaStreamTrack | null}} LocalTracks
 */

export class LocalMedia {
  constructor() {
    this.stream = new MediaStream();
    this.audio = null;
    this.video = null;
    this.warnings = [];
    this.started = false;
  }

  /**
   * Acquire what the call type needs. Never throws for missing devices: the call goes
   * on with what works, and `warnings` holds a message for each thing that did not.
   */
  async start(wantVideo) {
    try {
      return await this.acquire(wantVideo);
    } finally {
      this.started = true;
    }
  }

  async acquire(wantVideo) {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      this.warnings.push(
        new MediaError(
          'insecure_context',
          'This page cannot use a camera or microphone here (it needs https or localhost). You can still see and hear others.',
        ),
      );
      return this;
    }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({
        audio: true,
        video: wantVideo ? VIDEO_CONSTRAINTS : false,
      });
      this.adopt(stream);
      return this;
    } catch (err) {
      const combined = describeMediaError(err, wantVideo ? 'camera and microphone' : 'microphone');
      if (combined.code === 'permission_denied' || !wantVideo) {
        this.warnings.push(combined);
        if (combined.code === 'permission_denied') return this;
      }
      if (!wantVideo) return this;
    }
    // One of the two failed: try each alone so that the other still works.
    try {
      this.adopt(await navigator.mediaDevices.getUserMedia({ audio: true }));
    } catch (err) {
      this.warnings.push(describeMediaError(err, 'microphone'));
    }
    try {
      this.adopt(await navigator.mediaDevices.getUserMedia({ video: VIDEO_CONSTRAINTS }));
    } catch (err) {
      this.warnings.push(describeMediaError(err, 'camera'));
    }
    return this;
  }

  adopt(stream) {
    for (const track of stream.getTracks()) {
      if (track.kind === 'audio' && !this.audio) this.audio = track;
      else if (track.kind === 'video' && !this.video) this.video = track;
      else {
        track.stop();
        continue;
      }
      this.stream.addTrack(track);
    }
  }

  /** Turn the camera off (releases it) or on again (re-acquires it). Returns the new track. */
  async setCamera(on) {
    if (!on) {
      if (this.video) {
        this.stream.removeTrack(this.video);
        this.video.stop();
        this.video = null;
      }
      return null;
    }
    if (this.video) return this.video;
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: VIDEO_CONSTRAINTS });
    } catch (err) {
      throw describeMediaError(err, 'camera');
    }
    this.adopt(stream);
    return this.video;
  }

  tracks() {
    return { stream: this.stream, audio: this.audio, video: this.video };
  }

  stop() {
    for (const track of this.stream.getTracks()) track.stop();
    this.audio = null;
    this.video = null;
  }
}
