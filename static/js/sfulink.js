// The group call's link to the SFU: starts the SfuSession, restarts ICE on a connection
// that was interrupted (the network changed; docs/protocol.md "ICE restart"), and
// starts the session over when a connection fails or its restart does not connect
// within RESTART_WAIT_MS (a fresh publish offer), up to MAX_RESETS times in the life of
// the call.
//
// Events: 'media' (tracks or connection state changed), 'notice' {level, code, message}.

import { emit, on } from './events.js';
import { SfuSession } from './sfu.js';
import { explain } from './texts.js';

/** The key of the SFU's entry in the shared failures map. */
export const SFU = 'sfu';
const MAX_RESETS = 5;
/** An interrupted connection not connected again this long after its ICE restart fails. */
const RESTART_WAIT_MS = 12000;

export class SfuLink extends EventTarget {
  /**
   * @param {object} o
   * @param {(message: object) => void} o.send
   * @param {() => RTCConfiguration} o.rtcConfig
   * @param {() => import('./media.js').LocalTracks} o.local
   * @param {() => string[]} o.kinds  what to publish: ['audio'] or ['audio', 'video']
   * @param {Map<string, string>} o.failures  shared with the P2P side; this link owns key SFU
   * @param {() => void} [o.checkSignaling]  make sure the socket is alive (drop it if not)
   */
  constructor({ send, rtcConfig, local, kinds, failures, checkSignaling = () => {} }) {
    super();
    this.send = send;
    this.rtcConfig = rtcConfig;
    this.local = local;
    this.kinds = kinds;
    this.failures = failures;
    /** @type {SfuSession | null} */
    this.session = null;
    this.resets = 0;
    this.checkSignaling = checkSignaling;
    /** Connections whose ICE restart is under way: name -> give-up timer. */
    this.restarting = new Map();
    /** ICE restarts asked for (one per interrupted connection). */
    this.iceRestarts = 0;
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
    on(session, 'state', ({ pc, state }) => {
      if (state === 'connected') {
        this.failures.delete(SFU);
        clearTimeout(this.restarting.get(pc));
        this.restarting.delete(pc);
      }
      emit(this, 'media');
    });
    on(session, 'interrupted', ({ pc }) => this.interrupted(session, pc));
    on(session, 'failed', () => this.failed(session));
    on(session, 'error', ({ message }) => this.notice('error', 'sfu_error', message));
    session.publish().catch((err) => this.notice('error', 'sfu_error', `Could not publish: ${err.message}`));
  }

  /**
   * A connection that worked stopped (its network changed): restart ICE on it, and
   * start over if it is not connected again within RESTART_WAIT_MS.
   * @param {SfuSession} session
   * @param {'publish' | 'subscribe'} name
   */
  interrupted(session, name) {
    if (session !== this.session || this.restarting.has(name)) return;
    this.iceRestarts += 1;
    this.checkSignaling(); // the socket may have died with the network: notice it now
    const timer = setTimeout(() => {
      this.restarting.delete(name);
      if (session === this.session && session.connectionState(name) !== 'connected') this.failed(session);
    }, RESTART_WAIT_MS);
    this.restarting.set(name, timer);
    session.restartIce(name);
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
    this.clearRestarts();
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
    if (republish) {
      this.restart();
      return;
    }
    const session = this.session;
    if (!session) return;
    this.send({ type: 'resume', target_id: 'sfu' });
    // ICE restarts asked for on the socket that died may never have arrived: again.
    for (const name of this.restarting.keys()) session.restartIce(name);
  }

  clearRestarts() {
    for (const timer of this.restarting.values()) clearTimeout(timer);
    this.restarting.clear();
  }

  /** The room moved to another node, or the SFU lost the session: start over; not a failure. */
  restart() {
    const session = this.session;
    if (!session) return;
    this.restarts += 1;
    this.clearRestarts();
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
    this.clearRestarts();
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
