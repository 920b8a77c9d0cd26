// The group call's link to the SFU: starts the SfuSession, and the reset policy when
// its connections fail (aiortc has no ICE restart: a fresh publish offer makes the
// SFU start over), up to MAX_RESETS times in the life of the call.
//
// Events: 'media' (tracks or connection state changed), 'notice' {level, code, message}.

import { emit, on } from './events.js';
import { SfuSession } from './sfu.js';
import { explain } from './texts.js';

/** The key of the SFU's entry in the shared failures map. */
export const SFU = 'sfu';
const MAX_RESETS = 5;

export class SfuLink extends EventTarget {
  /**
   * @param {object} o
   * @param {(message: object) => void} o.send
   * @param {() => RTCConfiguration} o.rtcConfig
   * @param {() => import('./media.js').LocalTracks} o.local
   * @param {() => string[]} o.kinds  what to publish: ['audio'] or ['audio', 'video']
   * @param {Map<string, string>} o.failures  shared with the P2P side; this link owns key SFU
   */
  constructor({ send, rtcConfig, local, kinds, failures }) {
    super();
    this.send = send;
    this.rtcConfig = rtcConfig;
    this.local = local;
    this.kinds = kinds;
    this.failures = failures;
    /** @type {SfuSession | null} */
    this.session = null;
    this.resets = 0;
    /** Sessions started over because the room moved or the SFU lost ours (not failures). */
    this.restarts = 0;
  }

  /** Start the SFU session (publish) unless it runs already. */
  start() {
    if (this.session) return;
    const session = new SfuSession({
      send: this.send,
      rtcConfig: this.rtcConfig,
      local: this.local,
      kinds: this.kinds(),
    });
    this.session = session;
    on(session, 'tracks', () => emit(this, 'media'));
    on(session, 'speakers', () => emit(this, 'media'));
    on(session, 'quality', () => emit(this, 'media'));
    on(session, 'state', ({ state }) => {
      if (state === 'connected') this.failures.delete(SFU);
      emit(this, 'media');
    });
    on(session, 'failed', () => this.failed(session));
    on(session, 'error', ({ message }) => this.notice('error', 'sfu_error', message));
    session.publish().catch((err) => this.notice('error', 'sfu_error', `Could not publish: ${err.message}`));
  }

  /**
   * One of the session's connections failed: rebuild both, or give up after MAX_RESETS.
   * @param {SfuSession} session
   */
  failed(session) {
    if (session !== this.session) return;
    this.resets += 1;
    if (this.resets > MAX_RESETS) {
      this.failures.set(SFU, 'Media connection to the server failed (ICE failed). Rejoin to retry.');
      this.notice('error', 'ice_failed', 'Media connection to the server keeps failing (ICE failed).');
      emit(this, 'media');
      return;
    }
    this.failures.set(SFU, explain('ice_failed'));
    this.notice('warning', 'ice_failed', 'Media connection to the server failed: reconnecting…');
    session.closePcs();
    session.publish().catch((err) => this.notice('error', 'sfu_error', err.message));
    emit(this, 'media');
  }

  /**
   * The socket is back. `republish` (a drain moved the room): start over. Otherwise ask
   * whether the SFU still holds the session (`resume`); `sfu_session_lost` says it does not.
   * @param {boolean} republish
   */
  reconnected(republish) {
    if (republish) this.restart();
    else if (this.session) this.send({ type: 'resume', target_id: 'sfu' });
  }

  /** The room moved to another node, or the SFU lost the session: start over; not a failure. */
  restart() {
    const session = this.session;
    if (!session) return;
    this.restarts += 1;
    session.closePcs();
    session.publish().catch((err) => this.notice('error', 'sfu_error', `Could not publish: ${err.message}`));
    emit(this, 'media');
  }

  /**
   * @param {'audio' | 'video'} kind
   * @param {MediaStreamTrack | null} track
   * @returns {Promise<unknown>[]}
   */
  replaceTrack(kind, track) {
    return this.session ? [this.session.replaceTrack(kind, track)] : [];
  }

  /**
   * Start (a track) or stop (null) the screen share on the publish connection.
   * @param {MediaStreamTrack | null} track
   * @returns {Promise<unknown>[]}
   */
  setScreen(track) {
    return this.session ? [this.session.setScreen(track)] : [];
  }

  /** Close the session (a rejoin or the end); a later start() opens a new one. */
  close() {
    if (!this.session) return;
    this.session.close();
    this.session = null;
  }

  /**
   * @param {string} level
   * @param {string} code
   * @param {string} message
   */
  notice(level, code, message) {
    emit(this, 'notice', { level, code, message });
  }
}
