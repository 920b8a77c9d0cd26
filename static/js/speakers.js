// The SFU's `speakers` message (docs/protocol.md): who talks, and the dominant speaker.

/**
 * Who the SFU says is talking (docs/protocol.md `speakers`).
 * @typedef {{dominant: string | null, speaking: Set<string>}} Speakers
 */

/**
 * @param {{dominant?: unknown, speakers?: unknown}} message
 * @returns {Speakers}
 */
export function parseSpeakers(message) {
  const dominant = typeof message.dominant === 'string' ? message.dominant : null;
  const entries = Array.isArray(message.speakers) ? message.speakers : [];
  const ids = entries.map((entry) => entry && entry.participant_id).filter((id) => typeof id === 'string');
  return { dominant, speaking: new Set(ids) };
}
