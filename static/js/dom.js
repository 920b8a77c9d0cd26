// Typed look-ups of the page's elements (index.html): a missing or different element
// fails loudly here rather than as an undefined property somewhere later.

/**
 * The element with `id`, checked to be a `type` (HTMLElement when not given).
 * @template {HTMLElement} [T=HTMLElement]
 * @param {string} id
 * @param {{new (): T, prototype: T, name: string}} [type]
 * @returns {T}
 */
export function byId(id, type) {
  const el = document.getElementById(id);
  const want = type || HTMLElement;
  if (!(el instanceof want)) throw new Error(`#${id} is missing or not a ${want.name}`);
  return /** @type {T} */ (el);
}

/**
 * The values of the checked boxes inside `container`.
 * @param {ParentNode} container
 * @returns {string[]}
 */
export function checkedValues(container) {
  return [...container.querySelectorAll('input:checked')].map((box) => /** @type {HTMLInputElement} */ (box).value);
}
