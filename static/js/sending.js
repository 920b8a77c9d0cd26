// What this page sends: the local camera and microphone, and the mute and camera
// switches (a muted or switched-off kind has no track on its senders at all, so no
// packets leave, not merely silence or black frames).

import { LocalMedia } from './media.js';

/** @typedef {'audio' | 'video'} Kind */

export class LocalSending {
  /**
   * @param {object} o
   * @param {(kind: Kind, track: MediaStreamTrack | null) => Promise<unknown>} o.replace
   *   puts `track` on every sender of `kind` (P2P peers or the SFU publish connection)
   * @param {(flags: {muted?: boolean, video?: boolean}) => void} o.announce  tells the others (a `mute` message)
   * @param {(code: string, message: string) => void} o.fail  a switch that could not be made
   */
  constructor({ replace, announce, fail }) {
    this.replace = replace;
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
    return { stream, audio: this.muted ? null : audio, video: this.cameraOn ? video : null };
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
    this.local.stop();
  }
}
