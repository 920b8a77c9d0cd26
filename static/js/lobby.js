// Dev-mode flow: pick a name (dev token), create a conversation whose members are new
// dev users (this page keeps their tokens to make invite links) or existing user ids,
// ring some of them, and invite more from inside the call.

import { Api, ApiError } from './api.js';
import { byId, checkedValues } from './dom.js';
import { explain } from './texts.js';

const $ = byId;
/** @param {string} id */
const field = (id) => byId(id, HTMLInputElement);

function splitList(text) {
  return (text || '')
    .split(/[,\n]/)
    .map((part) => part.trim())
    .filter(Boolean);
}

function showError(el, text) {
  el.textContent = text || '';
  el.hidden = !text;
}

export class Lobby {
  constructor(app) {
    this.app = app;
    // Per tab (sessionStorage): two tabs of one browser can be two people.
    this.identity = JSON.parse(sessionStorage.getItem('huddle.identity') || 'null');
    this.contacts = JSON.parse(sessionStorage.getItem('huddle.contacts') || '{}');
    this.conversation = null;
    this.bound = false;
  }

  get api() {
    return new Api(this.identity ? this.identity.token : null);
  }

  save() {
    sessionStorage.setItem('huddle.identity', JSON.stringify(this.identity));
    sessionStorage.setItem('huddle.contacts', JSON.stringify(this.contacts));
  }

  nameOf(userId) {
    if (this.identity && userId === this.identity.user_id) return `${this.identity.name} (you)`;
    const contact = this.contacts[userId];
    return contact ? contact.name : userId;
  }

  bind() {
    if (this.bound) return;
    this.bound = true;
    $('name-form').addEventListener('submit', (event) => {
      event.preventDefault();
      this.pickName(field('name-input').value);
    });
    $('conversation-form').addEventListener('submit', (event) => {
      event.preventDefault();
      this.createConversation();
    });
    $('start-video').addEventListener('click', () => this.startCall('video'));
    $('start-audio').addEventListener('click', () => this.startCall('audio'));
    $('link-form').addEventListener('submit', (event) => {
      event.preventDefault();
      this.openLink(field('link-input').value);
    });
    $('btn-invite').addEventListener('click', () => this.openInviteDialog());
    $('invite-dialog').addEventListener('close', () => this.onInviteDialogClosed());
  }

  async start() {
    this.bind();
    if (this.identity) this.show();
    else {
      this.app.show('name');
      $('name-input').focus();
    }
  }

  show() {
    this.app.setWho(this.identity.name);
    this.app.setConnState('idle', '');
    this.app.show('lobby');
    this.renderConversation();
  }

  async pickName(raw) {
    const name = raw.trim();
    if (!name) return;
    try {
      const answer = await new Api().devToken(name);
      this.identity = { token: answer.token, user_id: answer.user_id, name: answer.name };
      this.save();
      this.show();
      $('member-names').focus();
    } catch (err) {
      const text =
        err.status === 404
          ? 'This server is not in development mode: open Huddle from your app (a link with call_id and token).'
          : explain(err.code, err.message);
      showError($('name-error'), text);
    }
  }

  async createConversation() {
    const errorEl = $('conversation-error');
    showError(errorEl, '');
    const names = splitList(field('member-names').value);
    const ids = splitList(field('member-ids').value);
    if (!names.length && !ids.length) {
      showError(errorEl, 'Add at least one person: a name or a user id.');
      return;
    }
    try {
      const created = [];
      for (const name of names) {
        const answer = await new Api().devToken(name);
        this.contacts[answer.user_id] = { name: answer.name, token: answer.token };
        created.push(answer.user_id);
      }
      this.save();
      const title = field('conversation-title').value.trim();
      this.conversation = await this.api.createConversation([...created, ...ids], title || null);
      byId('conversation-form', HTMLFormElement).reset();
      this.renderConversation();
      $('start-video').focus();
    } catch (err) {
      showError(errorEl, explain(err.code, err.message));
    }
  }

  renderConversation() {
    const conv = this.conversation;
    $('conversation-card').hidden = !conv;
    if (!conv) return;
    $('conversation-heading').textContent = conv.title || 'Conversation';
    const list = $('member-list');
    list.replaceChildren();
    for (const id of conv.member_ids) {
      if (id === this.identity.user_id) continue;
      const li = document.createElement('li');
      const label = document.createElement('label');
      const box = document.createElement('input');
      box.type = 'checkbox';
      box.checked = true;
      box.value = id;
      box.dataset.name = this.nameOf(id);
      label.append(box, document.createTextNode(this.nameOf(id)));
      li.append(label);
      list.append(li);
    }
    this.renderHistory();
  }

  async renderHistory() {
    const list = $('history-list');
    if (!this.conversation) return;
    try {
      const { calls } = await this.api.history(this.conversation.conversation_id);
      list.replaceChildren();
      for (const call of calls.slice(0, 5)) {
        const li = document.createElement('li');
        const when = new Date(call.created_at).toLocaleTimeString();
        const how = call.status === 'ended' ? `ended (${call.end_reason})` : call.status;
        const length = call.duration_seconds ? ` · ${Math.round(call.duration_seconds)} s` : '';
        li.textContent = `${when} · ${call.call_type} · ${how}${length}`;
        list.append(li);
      }
      if (!calls.length) list.innerHTML = '<li>No calls yet.</li>';
    } catch (err) {
      list.replaceChildren();
    }
  }

