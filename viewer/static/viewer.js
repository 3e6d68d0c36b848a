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
  // -- modes: each model (faithful / realistic) and bicubic, each its own pyramid --------
  const params = new URLSearchParams(location.search);
  const modes = slide.modes || [];
  const useIIIF = params.get("protocol") === "iiif";
  const asked = params.get("mode");
  let current = modes.find((m) => m.mode === asked) || modes.find((m) => m.kind === asked) ||
    modes.find((m) => m.default) || null;
  let lastModel = current && current.kind !== "bicubic" ? current : modes.find((m) => m.default) || null;
  const sourceOf = (m) => (m ? (useIIIF ? m.iiif : m.dzi) : (useIIIF ? slide.iiif : slide.dzi));
  if (!slide.synthesized) {  // a reference scan says so, not why it is not synthesized
    $("note").textContent = (slide.reference_of || []).length
      ? `scanned pixels: the reference scan of ${slide.reference_of.join(", ")}` : (slide.reason || "served as scanned");
  }
  document.body.dataset.mode = current ? current.kind : "scanned";
  document.body.dataset.modeKey = current ? current.mode : "";
  $("protocol").textContent = useIIIF ? "IIIF Image API 3.0" : "Deep Zoom";

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
  document.body.dataset.protocol = useIIIF ? "iiif" : "dzi";
  const viewer = OpenSeadragon(osdOptions($("viewer"), sourceOf(current)));
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
    const synthesized = Boolean(current && mag && storedMag && synthesizedShown(mag));
    const badge = $("badge");
    badge.hidden = !synthesized;
    if (synthesized) {
      badge.className = "badge " + current.kind;
      badge.textContent = current.description;
    }
    onScreen(mag);
    refLabel(mag);
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

  // -- modes: Faithful · Realistic · Bicubic (keys F, T, B; M cycles) ---------------------
  const KEYS = { faithful: "f", realistic: "t", bicubic: "b" };
  modes.forEach((m) => {
    const b = document.createElement("button");
    const twin = modes.filter((o) => o.kind === m.kind).length > 1;
    b.textContent = m.title + (twin ? ` (${m.mode})` : "");
    b.dataset.mode = m.mode;
    b.className = m.kind;
    b.setAttribute("role", "radio");
    b.title = m.description + (KEYS[m.kind] && !twin ? ` (key ${KEYS[m.kind].toUpperCase()})` : "");
    b.addEventListener("click", () => setMode(m));
    $("modes").append(b);
  });
  function showMode() {
    document.querySelectorAll("#modes button").forEach((b) => {
      const on = Boolean(current) && b.dataset.mode === current.mode;
      b.classList.toggle("active", on);
      b.setAttribute("aria-checked", String(on));
    });
    document.body.dataset.mode = current ? current.kind : "scanned";
    document.body.dataset.modeKey = current ? current.mode : "";
  }
  function setMode(next) {
    if (!next || !current || next.mode === current.mode) return;
    current = next;
    if (next.kind !== "bicubic") lastModel = next;
    params.set("mode", next.mode);                       // a shared link opens the same mode
    history.replaceState(null, "", location.pathname + "?" + params.toString());
    const bounds = viewer.viewport.getBounds(true);      // same place, same magnification
    viewer.addTiledImage({
      tileSource: sourceOf(next), index: 0, replace: true,
      success: () => { viewer.viewport.fitBounds(bounds, true); update(); syncRef(); },
    });
    showMode();
    update();
  }
  const byKind = (kind) => modes.find((m) => m.kind === kind);
  showMode();

  // -- loading indicator ----------------------------------------------------------
  let pending = 0;
  const showLoading = () => { $("loading").hidden = pending <= 0; };
  viewer.addHandler("add-item-failed", (e) => { $("note").textContent = "could not load the pyramid: " + e.message; });
  viewer.world.addHandler("add-item", (e) => {
    e.item.addHandler("fully-loaded-change", (ev) => { pending = ev.fullyLoaded ? 0 : 1; showLoading(); });
  });
  viewer.addHandler("tile-loaded", () => { document.body.dataset.tilesLoaded = String(1 + Number(document.body.dataset.tilesLoaded || 0)); });
  viewer.addHandler("tile-load-failed", (e) => { $("note").textContent = "tile failed: " + e.message; });

  // -- what is on screen: OpenSeadragon shows coarser levels until the wanted one has loaded --
  // the coarsest level drawn where the finest drawn level does not yet cover the image in view
  function drawnMag() {
    const item = viewer.world.getItemAt(0);
    if (!item || !fullMag || !item.getTilesToDraw) return null;
    const tiles = item.getTilesToDraw().map((t) => t.tile).filter((t) => t.position && t.size);
    if (!tiles.length) return null;
    const magOf = (level) => fullMag / Math.pow(2, item.source.maxLevel - level);
    const finest = Math.max(...tiles.map((t) => t.level));
    const el = viewer.viewport.viewportToViewerElementRectangle(item.getBounds(true));
    const size = viewer.viewport.getContainerSize();
    const clip = (x, y, w, h) => Math.max(0, Math.min(x + w, el.x + el.width, size.x) - Math.max(x, el.x, 0)) *
      Math.max(0, Math.min(y + h, el.y + el.height, size.y) - Math.max(y, el.y, 0));
    const visible = clip(el.x, el.y, el.width, el.height);
    const covered = tiles.filter((t) => t.level === finest)
      .reduce((a, t) => a + clip(t.position.x, t.position.y, t.size.x, t.size.y), 0);
    if (!visible || covered >= 0.98 * visible) return magOf(finest);
    return magOf(Math.min(...tiles.map((t) => t.level)));
  }
  // the finest level OpenSeadragon loads at magnification mag: one whose pixels are at least
  // MIN_PIXEL_RATIO device pixels on screen (at 4.5X that is the 2.5X level, not 5X)
  function wantedMag(mag) {
    const item = viewer.world.getItemAt(0);
    if (!item || !fullMag || !mag) return null;
    const coarsest = fullMag / Math.pow(2, item.source.maxLevel);
    let m = fullMag;
    while (m > coarsest && m * MIN_PIXEL_RATIO > mag * (OpenSeadragon.pixelDensityRatio || 1) * 1.001) m /= 2;
    return m;
  }
  function onScreen(mag) {
    const shown = drawnMag(), want = wantedMag(mag), el = $("onscreen");
    const coarser = Boolean(shown && want && shown < want * 0.99);
    el.hidden = !coarser;
    if (coarser) el.textContent = `on screen: ${shown.toFixed(shown < 10 ? 1 : 0)}X pixels, enlarged — ` +
      `${want.toFixed(want < 10 ? 1 : 0)}X still loading`;
    document.body.dataset.onScreen = shown ? shown.toFixed(2) : "";
  }

  // -- side by side with the reference slide -----------------------------------------
  let refViewer = null, syncing = false;
  const ref = slide.reference && slide.reference.id ? slide.reference : null;
  let refInfo = null;
  if (ref) {
    const r = await fetch("/api/slides/" + encodeURIComponent(ref.id));
    if (r.ok) {
      refInfo = (await r.json()).slide; $("sync").hidden = false;
      $("sync").textContent = "Reference: " + ref.name + (ref.magnification ? ` (scanned ${ref.magnification})` : "");
    }
  }
  // the reference is a scan at its own magnification: above it, the browser enlarges it
  function refLabel(mag) {
    if (!refInfo || !mag) return;
    const scanned = refInfo.mpp.stored ? 10 / refInfo.mpp.stored : null;
    const el = $("refbadge");
    if (scanned && mag > scanned * 1.02) {
      el.textContent = `Reference: the ${scanned.toFixed(0)}X scan enlarged ${(mag / scanned).toFixed(1)}× by the browser — ` +
        `no ${mag.toFixed(0)}X scan exists`;
      el.className = "badge scanned enlarged";
    } else {
      el.textContent = `Reference: scanned ${scanned ? scanned.toFixed(0) + "X " : ""}pixels`;
      el.className = "badge scanned";
    }
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
      refViewer.addHandler("open", () => { syncRef(); refLabel(currentMag()); });
    }
    setTimeout(() => { viewer.viewport.resize && viewer.forceRedraw(); syncRef(); }, 50);
  }
  $("sync").addEventListener("click", toggleRef);

  viewer.addHandler("open", () => { update(); document.body.dataset.ready = "1"; });
  if (viewer.world.getItemCount() > 0) { update(); document.body.dataset.ready = "1"; }  // opened during the awaits above
  viewer.addHandler("animation", () => { update(); syncRef(); });
  viewer.addHandler("animation-finish", () => { update(); syncRef(); });
  viewer.addHandler("resize", () => { update(); syncRef(); });
  viewer.addHandler("update-viewport", () => onScreen(currentMag()));  // every redraw: tiles arrive without animation

  viewer.addHandler("canvas-key", (e) => {  // our keys, not OpenSeadragon's (r would rotate)
    if (/^[rbftm1-9]$/i.test(e.originalEvent.key)) { e.preventDefaultAction = true; }
  });
  document.addEventListener("keydown", (e) => {
    if (e.target && ["INPUT", "TEXTAREA"].includes(e.target.tagName)) return;
    const key = e.key.toLowerCase();
    if (key === "b") setMode(current && current.kind === "bicubic" ? lastModel : byKind("bicubic"));
    else if (key === "f") setMode(byKind("faithful"));
    else if (key === "t") setMode(byKind("realistic"));
    else if (key === "m" && current) setMode(modes[(modes.indexOf(current) + 1) % modes.length]);
    else if (key === "r") toggleRef();
    else if (/^[1-9]$/.test(key) && mags[Number(key) - 1]) zoomToMag(10 / mags[Number(key) - 1].mpp);
  });
  // -- label, macro and thumbnail kept by ingest ------------------------------------
  const assoc = Object.entries(slide.associated || {});
  if (assoc.length) {
    $("associated").hidden = false;
    for (const [name, url] of assoc) {
      const fig = document.createElement("figure"), img = document.createElement("img"), cap = document.createElement("figcaption");
      img.src = url; img.alt = name; cap.textContent = name;
      fig.append(cap, img);
      $("associated").querySelector("div").append(fig);
    }
  }
  window.msrRefViewer = () => refViewer;
  window.msrPhysicalRatio = () => (refInfo ? physicalWidth(slide) / physicalWidth(refInfo) : null);
  window.msrState = () => ({
    mode: current ? (current.kind === "bicubic" ? "bicubic" : "sr") : "sr", kind: current ? current.kind : null,
    modeKey: current ? current.mode : null, mag: currentMag(), onScreen: drawnMag(),
    badge: $("badge").hidden ? null : $("badge").textContent,
    badgeColor: getComputedStyle($("badge")).backgroundColor,
    reference: $("refpane").hidden ? null : $("refbadge").textContent,
  });
})();
