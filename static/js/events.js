// Typed helpers for the CustomEvents the client's objects dispatch to each other.

/**
 * Dispatch `type` with `detail` on `target`.
 * @param {EventTarget} target
 * @param {string} type
 * @param {unknown} [detail]
 */
export function emit(target, type, detail) {
  target.dispatchEvent(new CustomEvent(type, { detail }));
}

/**
 * Listen for `type` on `target`, handing the handler the event's detail.
 * @param {EventTarget} target
 * @param {string} type
 * @param {(detail: any) => void} handler
 */
export function on(target, type, handler) {
  target.addEventListener(type, (event) => handler(/** @type {CustomEvent} */ (event).detail));
}
