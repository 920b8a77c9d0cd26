// The HTTP side of taking a seat in a call: join, or find the seat still ours after a
// reload (the server keeps it for the disconnect grace period), and the ICE servers a
// reload does not get again (kept in sessionStorage per call).

import { ApiError } from './api.js';

/**
 * @typedef {object} CallParticipant
 * @property {string} user_id
 * @property {string | null} [name]
 * @property {string | null} [joined_at]
 * @property {string | null} [left_at]
 * @property {string | null} [declined_at]
 * @property {boolean} [invited]
 * @property {boolean} [muted]
 * @property {boolean} [video]
 */

/**
 * The call object of the HTTP API (docs/api.md).
 * @typedef {object} CallObject
 * @property {string} call_id
 * @property {string} status
 * @property {string} [call_type]
 * @property {string} [mode]
 * @property {string | null} [end_reason]
 * @property {CallParticipant[]} [participants]
 * @property {RTCIceServer[]} [ice_servers]
 */

/**
 * @typedef {object} Seat
 * @property {CallObject} call
 * @property {RTCIceServer[]} iceServers
 */

/**
 * Whether `userId` holds a seat in `call`: joined and not left.
 * @param {CallObject} call
 * @param {string} userId
 * @returns {boolean}
 */
export function holdsSeat(call, userId) {
  const mine = (call.participants || []).find((p) => p.user_id === userId);
  return !!(mine && mine.joined_at && !mine.left_at);
}

export class Joiner {
  /**
   * @param {object} o
   * @param {import('./api.js').Api} o.api
   * @param {string} o.callId
   * @param {string} o.userId
   * @param {CallObject | null} [o.initial]  the initiate answer: the caller is joined already
   */
  constructor({ api, callId, userId, initial = null }) {
    this.api = api;
    this.callId = callId;
    this.userId = userId;
    this.initial = initial;
    this.cacheKey = `huddle.ice.${callId}`;
  }

  /**
   * Take (or find) our seat. Throws ApiError for a refused join.
   * @returns {Promise<Seat>}
   */
  async join() {
    /** @type {Seat} */
    let seat;
    if (this.initial) {
      const call = this.initial;
      this.initial = null;
      seat = { call, iceServers: call.ice_servers || [] };
    } else {
      const kept = sessionStorage.getItem(this.cacheKey) ? await this.stillJoined() : null;
      if (kept) {
        // A reload: the seat is still ours (grace period), so no join (it would be a 409).
        seat = { call: kept, iceServers: await this.cachedIceServers() };
      } else {
        seat = await this.freshJoin();
      }
    }
    // A reload keeps the seat (already joined) but gets no ice_servers: remember them.
    sessionStorage.setItem(this.cacheKey, JSON.stringify(seat.iceServers));
    return seat;
  }

  /** @returns {Promise<Seat>} */
  async freshJoin() {
    try {
      const call = await this.api.join(this.callId);
      return { call, iceServers: call.ice_servers || [] };
    } catch (err) {
      // The caller is joined from initiation; a reload within the grace period is too.
      if (!(err instanceof ApiError) || err.code !== 'already_joined') throw err;
      const call = await this.api.call(this.callId);
      return { call, iceServers: await this.cachedIceServers() };
    }
  }

  /**
   * The call, if our seat in it is still held; null otherwise (or if the server cannot say).
   * @returns {Promise<CallObject | null>}
   */
  async stillJoined() {
    try {
      const call = await this.api.call(this.callId);
      if (call.status !== 'ended' && holdsSeat(call, this.userId)) return call;
    } catch (err) {
      /* fall through to a join, which explains any refusal */
    }
    return null;
  }

  /** @returns {Promise<RTCIceServer[]>} */
  async cachedIceServers() {
    const cached = sessionStorage.getItem(this.cacheKey);
    if (cached) return JSON.parse(cached);
    try {
      const turn = await this.api.turnCredentials();
      return [{ urls: turn.uris, username: turn.username, credential: turn.password }];
    } catch (err) {
      return []; // no TURN configured (404): host candidates only
    }
  }
}
