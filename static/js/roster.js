// Who else is in the call, as this page knows it: names, mute and camera flags, and
// whether their signaling socket is up. Plain state: the session decides what a
// change means for media.

/**
 * @typedef {object} RosterEntry
 * @property {string} user_id
 * @property {string | null} name
 * @property {boolean} muted
 * @property {boolean} video
 * @property {boolean} online
 */

/**
 * One participant of a `participants` message (docs/protocol.md).
 * @typedef {object} PresenceEntry
 * @property {string} [participant_id]
 * @property {string} [user_id]
 * @property {string | null} [name]
 * @property {boolean} [muted]
 * @property {boolean} [video]
 * @property {boolean} [online]
 */

export class Roster {
  /**
   * @param {string} meId  our own user id: never in the roster
   * @param {Record<string, {name?: string | null}>} directory  names known before they join
   */
  constructor(meId, directory) {
    this.meId = meId;
    this.directory = directory;
    /** @type {Map<string, RosterEntry>} */
    this.entries = new Map();
  }

  /** @param {string} id */
  get(id) {
    return this.entries.get(id);
  }

  /** @param {string} id */
  has(id) {
    return this.entries.has(id);
  }

  keys() {
    return this.entries.keys();
  }

  values() {
    return this.entries.values();
  }

  [Symbol.iterator]() {
    return this.entries[Symbol.iterator]();
  }

  /**
   * Whether `id` is someone else's id (not empty, not ours).
   * @param {string | null | undefined} id
   * @returns {id is string}
   */
  isOther(id) {
    return !!id && id !== this.meId;
  }

  /**
   * Those joined in an HTTP call object, added (offline until their socket shows up).
   * @param {import('./join.js').CallObject} call
   */
  addFromCall(call) {
    for (const p of call.participants || []) {
      if (!this.isOther(p.user_id)) continue;
      const joined = p.joined_at && !p.left_at;
      const entry = this.entries.get(p.user_id);
      if (joined && !entry) {
        this.entries.set(p.user_id, {
          user_id: p.user_id,
          name: p.name,
          muted: p.muted,
          video: p.video,
          online: false,
        });
      } else if (entry && !entry.name && p.name) {
        entry.name = p.name;
      }
    }
  }

  /**
   * The server's full list: everyone in it is set, and the ids no longer in it returned.
   * @param {PresenceEntry[]} list
   * @returns {string[]}  ids to remove
   */
  replace(list) {
    const seen = new Set();
    for (const item of list) {
      const id = item.participant_id || item.user_id;
      if (!this.isOther(id)) continue;
      seen.add(id);
      const existing = this.entries.get(id);
      this.entries.set(id, {
        ...existing,
        user_id: id,
        name: item.name || (existing && existing.name) || null,
        muted: !!item.muted,
        video: item.video !== false,
        online: item.online !== false,
      });
    }
    return [...this.entries.keys()].filter((id) => !seen.has(id));
  }

  /**
   * Update a participant's fields (null and undefined ones are left alone).
   * @param {string | null | undefined} id
   * @param {Partial<RosterEntry>} fields
   * @param {{create?: boolean}} [options]  whether someone unknown is added
   * @returns {boolean}  whether the roster holds them now
   */
  upsert(id, fields, { create = false } = {}) {
    if (!this.isOther(id)) return false;
    if (!create && !this.entries.has(id)) return false;
    const entry = this.entries.get(id) || { user_id: id, name: null, muted: false, video: true, online: false };
    for (const [key, value] of Object.entries(fields)) {
      if (value !== undefined && value !== null) entry[key] = value;
    }
    this.entries.set(id, entry);
    return true;
  }

  /** @param {string} id */
  delete(id) {
    this.entries.delete(id);
  }

  /** @returns {boolean} whether anyone else has a signaling socket up */
  anyOnline() {
    for (const entry of this.entries.values()) if (entry.online) return true;
    return false;
  }

  /**
   * @param {string} id
   * @returns {string}
   */
  nameOf(id) {
    const entry = this.entries.get(id);
    const known = this.directory[id];
    return (entry && entry.name) || (known && known.name) || 'A participant';
  }
}
