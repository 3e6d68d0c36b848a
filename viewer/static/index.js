"use strict";
// The slide list: a thumbnail, the stored size, the magnifications (synthesized ones marked),
// the modes, the label image, and the reference scan shown with its 5X slide (not as a slide of its own).
(async function () {
  const resp = await fetch("/api/slides");
  const data = await resp.json();
  const models = data.models || [data.model];
  const m = models[0];
  document.getElementById("model").textContent = models.map((x) =>
    `${x.kind === "realistic" ? "Realistic" : "Faithful"} model ${x.id}`).join(" · ") +
    ` on ${m.provider}${m.provider_note ? " (" + m.provider_note + ")" : ""}; trained on ${m.training_data || "?"}; licence ${m.licence || "?"}`;
  const body = document.querySelector("#slides tbody");
  const ids = new Set(data.slides.map((s) => s.id));
  // a reference scan is listed under the slide made from it
  const shown = data.slides.filter((s) => !(s.reference_of || []).some((id) => ids.has(id)));
  if (!shown.length) {
    body.innerHTML = "<tr><td colspan=6>No slides in the slide folder.</td></tr>";
  }
  const link = (href, text) => { const a = document.createElement("a"); a.href = href; a.textContent = text; return a; };
  const image = (src, cls, alt) => { const i = document.createElement("img"); i.src = src; i.className = cls; i.alt = alt; i.loading = "lazy"; return i; };
  for (const s of shown) {
    const tr = document.createElement("tr");
    tr.dataset.slide = s.id;
    const cell = (...nodes) => { const td = document.createElement("td"); td.append(...nodes); tr.append(td); return td; };
    const thumb = link("/view/" + encodeURIComponent(s.id), "");
    thumb.append(image(s.thumbnail, "thumb", "thumbnail of " + s.name));
    cell(thumb);
    const name = document.createElement("div");
    name.append(link("/view/" + encodeURIComponent(s.id), s.name));
    if (s.associated && s.associated.label) name.append(document.createElement("br"), image(s.associated.label, "label", "slide label"));
    cell(name);
    cell(`${s.dimensions.stored[0]}×${s.dimensions.stored[1]} px` + (s.mpp.stored ? `, ${s.mpp.stored.toFixed(3)} µm/px` : ", no mpp"));
    const mags = document.createElement("span");
    for (const mg of s.magnifications) {
      const e = document.createElement("span");
      e.textContent = mg.name + " ";
      if (mg.synthesized) { e.className = "synth"; e.title = "synthesized (see modes)"; }
      mags.append(e);
    }
    cell(mags);
    const ref = document.createElement("span");
    if (s.reference && s.reference.id) {
      ref.append(link("/view/" + encodeURIComponent(s.reference.id), s.reference.name),
        ` — the ${s.reference.magnification || ""} scan it was made from (key R in the viewer)`);
    } else if (s.reference) {
      ref.textContent = s.reference.name + " (not in the folder)";
    }
    cell(ref);
    const notes = document.createElement("span");
    if (s.synthesized) {
      for (const md of s.modes) {
        const a = link(`/view/${encodeURIComponent(s.id)}?mode=${encodeURIComponent(md.mode)}`, md.title);
        a.className = "mode " + md.kind; a.title = md.description;
        notes.append(a, " ");
      }
      notes.append(document.createElement("br"), `${s.synthesized_magnifications.join("/")} synthesized — not scanned pixels`);
    } else {
      notes.textContent = (s.reference_of || []).length ? "a scanned reference" : (s.reason || "served as scanned");
    }
    cell(notes);
    body.append(tr);
  }
})();
