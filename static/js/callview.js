// The call screen: one tile per participant plus your own preview, the controls,
// connection state, speaking indicators and the stats overlay. A participant's screen
// share gets a tile of its own (key `<id>:screen`), shown large above the cameras.

import { shownVideos } from './adapt.js';
import { byId } from './dom.js';
import { canShareScreen, displayMedia } from './sending.js';
import { StatsCollector, formatStats } from './stats.js';

const SCREEN = ':screen';

const SPEAKING_LEVEL = 0.03;

function initials(name) {
  const words = (name || '?').trim().split(/\s+/).filter(Boolean);
  return words.slice(0, 2).map((w) => w[0].toUpperCase()).join('') || '?';
}

function setStream(el, track) {
  const current = el.srcObject ? el.srcObject.getTracks()[0] : null;
  if (current === (track || null)) return;
  el.srcObject = track ? new MediaStream([track]) : null;
  if (track) {
    const playing = el.play();
    if (playing) playing.catch(() => {}); // autoplay may wait for a gesture; tracks still flow
  }
}

export class CallView {
  /**
   * @param {import('./call.js').CallSession} session
   * @param {{toast: (level: string, text: string) => void}} ui
   */
  constructor(session, ui) {
    this.session = session;
    this.ui = ui;
    this.grid = byId('tiles');
    this.template = byId('tile-template', HTMLTemplateElement);
    this.statusEl = byId('call-status');
    this.tiles = new Map();
    this.showStats = false;
    this.stats = new StatsCollector(session);
    this.timers = [];
    this.buttons = {
      mute: byId('btn-mute', HTMLButtonElement),
      camera: byId('btn-camera', HTMLButtonElement),
      screen: byId('btn-screen', HTMLButtonElement),
      invite: byId('btn-invite', HTMLButtonElement),
      stats: byId('btn-stats', HTMLButtonElement),
      leave: byId('btn-leave', HTMLButtonElement),
      end: byId('btn-end', HTMLButtonElement),
    };
    this.grid.replaceChildren();
    this.bind();
  }

  bind() {
    const s = this.session;
    const b = this.buttons;
    /** @type {[HTMLElement, string, () => void][]} */
    this.listeners = [
      [b.mute, 'click', () => s.setMuted(!s.muted)],
      [b.camera, 'click', () => s.setCamera(!s.cameraOn)],
      [b.screen, 'click', () => s.sending.setScreen(!s.sending.screen)],
      [b.stats, 'click', () => this.toggleStats()],
      [b.leave, 'click', () => s.leave()],
      [b.end, 'click', () => s.endForAll()],
    ];
    for (const [el, type, fn] of this.listeners) el.addEventListener(type, fn);
    for (const type of ['media', 'roster', 'status']) s.addEventListener(type, () => this.render());
    this.resizer = new ResizeObserver(() => this.layout());
    this.resizer.observe(this.grid);
    this.timers.push(setInterval(() => this.refreshStats(), 1000));
    this.timers.push(setInterval(() => this.refreshSpeaking(), 250));
    this.render();
  }

  destroy() {
    this.resizer.disconnect();
    this.grid.style.removeProperty('--cols');
    this.grid.style.removeProperty('--tile-w');
    this.grid.style.removeProperty('--screen-w');
    for (const [el, type, fn] of this.listeners) el.removeEventListener(type, fn);
    for (const timer of this.timers) clearInterval(timer);
    this.timers = [];
    for (const tile of this.tiles.values()) {
      for (const el of tile.querySelectorAll('video, audio')) el.srcObject = null;
    }
    this.tiles.clear();
    this.grid.replaceChildren();
  }

  toggleStats() {
    this.showStats = !this.showStats;
    this.buttons.stats.setAttribute('aria-pressed', String(this.showStats));
    this.buttons.stats.setAttribute('aria-label', this.showStats ? 'Hide connection statistics' : 'Show connection statistics');
    for (const tile of this.tiles.values()) tile.querySelector('.stats-overlay').hidden = !this.showStats;
    this.renderStats();
  }

