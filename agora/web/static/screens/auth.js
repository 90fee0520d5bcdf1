// Signed out: sign in, or create an account. Both forms stay on one screen (a tab each).

import { h, showError } from "../lib/dom.js";
import { signIn, signUp } from "../lib/auth.js";

function field(label, input) {
  return h("label", { class: "field" }, h("span", null, label), input);
}

function signInForm() {
  const login = h("input", { name: "login", autocomplete: "username", required: true });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const form = h("form", { class: "card auth-form", "aria-labelledby": "signin-title" },
    h("h2", { id: "signin-title" }, "Sign in"),
    field("Username", login),
    field("Password", password),
    h("button", { type: "submit", class: "primary" }, "Sign in"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    form.querySelector("button").disabled = true;
    try {
      await signIn(login.value.trim(), password.value);
    } catch (error) {
      showError(form, error);
      form.querySelector("button").disabled = false;
    }
  });
  login.setAttribute("aria-description", "your username or email");
  return form;
}

function signUpForm() {
  const username = h("input", { name: "username", autocomplete: "username", required: true, minLength: 3, maxLength: 30, pattern: "[A-Za-z0-9_]+" });
  const email = h("input", { name: "email", type: "email", autocomplete: "email", required: true });
  const name = h("input", { name: "display_name", autocomplete: "name", maxLength: 100 });
  const password = h("input", { name: "password", type: "password", autocomplete: "new-password", required: true, minLength: 8 });
  const form = h("form", { class: "card auth-form", "aria-labelledby": "signup-title" },
    h("h2", { id: "signup-title" }, "Create an account"),
    field("Username", username),
    field("Email", email),
    field("Display name", name),
    field("Password", password),
    h("button", { type: "submit", class: "primary" }, "Sign up"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    form.querySelector("button").disabled = true;
    try {
      await signUp({
        username: username.value.trim(),
        email: email.value.trim(),
        password: password.value,
        display_name: name.value.trim() || null,
      });
    } catch (error) {
      showError(form, error);
      form.querySelector("button").disabled = false;
    }
  });
  return form;
}

export default function render(main) {
  // One form in the page at a time (the other is detached, not hidden), so every label names
  // exactly one control.
  const forms = { in: signInForm(), up: signUpForm() };
  const slot = h("div");
  const tabs = h("div", { class: "tabs", role: "group", "aria-label": "Account" });
  const show = (which) => {
    slot.replaceChildren(forms[which]);
    for (const b of tabs.children) b.setAttribute("aria-pressed", String(b.dataset.which === which));
    forms[which].querySelector("input").focus();
  };
  tabs.append(
    h("button", { type: "button", dataset: { which: "in" }, "aria-pressed": "true", onclick: () => show("in") }, "I have an account"),
    h("button", { type: "button", dataset: { which: "up" }, "aria-pressed": "false", onclick: () => show("up") }, "I am new here"));
  main.append(h("section", { class: "welcome" },
    h("h1", null, "Agora"),
    h("p", { class: "muted" }, "Friends, posts and chat, on a server you run yourself."),
    tabs, slot));
  show("in");
}
