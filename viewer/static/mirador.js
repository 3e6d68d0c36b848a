"use strict";
// Mirador 3 (pinned in viewer/package.json) on IIIF Presentation 3.0 manifests:
// /mirador?slide=ID opens /iiif/3/ID/manifest.json; /mirador?manifest=URL opens any manifest.
// A canvas painted by a Choice of modes (faithful, realistic, bicubic) opens with its layers panel:
// the first mode shown, the others listed and hidden (so their tiles are not synthesized unseen).
// The image services' info.json documents are fetched here and handed to Mirador before its
// manifest arrives: Mirador 3.4 adds a canvas's images as their info.json answers come in and then
// reorders them by layer, which throws ("Index bigger than number of layers") while some are missing.
// With the canvas and its images arriving together it keeps the (empty) viewport unless
// preserveViewport is off, which only matters between canvases of a sequence (a slide has one).
(async function () {
  const q = new URLSearchParams(location.search);
  const slide = q.get("slide");
  const manifest = q.get("manifest") ||
    (slide ? location.origin + "/iiif/3/" + encodeURIComponent(slide) + "/manifest.json" : null);
  const windowId = "slide";
  let layers = null;
  let infos = [];
  if (manifest) {
    try {
      const doc = await (await fetch(manifest)).json();
      const canvas = doc.items && doc.items[0];
      const body = canvas && canvas.items[0].items[0].body;
      if (body && body.type === "Choice") {
        layers = { canvasId: canvas.id, hidden: body.items.slice(1).map((b) => b.id) };
        const services = body.items.map((b) => b.service && b.service[0] && b.service[0].id);
        if (services.every(Boolean)) {
          infos = await Promise.all(services.map(async (id) => {
            const r = await fetch(id.replace(/\/$/, "") + "/info.json");
            return { id, ok: r.ok, json: r.ok ? await r.json() : null };
          }));
        }
      }
    } catch (e) {
      layers = null;  // not our manifest shape: Mirador shows it as it is
    }
  }
  window.msrMirador = Mirador.viewer({
    id: "mirador",
    windows: manifest ? [{
      id: windowId, manifestId: manifest, thumbnailNavigationPosition: "off",
      ...(layers ? { sideBarOpen: true, sideBarPanel: "layers" } : {}),
    }] : [],
    catalog: manifest ? [{ manifestId: manifest }] : [],
    window: { allowClose: false, panels: { layers: true } },
    workspaceControlPanel: { enabled: false },
    osdConfig: { preserveViewport: false },
  });
  for (const info of infos.filter((i) => i.ok)) {
    window.msrMirador.store.dispatch(Mirador.actions.receiveInfoResponse(info.id, info.json, true));
  }
  if (layers) {
    const payload = Object.fromEntries(layers.hidden.map((id) => [id, { visibility: false }]));
    window.msrMirador.store.dispatch(Mirador.actions.updateLayers(windowId, layers.canvasId, payload));
  }
  document.body.dataset.ready = "1";
})();
