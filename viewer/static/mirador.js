"use strict";
// Mirador 3 (pinned in viewer/package.json) on IIIF Presentation 3.0 manifests:
// /mirador?slide=ID opens /iiif/3/ID/manifest.json; /mirador?manifest=URL opens any manifest.
(function () {
  const q = new URLSearchParams(location.search);
  const slide = q.get("slide");
  const manifest = q.get("manifest") ||
    (slide ? location.origin + "/iiif/3/" + encodeURIComponent(slide) + "/manifest.json" : null);
  window.msrMirador = Mirador.viewer({
    id: "mirador",
    windows: manifest ? [{ manifestId: manifest, thumbnailNavigationPosition: "off" }] : [],
    catalog: manifest ? [{ manifestId: manifest }] : [],
    window: { allowClose: false },
    workspaceControlPanel: { enabled: false },
  });
})();