  tile(key) {
    let tile = this.tiles.get(key);
    if (!tile) {
      tile = /** @type {HTMLElement} */ (this.template.content.firstElementChild.cloneNode(true));
      tile.dataset.participant = key;
      tile.querySelector('.stats-overlay').hidden = !this.showStats;
      if (key === 'self') tile.classList.add('self');
      if (key.endsWith(SCREEN)) {
        tile.classList.add('screen');
        tile.dataset.source = 'screen';
      }
      this.tiles.set(key, tile);
    }
    return tile;
  }

  render() {
    const s = this.session;
    const remotes = s.remotes();
    const order = [];

    // Your own preview.
    const self = this.tile('self');
    const localVideo = s.cameraOn ? s.local.video : null;
    setStream(self.querySelector('video'), localVideo);
    self.querySelector('.name').textContent = `${s.me.name || 'You'} (you)`;
    self.querySelector('.avatar').textContent = initials(s.me.name);
    self.querySelector('.badge-muted').hidden = !s.muted;
    self.querySelector('.badge-video-off').hidden = s.cameraOn || !s.isVideo;
    self.dataset.muted = String(s.muted);
    self.dataset.video = String(s.cameraOn);
    self.dataset.hasVideo = String(!!localVideo);
    self.dataset.state = 'local';
    self.setAttribute('aria-label', `You: ${s.muted ? 'muted' : 'unmuted'}, camera ${s.cameraOn ? 'on' : 'off'}`);
    let selfState = '';
    if (!s.local.started) selfState = s.isVideo ? 'Starting camera…' : 'Starting microphone…';
    else if (!s.local.audio && !s.local.video) selfState = 'No camera or microphone';
    self.querySelector('.tile-state').textContent = selfState;

    // Screen shares first, each large (see layout()).
    const screens = [];
    for (const r of remotes) {
      if (!r.screenTrack) continue;
      const tile = this.tile(r.user_id + SCREEN);
      screens.push(tile);
      const name = `${r.name || 'Guest'}'s screen`;
      tile.querySelector('.name').textContent = name;
      tile.querySelector('.avatar').textContent = initials(r.name);
      setStream(tile.querySelector('video'), r.screenTrack);
      tile.dataset.hasVideo = 'true';
      tile.dataset.state = r.connection;
      tile.setAttribute('aria-label', name);
    }
    order.push(...screens);

    for (const r of remotes) {
      const tile = this.tile(r.user_id);
      order.push(tile);
      const name = r.name || 'Guest';
      tile.querySelector('.name').textContent = name;
      tile.querySelector('.avatar').textContent = initials(name);
      setStream(tile.querySelector('video'), r.videoTrack);
      setStream(tile.querySelector('audio'), r.audio);
      tile.querySelector('.badge-muted').hidden = !r.muted;
      tile.querySelector('.badge-video-off').hidden = r.video !== false || !s.isVideo;
      const quality = s.mode === 'sfu' && s.sfu ? s.sfu.quality.get(r.user_id) : undefined;
      const paused = !!quality && quality.paused && r.video !== false;
      tile.querySelector('.badge-paused').hidden = !paused;
      tile.dataset.paused = String(paused);
      const hasVideo = !!r.videoTrack && r.video !== false && s.isVideo;
      tile.dataset.muted = String(!!r.muted);
      tile.dataset.video = String(r.video !== false);
      tile.dataset.hasVideo = String(hasVideo);
      tile.dataset.online = String(!!r.online);
      tile.dataset.connection = r.connection;
      let state = '';
      let stateKind = r.connection;
      if (r.failure) {
        state = r.failure;
        stateKind = 'failed';
      } else if (!r.online) {
        state = 'Connecting to the call…';
      } else if (r.connection === 'failed') {
        state = 'Connection failed: retrying…';
        stateKind = 'failed';
      } else if (r.connection === 'disconnected') {
        state = 'Connection interrupted…';
      } else if (r.connection !== 'connected') {
        state = 'Connecting media…';
      } else if (s.isVideo && r.video !== false && !r.videoTrack) {
        state = 'Waiting for video…';
      }
      tile.dataset.state = stateKind;
      tile.querySelector('.tile-state').textContent = state;
      tile.setAttribute(
        'aria-label',
        `${name}: ${r.muted ? 'muted' : 'unmuted'}, camera ${r.video !== false ? 'on' : 'off'}${state ? `, ${state}` : ''}`,
      );
    }
    order.push(self);

    // Drop tiles of participants who left; keep DOM order stable otherwise.
    const keep = new Set(['self', ...remotes.map((r) => r.user_id)]);
    for (const r of remotes) if (r.screenTrack) keep.add(r.user_id + SCREEN);
    for (const [key, tile] of this.tiles) {
      if (!keep.has(key)) {
        for (const el of tile.querySelectorAll('video, audio')) el.srcObject = null;
        tile.remove();
        this.tiles.delete(key);
      }
    }
    order.forEach((tile, index) => {
      if (this.grid.children[index] !== tile) this.grid.insertBefore(tile, this.grid.children[index] || null);
    });
    this.reportTiles();
    const enlarged = this.renderDominant(screens.length === 0);
    const screenCount = String(screens.length);
    if (
      this.grid.dataset.count !== String(order.length) ||
      this.grid.dataset.enlarged !== enlarged ||
      this.grid.dataset.screens !== screenCount
    ) {
      this.grid.dataset.count = String(order.length);
      this.grid.dataset.enlarged = enlarged;
      this.grid.dataset.screens = screenCount;
      this.layout();
    }
    this.renderControls();
    this.renderStatus(remotes);
  }

