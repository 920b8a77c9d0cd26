// What the UI draws of a call, computed from the session's parts: one entry per
// remote participant with its media and connection state, and the live connections.

import { SFU } from './sfulink.js';

/**
 * @typedef {import('./roster.js').RosterEntry & {
 *   audio: MediaStreamTrack | null,
 *   videoTrack: MediaStreamTrack | null,
 *   screenTrack: MediaStreamTrack | null,
 *   connection: string,
 *   failure: string | null,
 * }} RemoteView
 */

/**
 * @typedef {object} CallParts
 * @property {string} mode  'p2p' | 'sfu'
 * @property {import('./roster.js').Roster} roster
 * @property {Map<string, import('./p2p.js').P2PPeer>} peers
 * @property {import('./sfu.js').SfuSession | null} sfu
 * @property {Map<string, string>} failures
 */

/**
 * @param {CallParts} parts
 * @returns {RemoteView[]}
 */
export function remoteViews({ mode, roster, peers, sfu, failures }) {
  const sfuTracks = sfu ? sfu.remoteTracks() : new Map();
  /** @type {RemoteView[]} */
  const result = [];
  for (const [id, entry] of roster) {
    let audio = null;
    let video = null;
    let screen = null;
    let connection = 'new';
    const peer = peers.get(id);
    if (mode === 'p2p' && peer) {
      audio = peer.remoteStream.getAudioTracks()[0] || null;
      video = peer.remoteStream.getVideoTracks()[0] || null;
      screen = peer.remoteScreen();
      connection = peer.pc ? peer.pc.connectionState : 'closed';
    } else if (mode === 'sfu' && sfu) {
      const tracks = sfuTracks.get(id);
      if (tracks) {
        audio = tracks.audio;
        video = tracks.video;
        screen = tracks.screen;
      }
      connection = sfu.subscribePc ? sfu.subscribePc.connectionState : 'new';
    }
    result.push({
      ...entry,
      audio,
      video: entry.video,
      videoTrack: video,
      screenTrack: screen,
      connection,
      failure: failures.get(id) || (mode === 'sfu' ? failures.get(SFU) : null) || null,
    });
  }
  return result;
}

/**
 * @typedef {{pc: RTCPeerConnection, role: 'p2p' | 'publish' | 'subscribe', remote: string | null}} ConnectionView
 */

/**
 * Every live RTCPeerConnection, with whose media it carries.
 * @param {CallParts} parts
 * @returns {ConnectionView[]}
 */
export function connectionViews({ peers, sfu }) {
  /** @type {ConnectionView[]} */
  const list = [];
  for (const [id, peer] of peers) if (peer.pc) list.push({ pc: peer.pc, role: 'p2p', remote: id });
  if (sfu) {
    if (sfu.publishPc) list.push({ pc: sfu.publishPc, role: 'publish', remote: null });
    if (sfu.subscribePc) list.push({ pc: sfu.subscribePc, role: 'subscribe', remote: null });
  }
  return list;
}
