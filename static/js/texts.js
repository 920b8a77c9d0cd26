// The words a participant reads: HTTP and signaling error codes and why a call ended.

/** @type {Record<string, string>} */
const TEXTS = {
  call_ended: 'This call has ended.',
  ringing_expired: 'This call stopped ringing before it was answered.',
  participant_limit_reached: 'This call is full: no more participants can join.',
  not_invited: 'You are not invited to this call.',
  not_a_member: 'You are not a member of this conversation.',
  call_not_found: 'This call does not exist (check the link).',
  token_missing: 'You need to sign in (no token was given).',
  token_expired: 'Your session has expired. Get a new link from the app that sent you here.',
  token_invalid: 'Your sign-in token is not valid for this server.',
  network_error: 'Cannot reach the server. Check your connection.',
  signaling_lost: 'Lost the connection to the server. Rejoin to continue.',
  replaced: 'You joined this call from another tab or device, so this one was disconnected.',
  ice_failed: 'Could not establish a media connection (ICE failed). Retrying…',
  rate_limited: 'Too many attempts. Wait a moment and try again.',
  already_declined: 'You already declined this call.',
};

/** @type {Record<string, string>} */
const END_REASONS = {
  completed: 'The call has ended.',
  declined: 'The call was declined.',
  missed: 'The call was not answered.',
  expired: 'The call reached its maximum duration and was ended.',
  cleaned: 'The call was closed by the server.',
};

/**
 * Human text for an HTTP or signaling error code a participant can meet.
 * @param {string} code
 * @param {string} [fallback]  the server's message, shown for codes without a text of their own
 * @returns {string}
 */
export function explain(code, fallback) {
  return TEXTS[code] || fallback || code;
}

/**
 * Why the call ended, from the server's `end_reason` (or a `call_ended` message's `reason`).
 * @param {string | null | undefined} reason
 * @returns {string}
 */
export function endText(reason) {
  return (reason && END_REASONS[reason]) || explain('call_ended');
}
