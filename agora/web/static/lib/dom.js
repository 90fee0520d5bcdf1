// The few DOM helpers every screen uses: build elements, format times, tell the user things.

/** h("button", {class: "x", onclick: fn, "aria-label": "Send"}, "Send") -> an element.
 *  Children may be strings, nodes, arrays or null/false (skipped). Text is never parsed as HTML. */
export function h(tag, props = null, ...children) {
  const el = document.createElement(tag);
  if (props) {
    for (const [key, value] of Object.entries(props)) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on") && typeof value === "function") {
        el.addEventListener(key.slice(2), value);
      } else if (key === "class") {
        el.className = value;
      } else if (key === "dataset") {
        Object.assign(el.dataset, value);
      } else if (key in el && typeof value !== "string") {
        el[key] = value;
      } else {
        el.setAttribute(key, value === true ? "" : String(value));
      }
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto", style: "short" });
const absolute = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

/** A <time> saying "2 min ago", with the full date as its title and datetime. */
export function when(iso) {
  const date = new Date(iso);
  const seconds = Math.round((date.getTime() - Date.now()) / 1000);
  let text;
  if (Math.abs(seconds) < 45) text = "just now";
  else if (Math.abs(seconds) < 3600) text = relative.format(Math.round(seconds / 60), "minute");
  else if (Math.abs(seconds) < 86400) text = relative.format(Math.round(seconds / 3600), "hour");
  else if (Math.abs(seconds) < 7 * 86400) text = relative.format(Math.round(seconds / 86400), "day");
  else text = absolute.format(date);
  return h("time", { datetime: iso, title: absolute.format(date) }, text);
}

/** A short message in the live region (announced by screen readers). */
export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const item = h("p", { class: `toast ${kind}` }, message);
  box.append(item);
  setTimeout(() => item.remove(), 5000);
}

/** An avatar: the user's image, or their initial on a colour of their id. */
export function avatar(user, size = "") {
  const name = user.display_name || user.username || "?";
  if (user.avatar_url) {
    return h("img", { class: `avatar ${size}`, src: user.avatar_url, alt: "", loading: "lazy" });
  }
  const hue = (Number(String(user.id).slice(-6)) * 47) % 360;
  const el = h("span", { class: `avatar ${size}`, "aria-hidden": "true" }, name[0].toUpperCase());
  el.style.setProperty("--hue", String(hue));
  return el;
}

/** A link to a user's profile. */
export function userLink(user) {
  return h("a", { href: `#/people/${user.id}`, class: "who" }, user.display_name || user.username);
}

/** Run fn when el scrolls into view (infinite scroll); returns a function that stops it. */
export function whenVisible(el, fn, root = null) {
  const observer = new IntersectionObserver((entries) => {
    if (entries.some((entry) => entry.isIntersecting)) fn();
  }, { root, rootMargin: "400px" });
  observer.observe(el);
  return () => observer.disconnect();
}

/** Show an API error under a form (field errors beside their fields when the API names them). */
export function showError(form, error) {
  const box = form.querySelector(".form-error") || form.appendChild(h("p", { class: "form-error", role: "alert" }));
  const fields = error.fields ? Object.entries(error.fields).map(([k, v]) => `${k}: ${v}`) : [];
  box.textContent = [error.message, ...fields].join(" · ");
}
