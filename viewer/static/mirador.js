"use strict";
// Mirador 3 (pinned in viewer/package.json) on IIIF Presentation 3.0 manifests:
// /mirador?slide=ID opens /iiif/3/ID/manifest.json; /mirador?manifest=URL opens any manifest.
// A canvas painted by a Choice of modes (faithful, realistic, bicubic) opens with its layers panel:
// the first mode shown, the others listed and hidden (so their tiles are not synthesized unseen).
(async function () {
  const q = new URLSearchParams(location.search);
  const slide = q.get("slide");
  const manifest = q.get("manifest") ||
    (slide ? location.origin + "/iiif/3/" + encodeURIComponent(slide) + "/manifest.json" : null);
  const windowId = "slide";
  let layers = null;
  if (manifest) {
    try {
      const doc = await (await fetch(manifest)).json();
      const canvas = doc.items && doc.items[0];
      const body = canvas && canvas.items[0].items[0].body;
      if (body && body.type === "Choice") {
        layers = { canvasId: canvas.id, hidden: body.items.slice(1).map((b) => b.id) };
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
  });
  if (layers) {
    const payload = Object.fromEntries(layers.hidden.map((id) => [id, { visibility: false }]));
    window.msrMirador.store.dispatch(Mirador.actions.updateLayers(windowId, layers.canvasId, payload));
  }
  document.body.dataset.ready = "1";
})();
