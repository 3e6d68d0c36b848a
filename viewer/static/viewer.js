"use strict";
// The slide viewer: OpenSeadragon over the server's Deep Zoom pyramids.
// Synthesized pixels are never shown as scanned: a badge names the model
// whenever the view is above the stored magnification.
(async function () {
  const slideId = decodeURIComponent(location.pathname.split("/").pop());
  const resp = await fetch("/api/slides/" + encodeURIComponent(slideId));
  if (!resp.ok) { document.getElementById("note").textContent = await resp.text(); return; }
  const { slide, model } = await resp.json();
  const $ = (id) => document.getElementById(id);
  $("title").textContent = slide.name;
  document.title = slide.name + " — MSR Tile Server";
  const fullMpp = slide.mpp.virtual;                 // µm per pixel of the full-size image
  const fullMag = fullMpp ? 10 / fullMpp : null;    // 0.25 µm/px = 40X
  const storedMag = slide.mpp.stored ? 10 / slide.mpp.stored : null;
  let mode = "sr";
  if (!slide.synthesized) {
    $("note").textContent = slide.reason || "served as scanned";
    $("mode").hidden = true;
  }

  // OpenSeadragon draws a level once it has MIN_PIXEL_RATIO of its pixels per screen pixel, so
  // synthesized pixels appear from 2 × stored magnification × MIN_PIXEL_RATIO (per device pixel).
  const MIN_PIXEL_RATIO = 1.0;
  const synthesizedShown = (mag) =>
    mag * (OpenSeadragon.pixelDensityRatio || 1) >= 2 * storedMag * MIN_PIXEL_RATIO * 0.999;
  const osdOptions = (element, dzi) => ({
    element, tileSources: dzi, prefixUrl: "/osd/images/",
    showNavigator: element.id === "viewer", navigatorPosition: "BOTTOM_RIGHT",
    timeout: 120000,                       // synthesized tiles may take seconds on a cold CPU
    placeholderFillStyle: "#3a2f2a",       // visible while a tile is loading
    minPixelRatio: MIN_PIXEL_RATIO,         // a level is drawn only from 1 image px per screen px on
    imageLoaderLimit: 6, maxZoomPixelRatio: 2, visibilityRatio: 0.5, minZoomImageRatio: 0.1,
    crossOriginPolicy: false, showRotationControl: false, preserveImageSizeOnResize: true, gestureSettingsMouse: { clickToZoom: false },
  });
  // ?protocol=iiif: the same pyramid through the IIIF Image API 3.0 (same block cache) instead of Deep Zoom
  const srSource = new URLSearchParams(location.search).get("protocol") === "iiif" ? slide.iiif : slide.dzi;
  document.body.dataset.protocol = srSource === slide.dzi ? "dzi" : "iiif";
  const viewer = OpenSeadragon(osdOptions($("viewer"), srSource));
  window.msrViewer = viewer;

  const imageZoom = () => {
    const item = viewer.world.getItemAt(0);
    return item ? item.viewportToImageZoom(viewer.viewport.getZoom(true)) : null;
  };
  const currentMag = () => { const z = imageZoom(); return z && fullMag ? z * fullMag : null; };

  // -- magnification readout, badge, scale bar --------------------------------
  function update() {
    const mag = currentMag();
    $("mag").textContent = mag ? mag.toFixed(mag < 10 ? 1 : 0) + "X" : "–";
    const synthesized = Boolean(slide.synthesized && mag && storedMag && synthesizedShown(mag));
    const badge = $("badge");
    badge.hidden = !synthesized;
    if (synthesized) {
      badge.className = "badge" + (mode === "bicubic" ? " bicubic" : "");
      badge.textContent = mode === "sr"
        ? `Synthesized ${slide.synthesized_magnifications.join("/")} by ${slide.model} — not scanned pixels`
        : "Bicubic interpolation of the 5X scan — not scanned pixels";
    }
    document.querySelectorAll("#magbuttons button").forEach((b) => {
      b.classList.toggle("active", mag && Math.abs(mag / parseFloat(b.dataset.mag) - 1) < 0.02);
    });
    scaleBar();
  }
  function scaleBar() {
    const z = imageZoom();
    const bar = $("scalebar");
    if (!z || !fullMpp) { bar.hidden = true; return; }
    const umPerScreenPx = fullMpp / z;
    let um = umPerScreenPx * 150, p = Math.pow(10, Math.floor(Math.log10(um)));
    um = [5, 2, 1].map((k) => k * p).find((v) => v <= um) || p;
    bar.hidden = false;
    bar.querySelector(".bar").style.width = (um / umPerScreenPx).toFixed(0) + "px";
    bar.querySelector(".label").textContent = um >= 1000 ? um / 1000 + " mm" : um + " µm";
  }

  // -- magnification buttons and keys ------------------------------------------
  function zoomToMag(mag) {
    const item = viewer.world.getItemAt(0);
    if (!item || !fullMag) return;
    viewer.viewport.zoomTo(item.imageToViewportZoom(mag / fullMag));
  }
  const mags = slide.magnifications.slice().sort((a, b) => b.mpp - a.mpp);
  mags.forEach((m, i) => {
    const b = document.createElement("button");
    b.textContent = m.name; b.dataset.mag = (10 / m.mpp).toString();
    b.title = (m.synthesized ? "synthesized " : "scanned ") + m.name + ` (key ${i + 1})`;
    b.addEventListener("click", () => zoomToMag(10 / m.mpp));
    $("magbuttons").append(b);
  });

  // -- SR <-> bicubic ------------------------------------------------------------
  function setMode(next) {
    if (!slide.synthesized || next === mode) return;
    mode = next;
    const bounds = viewer.viewport.getBounds(true);  // same place, same magnification
    viewer.addTiledImage({
      tileSource: mode === "sr" ? srSource : slide.bicubic_dzi, index: 0, replace: true,
      success: () => { viewer.viewport.fitBounds(bounds, true); update(); },
    });
    $("mode").textContent = mode === "sr" ? "SR" : "Bicubic";
    $("mode").classList.toggle("bicubic", mode === "bicubic");
    document.body.dataset.mode = mode;
    update();
  }
  $("mode").addEventListener("click", () => setMode(mode === "sr" ? "bicubic" : "sr"));

  // -- loading indicator ----------------------------------------------------------
  let pending = 0;
  const showLoading = () => { $("loading").hidden = pending <= 0; };
  viewer.addHandler("add-item-failed", (e) => { $("note").textContent = "could not load the pyramid: " + e.message; });
  viewer.world.addHandler("add-item", (e) => {
    e.item.addHandler("fully-loaded-change", (ev) => { pending = ev.fullyLoaded ? 0 : 1; showLoading(); });
  });
  viewer.addHandler("tile-loaded", () => { document.body.dataset.tilesLoaded = String(1 + Number(document.body.dataset.tilesLoaded || 0)); });
  viewer.addHandler("tile-load-failed", (e) => { $("note").textContent = "tile failed: " + e.message; });

  // -- side by side with the reference slide -----------------------------------------
  let refViewer = null, syncing = false;
  const ref = slide.reference && slide.reference.id ? slide.reference : null;
  let refInfo = null;
  if (ref) {
    const r = await fetch("/api/slides/" + encodeURIComponent(ref.id));
    if (r.ok) { refInfo = (await r.json()).slide; $("sync").hidden = false; $("sync").textContent = "Reference: " + ref.name; }
  }
  function physicalWidth(s) { return s.dimensions.virtual[0] * (s.mpp.virtual || 1); }
  function syncRef() {
    if (!refViewer || syncing || !refViewer.world.getItemAt(0)) return;
    syncing = true;
    const k = physicalWidth(slide) / physicalWidth(refInfo); // main viewport units → reference viewport units
    const c = viewer.viewport.getCenter(true);
    refViewer.viewport.zoomTo(viewer.viewport.getZoom(true) / k, null, true);
    refViewer.viewport.panTo(new OpenSeadragon.Point(c.x * k, c.y * k), true);
    syncing = false;
  }
  function toggleRef() {
    if (!refInfo) return;
    const pane = $("refpane");
    pane.hidden = !pane.hidden;
    $("sync").classList.toggle("active", !pane.hidden);
    if (!pane.hidden && !refViewer) {
      refViewer = OpenSeadragon({ ...osdOptions($("refviewer"), refInfo.dzi), mouseNavEnabled: false, showNavigationControl: false });
      refViewer.addHandler("open", syncRef);
    }
    setTimeout(() => { viewer.viewport.resize && viewer.forceRedraw(); syncRef(); }, 50);
  }
  $("sync").addEventListener("click", toggleRef);

  viewer.addHandler("open", () => { update(); document.body.dataset.ready = "1"; });
  viewer.addHandler("animation", () => { update(); syncRef(); });
  viewer.addHandler("animation-finish", () => { update(); syncRef(); });
  viewer.addHandler("resize", () => { update(); syncRef(); });

  viewer.addHandler("canvas-key", (e) => {  // our keys, not OpenSeadragon's (r would rotate)
    if (/^[rb1-9]$/i.test(e.originalEvent.key)) { e.preventDefaultAction = true; }
  });
  document.addEventListener("keydown", (e) => {
    if (e.target && ["INPUT", "TEXTAREA"].includes(e.target.tagName)) return;
    const key = e.key.toLowerCase();
    if (key === "b") setMode(mode === "sr" ? "bicubic" : "sr");
    else if (key === "r") toggleRef();
    else if (/^[1-9]$/.test(key) && mags[Number(key) - 1]) zoomToMag(10 / mags[Number(key) - 1].mpp);
  });
  window.msrState = () => ({ mode, mag: currentMag(), badge: $("badge").hidden ? null : $("badge").textContent });
})();