  /** Tell the SFU how large each received video is shown (adapt.js TileReporter). */
  reportTiles() {
    const s = this.session;
    if (s.mode === 'sfu' && s.sfu) s.sfu.showTiles(shownVideos(s.sfu.remoteTracks(), this.tiles, SCREEN));
  }

  /**
   * Mark the SFU's dominant speaker (docs/protocol.md `speakers`): class `dominant` on
   * their tile (yours too, when it is you), and, from three tiles on and with no screen
   * share shown, class `enlarged` on a remote one, which then spans 2x2 cells and comes
   * first (CSS `order`, so the DOM order and the playing media elements stay put).
   * @param {boolean} mayEnlarge
   * @returns {string} the key of the enlarged tile, or ''
   */
  renderDominant(mayEnlarge) {
    const s = this.session;
    const dominant = s.mode === 'sfu' && s.sfu ? s.sfu.speakers.dominant : null;
    const key = dominant && dominant === s.me.user_id ? 'self' : dominant;
    const enlarged =
      mayEnlarge && key && key !== 'self' && this.tiles.has(key) && this.tiles.size >= 3 ? key : '';
    for (const [k, tile] of this.tiles) {
      tile.classList.toggle('dominant', k === key);
      tile.classList.toggle('enlarged', k === enlarged);
    }
    return enlarged;
  }

  /**
   * Pick the column count that gives the largest 4:3 tiles fitting the grid's box (an
   * enlarged tile counts as four cells and needs two columns). With a screen share: the
   * shares full width (16:9), the cameras in one row below them.
   */
  layout() {
    const width = this.grid.clientWidth;
    const height = this.grid.clientHeight;
    if (!width || !height) return;
    const gap = 10;
    const screens = [...this.tiles.keys()].filter((key) => key.endsWith(SCREEN)).length;
    if (screens) {
      const cameras = Math.max(1, this.tiles.size - screens);
      // Total height: the shares at 9/16 of the width, then one row of 4:3 cameras.
      const perWidth = (screens * 9) / 16 + 3 / (4 * cameras);
      const full = Math.min(width, (height - gap * screens) / perWidth);
      const tile = Math.max(60, Math.floor((full - gap * (cameras - 1)) / cameras) - 1);
      this.grid.style.setProperty('--cols', String(cameras));
      this.grid.style.setProperty('--tile-w', `${tile}px`);
      return;
    }
    const enlarged = !!this.grid.dataset.enlarged;
    const count = (this.tiles.size || 1) + (enlarged ? 3 : 0);
    let best = { cols: 1, tile: 0 };
    for (let cols = enlarged ? 2 : 1; cols <= count; cols += 1) {
      const rows = Math.ceil(count / cols);
      const byWidth = (width - gap * (cols - 1)) / cols;
      const byHeight = ((height - gap * (rows - 1)) / rows) * (4 / 3);
      const tile = Math.min(byWidth, byHeight);
      if (tile > best.tile + 1) best = { cols, tile };
    }
    // Never smaller than a thumbnail: below that, the grid scrolls instead.
    const tile = Math.max(140, Math.floor(best.tile) - 4);
    this.grid.style.setProperty('--cols', String(best.cols));
    this.grid.style.setProperty('--tile-w', `${tile}px`);
  }