  async startCall(callType) {
    const errorEl = $('start-error');
    showError(errorEl, '');
    const callees = checkedValues($('member-list'));
    if (!callees.length) {
      showError(errorEl, 'Pick at least one person to ring.');
      return;
    }
    try {
      const call = await this.api.initiate(this.conversation.conversation_id, callType, callees);
      await this.app.joinCall(call.call_id, this.identity.token, { initial: call });
    } catch (err) {
      showError(errorEl, explain(err.code, err.message));
    }
  }

  openLink(raw) {
    let url;
    try {
      url = new URL(raw, location.href);
    } catch (err) {
      this.app.toast('error', 'That is not a link.');
      return;
    }
    if (!url.searchParams.get('call_id') || !url.searchParams.get('token')) {
      this.app.toast('error', 'An invite link has call_id and token in it.');
      return;
    }
    location.assign(`${location.pathname}${url.search}`);
  }

  // -- inside a call ----------------------------------------------------------------------

  inviteLink(callId, token) {
    const query = new URLSearchParams({ call_id: callId, token, ring: '1' });
    return `${location.origin}/?${query}`;
  }

  /** Links for invitees who have not joined, for the people this page created. */
  renderInvites() {
    const session = this.app.session;
    const panel = $('invites');
    const list = $('invite-links');
    if (!session || !session.call) {
      panel.hidden = true;
      return;
    }
    const contacts = this.app.contacts || {};
    const joined = new Set([...session.roster.keys()]);
    const pending = (session.call.participants || []).filter(
      (p) =>
        p.invited &&
        p.user_id !== session.me.user_id &&
        !joined.has(p.user_id) &&
        !p.declined_at &&
        !(p.joined_at && !p.left_at) &&
        contacts[p.user_id],
    );
    list.replaceChildren();
    for (const p of pending) {
      const contact = contacts[p.user_id];
      const li = document.createElement('li');
      li.className = 'invite-link';
      li.dataset.userId = p.user_id;
      li.dataset.name = contact.name;
      const label = document.createElement('span');
      label.textContent = contact.name;
      const input = document.createElement('input');
      input.readOnly = true;
      input.value = this.inviteLink(session.callId, contact.token);
      input.setAttribute('aria-label', `Invite link for ${contact.name}`);
      const copy = document.createElement('button');
      copy.type = 'button';
      copy.textContent = 'Copy';
      copy.setAttribute('aria-label', `Copy the invite link for ${contact.name}`);
      copy.addEventListener('click', async () => {
        try {
          await navigator.clipboard.writeText(input.value);
          this.app.toast('info', `Copied ${contact.name}'s link.`);
        } catch (err) {
          input.select();
        }
      });
      li.append(label, input, copy);
      list.append(li);
    }
    panel.hidden = pending.length === 0;
  }

  async refreshCall() {
    const session = this.app.session;
    if (!session) return;
    try {
      session.call = await session.api.call(session.callId);
      session.applyCallObject(session.call);
    } catch (err) {
      /* the call may have ended; signaling says so */
    }
    this.renderInvites();
  }

  async openInviteDialog() {
    const session = this.app.session;
    if (!session) return;
    const dialog = byId('invite-dialog', HTMLDialogElement);
    const list = $('invite-members');
    showError($('invite-error'), '');
    list.replaceChildren();
    let members = [];
    try {
      const call = await session.api.call(session.callId);
      session.call = call;
      const conv = await session.api.conversation(call.conversation_id);
      const invited = new Set(call.participants.filter((p) => p.invited && !p.declined_at).map((p) => p.user_id));
      members = conv.member_ids.filter((id) => !invited.has(id) && id !== session.me.user_id);
    } catch (err) {
      showError($('invite-error'), explain(err.code, err.message));
    }
    for (const id of members) {
      const li = document.createElement('li');
      const label = document.createElement('label');
      const box = document.createElement('input');
      box.type = 'checkbox';
      box.value = id;
      box.dataset.name = this.nameOf(id);
      label.append(box, document.createTextNode(this.nameOf(id)));
      li.append(label);
      list.append(li);
    }
    $('invite-empty').hidden = members.length > 0;
    byId('invite-submit', HTMLButtonElement).disabled = members.length === 0;
    dialog.showModal();
  }

  async onInviteDialogClosed() {
    const dialog = byId('invite-dialog', HTMLDialogElement);
    const session = this.app.session;
    if (dialog.returnValue !== 'invite' || !session) return;
    const ids = checkedValues($('invite-members'));
    if (!ids.length) return;
    try {
      await session.invite(ids);
      this.app.toast('info', `Invited ${ids.map((id) => this.nameOf(id)).join(', ')}.`);
      await this.refreshCall();
    } catch (err) {
      this.app.toast('error', err instanceof ApiError ? explain(err.code, err.message) : String(err));
    }
  }
}
