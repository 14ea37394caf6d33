// Keyboard shortcuts and draft saving for the rating page. Without this script the form still works: the
// radio buttons and the Submit button post the same fields.
(function () {
  const form = document.getElementById("rating");
  const status = document.getElementById("status");
  const back = document.getElementById("back");
  const revising = form.elements.revise.value === "1";
  const KEYS = {
    a: ["left", "excellent"], s: ["left", "sufficient"], d: ["left", "not_acceptable"],
    j: ["right", "excellent"], k: ["right", "sufficient"], l: ["right", "not_acceptable"],
    z: ["preference", "left"], x: ["preference", "tie"], c: ["preference", "right"],
  };
  let submitting = false;

  // Every choice is saved as a draft at once, so a closed tab or a lost connection loses nothing; a revision
  // is saved only when submitted (a draft must not stand in for a submitted rating).
  function saveDraft() {
    if (revising || submitting) return;
    const data = new FormData(form);
    data.set("final", "0");
    fetch(form.action, { method: "POST", body: data })
      .then((reply) => reply.ok ? "Draft saved." : `Draft not saved (HTTP ${reply.status}).`)
      .catch(() => "Draft not saved: the server does not answer.")
      .then((text) => { status.textContent = text; });
  }

  form.addEventListener("change", saveDraft);
  form.addEventListener("submit", (event) => {
    if (submitting) { event.preventDefault(); return; }  // one submission per screen
    submitting = true;
    document.getElementById("submit").disabled = true;
  });

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key.toLowerCase();
    if (key in KEYS) {
      const [name, value] = KEYS[key];
      const input = form.querySelector(`input[name="${name}"][value="${value}"]`);
      if (!input.checked) {
        input.checked = true;
        saveDraft();
      }
      event.preventDefault();
    } else if (event.key === "Enter") {
      event.preventDefault();
      if (form.reportValidity()) form.requestSubmit();
      else status.textContent = "Rate both responses and choose the more helpful one (or a tie) first.";
    } else if (event.key === "Backspace" && back) {
      event.preventDefault();
      window.location.href = back.href;
    }
  });
})();
