// Which server message (docs/protocol.md) goes to which part of the call, and a short
// history of them for debugging (window.huddle.messages(); SDP left out).

import { endText, explain } from './texts.js';

const SERVER = 'server';
const SFU = 'sfu';
const LOG_SIZE = 300;

/** @typedef {{type: string, sender: string, at: number, detail: unknown}} LoggedMessage */

export class MessageLog {
  constructor() {
    /** @type {LoggedMessage[]} */
    this.entries = [];
  }

  /** @param {Record<string, any>} message */
  add(message) {
    this.entries.push({
      type: message.type,
      sender: message.sender_id,
      at: Date.now(),
      detail: message.participant_id || message.mode || message.code || message.pc || message.dominant || null,
    });
    if (this.entries.length > LOG_SIZE) this.entries.shift();
  }
}

/**
 * Hand one server message to the session part it is for.
 * @param {import('./call.js').CallSession} session
 * @param {{type: string} & Record<string, any>} message
 */
export function route(session, message) {
  const sender = message.sender_id;
  switch (message.type) {
    case 'participants':
      session.onRoster(message.participants || []);
      break;
    case 'presence':
      session.onPresence(message.participant_id, message.online);
      break;
    case 'join':
      session.upsert(message.participant_id, { name: message.name }, { create: true });
      break;
    case 'leave':
      session.onLeft(message.participant_id);
      break;
    case 'declined':
      session.notice('info', 'declined', `${session.roster.nameOf(message.participant_id)} declined the call.`);
      break;
    case 'invited':
      session.emit('invited', { ids: message.invited_ids || [] });
      break;
    case 'mute':
      session.upsert(message.participant_id, { muted: message.muted, video: message.video });
      break;
    case 'mode':
      session.setMode(message.mode);
      break;
    case 'call_ended':
      session.finish('call_ended', endText(message.reason));
      break;
    case 'reconnect': // the node is draining: Signaling reopens, SfuLink restarts (call.js)
      session.notice('info', 'reconnect', 'Moving the call to another server…');
      break;
    case 'error':
      onError(session, message);
      break;
    case 'tracks':
      if (session.sfu) session.sfu.handle(message);
      break;
    case 'speakers':
    case 'quality':
    case 'layers':
      if (sender === SFU && session.sfu) session.sfu.handle(message);
      break;
    case 'offer':
    case 'answer':
    case 'ice_candidate':
      if (sender === SFU) {
        if (session.sfu) session.sfu.handle(message);
      } else if (sender && sender !== SERVER) {
        session.onPeerMessage(sender, message);
      }
      break;
    default:
      break;
  }
}

/**
 * An `error` message: a notice, or the end of the call.
 * @param {import('./call.js').CallSession} session
 * @param {{type: string, code?: string, message?: string}} message
 */
function onError(session, message) {
  const code = message.code || 'error';
  if (code === 'signaling_degraded') {
    session.notice('warning', code, 'Signaling is degraded: some messages may be lost.');
  } else if (code === 'sfu_session_lost') {
    // The SFU holds no session for us (its node went away): start over on this socket.
    if (session.mode === 'sfu') session.sfuLink.restart();
  } else if (code === 'call_ended') {
    session.finish('call_ended', explain('call_ended'));
  } else {
    session.notice('error', code, message.message || code);
  }
}
