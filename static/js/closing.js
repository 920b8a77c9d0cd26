// What a final close of the signaling socket means for the call: over (and why), or a
// seat given up that a rejoin can take again. Asks the HTTP API, since a close code
// alone does not say (a refused handshake reaches a browser as a bare 1006).

import { holdsSeat } from './join.js';
import { endText, explain } from './texts.js';

/** @typedef {{code: string, message: string}} Ending */

/**
 * @param {object} o
 * @param {import('./api.js').Api} o.api
 * @param {string} o.callId
 * @param {string} o.userId
 * @param {{code: number, lost?: boolean}} close  the Signaling 'closed' detail
 * @returns {Promise<Ending | null>}  how the call ends for us, or null: rejoin
 */
export async function judgeClose({ api, callId, userId }, { code, lost }) {
  if (code === 4001) return { code: 'replaced', message: explain('replaced') };
  if (code === 1000) {
    // We left (perhaps from another device) or the call ended: never rejoin on our own.
    let ended = false;
    try {
      ended = (await api.call(callId)).status === 'ended';
    } catch (err) {
      /* treat as left */
    }
    return ended ? { code: 'call_ended', message: explain('call_ended') } : { code: 'left', message: 'You left the call.' };
  }
  // Refused before the upgrade, or gone for longer than the grace period: ask why.
  /** @type {import('./join.js').CallObject} */
  let call;
  try {
    call = await api.call(callId);
  } catch (err) {
    return { code: 'signaling_lost', message: explain('signaling_lost') };
  }
  if (call.status === 'ended') return { code: 'call_ended', message: endText(call.end_reason) };
  if (holdsSeat(call, userId) && !lost) return { code: 'signaling_lost', message: explain('signaling_lost') };
  return null; // our seat was given up: take it again (a rejoin is allowed) and reconnect
}
