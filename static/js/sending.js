// What this page sends: the local camera and microphone, the mute and camera
// switches (a muted or switched-off kind has no track on its senders at all, so no
// packets leave, not merely silence or black frames), and a screen share: a second
// video track from getDisplayMedia (or `screenSource`, which tests replace with a
// canvas track), stopped by the button or by the browser's own "stop sharing".

import { LocalMedia } from './media.js';

/** @typedef {'audio' | 'video'} Kind */

/**
 * The default screen source: the browser's picker (getDisplayMedia).
 * @returns {Promise<MediaStreamTrack>}
 */
export async function displayMedia() {
  const stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15, max: 30 } }, audio: false });
  for (const track of stream.getAudioTracks()) track.stop();
  return stream.getVideoTracks()[0];
}

/** @returns {boolean} whether this browser can share a screen at all */
export function canShareScreen() {
  return !!(navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia);
}

export class LocalSending {
  /**
   * @param {object} o
   * @param {(kind: Kind, track: MediaStreamTrack | null) => Promise<unknown>} o.replace
   *   puts `track` on every sender of `kind` (P2P peers or the SFU publish connection)
   * @param {(track: MediaStreamTrack | null) => Promise<unknown>} o.share
   *   starts (a track) or stops (null) the screen share on every connection (renegotiates)
   * @param {(flags: {muted?: boolean, video?: boolean}) => void} o.announce  tells the others (a `mute` message)
   * @param {(code: string, message: string) => void} o.fail  a switch that could not be made
   * @param {() => void} [o.changed]  the screen share started or stopped (button or browser)
   */
  constructor({ replace, share, announce, fail, changed = () => {} }) {
    this.replace = replace;
    this.share = share;
    this.changed = changed;
    /** @type {MediaStreamTrack | null} */
    this.screen = null;
    /** Where a share's track comes from (tests put a canvas track here). */
    this.screenSource = displayMedia;
    this.announce = announce;
    this.fail = fail;
    this.local = new LocalMedia();
    this.muted = false;
    this.cameraOn = true;
    this.video = true;
  }

  /**
   * Acquire what the call type needs; never throws for missing devices.
   * @param {boolean} video  a video call (else audio only: no camera switch)
   * @returns {Promise<import('./media.js').MediaError[]>}  what did not work
   */
  async start(video) {
    this.video = video;
    await this.local.start(video);
    this.cameraOn = !!this.local.video;
    return this.local.warnings;
  }

  /** @returns {import('./media.js').LocalTracks} what new senders carry now */
  tracks() {
    const { stream, audio, video } = this.local.tracks();
    return { stream, audio: this.muted ? null : audio, video: this.cameraOn ? video : null, screen: this.screen };
  }

  /**
   * Share a screen (on) or stop sharing. Cancelling the browser's picker is not an error.
   * @param {boolean} on
   * @returns {Promise<boolean>} whether anything changed
   */
  async setScreen(on) {
    if (!on) return this.stopScreen();
    if (this.screen) return false;
    let track;
    try {
      track = await this.screenSource();
    } catch (err) {
      if (err && err.name === 'NotAllowedError') return false; // the picker was cancelled
      this.fail('screen_share_failed', `Could not share your screen: ${(err && err.message) || err}`);
      return false;
    }
    if (!track) return false;
    this.screen = track;
    // The browser's own "Stop sharing" (or the window closing) ends the track.
    track.addEventListener('ended', () => {
      if (this.screen === track) this.stopScreen();
    });
    await this.share(track);
    this.changed();
    return true;
  }

  async stopScreen() {
    const track = this.screen;
    if (!track) return false;
    this.screen = null;
    track.stop();
    await this.share(null);
    this.changed();
    return true;
  }

  /** @param {boolean} muted */
  async setMuted(muted) {
    if (!this.local.audio && !muted) {
      this.fail('no_device', 'No microphone is available.');
      return false;
    }
    this.muted = muted;
    await this.replace('audio', muted ? null : this.local.audio);
    this.announce({ muted });
    return true;
  }

  /** @param {boolean} on */
  async setCamera(on) {
    if (!this.video && on) return false;
    let track;
    try {
      track = await this.local.setCamera(on);
    } catch (err) {
      this.fail(err.code || 'media_error', err.message);
      return false;
    }
    this.cameraOn = !!track;
    await this.replace('video', track);
    this.announce({ video: this.cameraOn });
    return true;
  }

  stop() {
    if (this.screen) this.screen.stop();
    this.screen = null;
    this.local.stop();
  }
}
