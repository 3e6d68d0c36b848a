"use strict";
(async function () {
  const resp = await fetch("/api/slides");
  const data = await resp.json();
  const m = data.model;
  document.getElementById("model").textContent =
    `Model ${m.id} on ${m.provider}${m.provider_note ? " (" + m.provider_note + ")" : ""}; trained on ${m.training_data || "?"}; licence ${m.licence || "?"}`;
  const body = document.querySelector("#slides tbody");
  if (!data.slides.length) {
    body.innerHTML = "<tr><td colspan=5>No slides in the slide folder.</td></tr>";
  }
  for (const s of data.slides) {
    const tr = document.createElement("tr");
    const cell = (html) => { const td = document.createElement("td"); td.append(html); tr.append(td); return td; };
    const a = document.createElement("a");
    a.href = "/view/" + encodeURIComponent(s.id);
    a.textContent = s.name;
    cell(a);
    cell(`${s.dimensions.stored[0]}×${s.dimensions.stored[1]} px` + (s.mpp.stored ? `, ${s.mpp.stored.toFixed(3)} µm/px` : ", no mpp"));
    const mags = document.createElement("span");
    for (const mg of s.magnifications) {
      const e = document.createElement("span");
      e.textContent = mg.name + " ";
      if (mg.synthesized) { e.className = "synth"; e.title = "synthesized by " + s.model; }
      mags.append(e);
    }
    cell(mags);
    cell(s.reference ? (s.reference.id ? s.reference.name : s.reference.name + " (not in folder)") : "");
    cell(s.synthesized ? `10X–40X synthesized by ${s.model}` : (s.reason || "served as scanned"));
    body.append(tr);
  }
})();