  renderControls() {
    const s = this.session;
    const b = this.buttons;
    b.mute.setAttribute('aria-pressed', String(s.muted));
    b.mute.setAttribute('aria-label', s.muted ? 'Unmute microphone' : 'Mute microphone');
    b.mute.querySelector('.label').textContent = s.muted ? 'Unmute' : 'Mute';
    b.mute.disabled = !s.local.audio;
    b.camera.hidden = !s.isVideo;
    b.camera.setAttribute('aria-pressed', String(!s.cameraOn));
    b.camera.setAttribute('aria-label', s.cameraOn ? 'Turn camera off' : 'Turn camera on');
    b.camera.querySelector('.label').textContent = s.cameraOn ? 'Camera off' : 'Camera on';
    b.screen.hidden = !s.isVideo || (!canShareScreen() && s.sending.screenSource === displayMedia);
    b.screen.setAttribute('aria-pressed', String(!!s.sending.screen));
    b.screen.setAttribute('aria-label', s.sending.screen ? 'Stop sharing your screen' : 'Share your screen');
    b.screen.querySelector('.label').textContent = s.sending.screen ? 'Stop sharing' : 'Share screen';
  }

  renderStatus(remotes) {
    const s = this.session;
    let text;
    let level = 'info';
    const others = remotes.filter((r) => r.online).length;
    const modeText = s.mode === 'sfu' ? 'group call via server' : 'direct call';
    switch (s.status) {
      case 'joining':
        text = 'Joining…';
        break;
      case 'connecting':
        text = 'Connecting to the server…';
        break;
      case 'reconnecting':
        text = 'Connection to the server lost: reconnecting…';
        level = 'error';
        break;
      case 'waiting':
        text = this.ringingText() || 'Waiting for others to join…';
        break;
      case 'connected':
        text = `${others + 1} in call · ${modeText}`;
        break;
      default:
        text = '';
    }
    this.statusEl.textContent = text;
    this.statusEl.dataset.level = level;
    this.statusEl.dataset.mode = s.mode;
  }

  ringingText() {
    const call = this.session.call;
    if (!call || call.status !== 'ringing') return '';
    const ringing = (call.participants || []).filter(
      (p) => p.invited && !p.joined_at && !p.declined_at && p.user_id !== this.session.me.user_id,
    );
    if (!ringing.length) return '';
    const names = ringing.map((p) => {
      const known = this.session.directory[p.user_id];
      return p.name || (known && known.name) || 'invitee';
    });
    return `Ringing ${names.join(', ')}…`;
  }

  refreshSpeaking() {
    const s = this.session;
    const levels = {};
    for (const { pc, role, remote } of s.connections()) {
      for (const transceiver of pc.getTransceivers()) {
        const receiver = transceiver.receiver;
        if (!receiver || !receiver.track || receiver.track.kind !== 'audio') continue;
        if (role === 'publish') continue;
        const owner = role === 'subscribe' ? s.sfu.participantForMid(transceiver.mid) : remote;
        if (!owner) continue;
        const sources = receiver.getSynchronizationSources ? receiver.getSynchronizationSources() : [];
        const level = sources.reduce((max, src) => Math.max(max, src.audioLevel || 0), 0);
        levels[owner] = Math.max(levels[owner] || 0, level);
      }
    }
    const localLevel = s.muted ? 0 : this.stats.snapshot.local.audioLevel;
    for (const [key, tile] of this.tiles) {
      const level = key === 'self' ? localLevel : levels[key] || 0;
      const remote = s.roster.get(key);
      const speaking = level > SPEAKING_LEVEL && !(remote && remote.muted);
      tile.dataset.speaking = String(speaking);
      tile.dataset.audioLevel = level.toFixed(3);
    }
  }

  async refreshStats() {
    await this.stats.collect();
    this.renderStats();
  }

  renderStats() {
    if (!this.showStats) return;
    const snapshot = this.stats.snapshot;
    for (const [key, tile] of this.tiles) {
      const overlay = tile.querySelector('.stats-overlay');
      if (key === 'self') {
        overlay.textContent = `sending ${snapshot.local.bitrateKbps || 0} kbit/s · ${this.session.mode}`;
      } else {
        overlay.textContent = formatStats(snapshot.remotes[key]);
      }
    }
  }
}
