// v1motion dashboard: plain ES module, no build step. Protocol: docs/protocol.md.
const SCHEMA_VERSION = 2;
// Arrow length grows with the logarithm of speed and reaches a full cell at VMAX px/frame, so the
// ordinary range (0.5-8 px/frame) stays distinguishable instead of saturating at a few px/frame.
const V0 = 0.25;
const VMAX = 16;
const SCALE_SPEEDS = [0.5, 2, 8]; // the arrow-length legend
const FLOW_EMPTY_SPEED = 0.05; // px/frame: below this in every cell, optical flow found no motion
// The distribution panels summarise the motion map itself (each cell weighted by its confidence),
// so their peaks sit where the map and the dominant motion are: speed bins one octave wide, centred
// on these px/frame values (the end bins also take everything slower or faster), and 16 directions.
const SPEED_BIN_CENTRES = [0.25, 0.5, 1, 2, 4, 8, 16, 32];
// A cell counts in them as it does in the dominant motion (the engine's MOVING_FROM): its confidence
// times a ramp from 0 at 0.2 to 1 at 0.4. Drawn relative to the tallest bar, the faint cells of a
// still view (camera noise) otherwise filled both panels while the map showed nothing.
const MOVING_FROM = [0.2, 0.4];
const DIRECTION_BINS = 16;
const CHIP_REORDER_MS = 1000; // the most-active chips change order at most this often
const CHIP_REORDER_REDUCED_MS = 5000; // and under prefers-reduced-motion (chips that jump are motion)
const ACTIVITY_TAU_MS = 1000; // unit activity is averaged over about this long before ranking
const CAMERA_SIDE = 320; // the longer side of the frames the camera sends, in px
const SOURCE_KEYS_MS = 600; // a source picked with the keyboard opens once the keys stop this long
const REDUCED_MOTION_MS = 500; // under prefers-reduced-motion: readings change at most this often
const ALT_TEXT_MS = 1000; // the charts' text alternatives change at most this often
const SAY_HOLD_MS = 1000; // a change of the dominant motion is said once it has held this long
const SAY_EVERY_MS = 3000; // and at most this often
const STALE_MS = 2000; // no result this long: what is on screen is greyed and said to be old
const reducedMotion = window.matchMedia ? window.matchMedia("(prefers-reduced-motion: reduce)") : null;

// The size the camera's frames are sent at: its own aspect ratio, the longer side CAMERA_SIDE (a
// 16:9 camera squeezed into 320x240 read a 45-degree motion as 39.5 degrees).
export function cameraSize(videoWidth, videoHeight) {
  if (!(videoWidth > 0 && videoHeight > 0)) return { width: CAMERA_SIDE, height: 240 };
  const even = (v) => Math.max(64, 2 * Math.round(v / 2));
  return videoWidth >= videoHeight
    ? { width: CAMERA_SIDE, height: even((CAMERA_SIDE * videoHeight) / videoWidth) }
    : { width: even((CAMERA_SIDE * videoWidth) / videoHeight), height: CAMERA_SIDE };
}
const $ = (id) => document.getElementById(id);

// ---- addresses: everything relative to the page, so the app works under a path prefix ------------
const BASE = new URL(".", document.baseURI); // the server's <base> under a proxy's prefix, else the address
export function apiUrl(path) { return new URL(path, BASE).toString(); }
export function wsUrl(path) {
  const u = new URL(path, BASE);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  return u.toString();
}

const state = {
  token: readToken(),
  streams: [],
  mode: "stream", // "stream" | "camera"
  stream: null,
  stale: false, // no result for STALE_MS: the readings on screen are old
  behind: null, // the stream's status while it analyses under half its source's frames
  ws: null,
  flow: false,
  last: null, // latest result message
  image: null, // ImageBitmap of the frame the result belongs to
  pendingPreview: null,
  results: 0,
  arrivals: [], // arrival times of recent results, for fps
  fps: 0,
  latency: null,
  dropsServer: 0,
  dropsClient: 0,
  units: null,
  unitId: null,
  // Most active units: activity averaged over ~1 s (the per-frame top 10 changes every frame), and
  // the chips showing it.
  chips: { activity: new Map(), lastAt: null, els: new Map(), order: "", reorderedAt: 0, held: false, latest: [] },
  camera: null, // {stream, canvas, inFlight, sentAt}
  reconnectTimer: null,
  unopened: 0, // live sockets in a row that closed before they opened
  paused: false, // the readings on screen held still (Pause); results keep arriving
  renderedAt: 0,
  statsAt: 0,
  altAt: 0,
  said: { what: null, candidate: null, since: 0, at: -Infinity }, // the dominant motion, announced
  heardAt: null, // when the live socket last said anything (watchSilence)
  link: null, // a stream socket's pace and what the page asked for of it (slowLink, openStream)
};

// A slow link (a phone on a weak network): results sent faster than the link carries them wait in
// its buffers and arrive seconds old while the page says "live" (measured: 7.5-10 s behind at 400
// kbit/s, with a latency of 9-25 ms shown). The page notices it by each result's age against the
// youngest it has seen (the clocks' offset cancels), and asks the server for fewer results, then
// for no preview frames (docs/protocol.md, options); once caught up for a while, for all again.
const LINK_BEHIND_MS = 1500;
const LINK_CAUGHT_UP_MS = 300;
const LINK_STEP_MS = 3000; // behind (or caught up) this long before the next step
const LINK_RESTORE_MS = 20000; // caught up this long: a first step back up (doubled each time one fails)
const LINK_PROBE_MS = 5000; // a step up caught up this long held: the next one

// Back up a step at a time (the picture, then twice the results each step up to every result), and a
// step up the link cannot carry is undone at once: restored in one go to every result and picture,
// a 400 kbit/s link showed results 10 s old before the page had stepped down again. Ages are read
// on the page's monotonic clock: a jump of the computer's clock moves no result's age.
function slowLink(m, now) {
  const link = state.link;
  if (!link || !state.ws || typeof m.capture_ts !== "number") return;
  const skew = performance.timeOrigin + now - m.capture_ts;
  link.minSkew = Math.min(link.minSkew, skew);
  const behind = skew - link.minSkew;
  if (behind > LINK_BEHIND_MS) {
    link.caughtUpSince = null;
    if (link.probeFrom) { // the step up did not hold: back to where the link kept up
      ({ level: link.level, rate: link.rate } = link.probeFrom);
      link.probeFrom = null;
      link.restoreMs = Math.min(300000, link.restoreMs * 2);
      link.behindSince = now + LINK_STEP_MS; // what it sent waits in the buffers: longer to drain
      link.behindAtStep = behind;
      sendLinkOptions();
      return;
    }
    if (link.behindSince == null) { link.behindSince = now; link.behindAtStep = 0; }
    // a step down takes a while to drain what waits in the buffers: the next only if it does not
    if (link.level < 2 && now - link.behindSince > LINK_STEP_MS && behind > 0.8 * link.behindAtStep) {
      if (link.level === 0) link.rate = Math.max(1, Math.round(Math.max(state.fps, 1) * 0.6));
      link.level += 1;
      link.behindSince = now;
      link.behindAtStep = behind;
      sendLinkOptions();
    }
  } else if (behind < LINK_CAUGHT_UP_MS && (link.level > 0 || link.probeFrom)) {
    link.behindSince = null;
    link.caughtUpSince ??= now;
    if (now - link.caughtUpSince > (link.probeFrom ? LINK_PROBE_MS : link.restoreMs)) {
      link.caughtUpSince = null;
      link.probeFrom = link.level > 0 ? { level: link.level, rate: link.rate } : null;
      const streamFps = m.timing && m.timing.fps;
      if (link.level === 2) link.level = 1;
      else if (link.level === 1 && streamFps && link.rate * 2 < 0.9 * streamFps) link.rate *= 2;
      else if (link.level === 1) link.level = 0;
      if (link.probeFrom) sendLinkOptions(); // else every result, and it held
    }
  } else {
    link.behindSince = null;
  }
}

function sendLinkOptions() {
  const { level, rate } = state.link;
  const options = level === 0 ? { max_fps: null, preview: true } : { max_fps: rate, preview: level < 2 };
  try { state.ws.send(JSON.stringify({ type: "options", ...options })); } catch (e) { /* closing */ }
  if (level === 2) { state.image = null; scheduleRender(); }
}

// The page asked the server for no preview frames (a slow link's last step).
function noPicture() { return Boolean(state.link && state.link.level === 2); }

function linkNote() {
  const link = state.link;
  if (!link || !link.level) return "";
  return ` · slow link: ${link.rate}/s${link.level === 2 ? ", no picture" : ""}`;
}

function readToken() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("v1motion-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("v1motion-token");
}

function authHeaders() { return state.token ? { Authorization: `Bearer ${state.token}` } : {}; }
function subprotocols() {
  const p = ["v1motion.v1"];
  if (state.token) p.push(`v1motion.token.${state.token}`);
  return p;
}

async function api(path) {
  // a link that died without closing leaves a fetch waiting for ever (measured: 19 s and on)
  const r = await fetch(apiUrl(path), { headers: authHeaders(), signal: AbortSignal.timeout(5000) });
  if (r.status === 401) { askToken(); throw new Error("unauthorized"); }
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

function askToken() {
  const refused = Boolean(state.token); // one was sent: it is wrong, not missing
  $("token-msg").textContent = refused
    ? "The server refused this access token: enter the right one."
    : "This service needs an access token.";
  if (refused) $("token-input").value = "";
  // a refusal is said at once (focus alone did not make screen readers read the description)
  if (refused) $("token-msg").setAttribute("role", "alert");
  else $("token-msg").removeAttribute("role");
  $("token-form").hidden = false;
  $("token-input").focus(); // its description (the message above) is read with it
  setConn(refused ? "token refused" : "token needed", "warn");
}

// A message over the page, read out by screen readers (an error at once: role alert).
function banner(text, kind = "warn") {
  const b = $("banner");
  if (!text) { b.hidden = true; return; }
  if (!b.hidden && b.textContent === text && b.dataset.kind === kind) return; // said already
  b.dataset.kind = kind;
  b.setAttribute("role", kind === "error" ? "alert" : "status");
  b.className = `banner ${kind === "error" ? "error" : ""}`;
  b.hidden = false; // shown before its text changes, so that the change is announced
  b.textContent = text;
}

function setConn(text, kind) {
  const c = $("conn");
  if (c.textContent !== text) c.textContent = text;  // a status each second re-says the same
  if (c.className !== `pill pill-${kind}`) c.className = `pill pill-${kind}`;  // each result too
}

// ---- colours and drawing helpers ------------------------------------------------------------------
function hue(deg, alpha = 1, light = 58) { return `hsla(${deg}, 92%, ${light}%, ${alpha})`; }

function fitCanvas(canvas, w, h) {
  const scale = Math.max(1, Math.min(3, Math.round(960 / w)));
  if (canvas.width !== w * scale || canvas.height !== h * scale) {
    canvas.width = w * scale;
    canvas.height = h * scale;
  }
  return scale;
}

// Fraction of a cell an arrow covers at speed v (px/frame): log-scaled, 1 at VMAX and above.
export function arrowFraction(v) {
  if (!(v > 0)) return 0;
  return Math.min(1, Math.log2(1 + v / V0) / Math.log2(1 + VMAX / V0));
}

// An arrow centred on (x, y), in the context's stroke and fill style, over a dark halo so that it
// stays visible where the picture under it is as light as its colour (a light stripe under a
// yellow-green arrow: 1.3:1), and its direction is read from its shape where colours look alike
// (red-green colour blindness).
// haloAlpha: as faint as the arrow (a fading arrow with a strong halo would stand out).
function arrow(ctx, x, y, dx, dy, head, haloAlpha = 0.85) {
  const len = Math.hypot(dx, dy);
  if (len < 0.5) return;
  const ux = dx / len, uy = dy / len;
  const tx = x + dx / 2, ty = y + dy / 2;
  const sx = x - dx / 2, sy = y - dy / 2;
  const h = Math.min(head, len * 0.6);
  const shaft = () => { ctx.beginPath(); ctx.moveTo(sx, sy); ctx.lineTo(tx, ty); };
  const tip = () => {
    ctx.beginPath();
    ctx.moveTo(tx, ty);
    ctx.lineTo(tx - ux * h - uy * h * 0.55, ty - uy * h + ux * h * 0.55);
    ctx.lineTo(tx - ux * h + uy * h * 0.55, ty - uy * h - ux * h * 0.55);
    ctx.closePath();
  };
  const colour = ctx.strokeStyle, width = ctx.lineWidth;
  ctx.strokeStyle = `rgba(5, 8, 11, ${haloAlpha})`;
  ctx.lineWidth = width + 2;
  shaft();
  ctx.stroke();
  tip();
  ctx.stroke();
  ctx.strokeStyle = colour;
  ctx.lineWidth = width;
  shaft();
  ctx.stroke();
  tip();
  ctx.fill();
}

// Draws the frame, a colour-wheel tint per cell and an arrow per cell. grid: {rows, cols, cell_px,
// direction_deg, speed_px_per_frame, confidence?}. Directions: 0 = right, 90 = up (screen y points down).
// A model cell is drawn from confidence MOVING_FROM[0], its arrow fading in up to MOVING_FROM[1] (as it
// counts in the panels and the dominant motion): faint cells of a still view drew arrows otherwise.
// Returns the drawn cell's side in CSS pixels (for the arrow-length legend), or null.
function drawMap(canvas, image, frameW, frameH, grid) {
  const ctx = canvas.getContext("2d");
  const s = fitCanvas(canvas, frameW, frameH);
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#05080b";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (image) {
    ctx.globalAlpha = 0.75;
    ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = 1;
  }
  if (!grid) return null;
  const cell = grid.cell_px * s;
  const offX = (canvas.width - grid.cols * cell) / 2, offY = (canvas.height - grid.rows * cell) / 2;
  ctx.lineCap = "round";
  ctx.lineWidth = Math.max(2, cell / 9);
  for (let i = 0; i < grid.rows; i++) {
    for (let j = 0; j < grid.cols; j++) {
      const d = grid.direction_deg[i][j], v = grid.speed_px_per_frame[i][j];
      const c = grid.confidence ? grid.confidence[i][j] : Math.min(1, v / 0.5);
      // the model's cells fade in as they count as moving (MOVING_FROM); flow cells from 0.05
      const shown = grid.confidence ? movingRamp(c) : 1;
      if (c < 0.05 || v < 0.05 || !(shown > 0)) continue;
      const x = offX + (j + 0.5) * cell, y = offY + (i + 0.5) * cell;
      ctx.fillStyle = hue(d, 0.28 * c);
      ctx.fillRect(x - cell / 2, y - cell / 2, cell, cell);
      const len = cell * 0.95 * arrowFraction(v);
      const rad = (d * Math.PI) / 180;
      const a = (0.35 + 0.65 * c) * shown;
      ctx.strokeStyle = hue(d, a, 62);
      ctx.fillStyle = ctx.strokeStyle;
      arrow(ctx, x, y, Math.cos(rad) * len, -Math.sin(rad) * len, cell * 0.32, 0.85 * a);
    }
  }
  return canvas.clientWidth ? (cell * canvas.clientWidth) / canvas.width : null;
}

// One map cell per speed in SCALE_SPEEDS, with the arrow the map draws at that speed, at the map's
// on-screen cell size (within 16-56 px).
let scaleCell = null;
function drawArrowScale(canvas, cellCss) {
  const c = Math.round(Math.max(16, Math.min(56, cellCss || 32)));
  if (c === scaleCell) return;
  scaleCell = c;
  const dpr = window.devicePixelRatio || 1, w = 240, h = c + 20;
  canvas.width = w * dpr;
  canvas.height = h * dpr;
  canvas.style.height = `${h}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const slot = w / SCALE_SPEEDS.length, size = c, y = 2 + size / 2, labelY = size + 16;
  ctx.font = "11px system-ui";
  ctx.textAlign = "center";
  ctx.lineCap = "round";
  SCALE_SPEEDS.forEach((v, k) => {
    const x = slot * (k + 0.5);
    ctx.strokeStyle = "#2a3644";
    ctx.lineWidth = 1;
    ctx.strokeRect(x - size / 2, y - size / 2, size, size);
    ctx.strokeStyle = "#e6edf3";
    ctx.fillStyle = "#e6edf3";
    ctx.lineWidth = Math.max(2, size / 9);
    arrow(ctx, x, y, size * 0.95 * arrowFraction(v), 0, size * 0.32);
    ctx.fillStyle = "#8b9aab";
    ctx.fillText(`${v}`, x, labelY);
  });
}

function drawWheel(canvas) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, r = w / 2 - 4, c = w / 2;
  for (let a = 0; a < 360; a += 1) {
    ctx.beginPath();
    ctx.moveTo(c, c);
    ctx.arc(c, c, r, (-(a + 1) * Math.PI) / 180, (-a * Math.PI) / 180 + 0.01);
    ctx.closePath();
    ctx.fillStyle = hue(a);
    ctx.fill();
  }
  ctx.fillStyle = "#131a22";
  ctx.beginPath();
  ctx.arc(c, c, r * 0.45, 0, 2 * Math.PI);
  ctx.fill();
  ctx.fillStyle = "#e6edf3";
  ctx.font = "bold 15px system-ui";
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.fillText("dir", c, c);
}

function polarAxes(ctx, c, r) {
  ctx.strokeStyle = "#2a3644";
  ctx.lineWidth = 1;
  for (const f of [0.33, 0.66, 1]) {
    ctx.beginPath();
    ctx.arc(c, c, r * f, 0, 2 * Math.PI);
    ctx.stroke();
  }
  for (let a = 0; a < 360; a += 45) {
    const rad = (a * Math.PI) / 180;
    ctx.beginPath();
    ctx.moveTo(c, c);
    ctx.lineTo(c + Math.cos(rad) * r, c - Math.sin(rad) * r);
    ctx.stroke();
  }
  ctx.fillStyle = "#8b9aab";
  ctx.font = "12px system-ui";
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  const lab = [["0°", 0], ["90°", 90], ["180°", 180], ["270°", 270]];
  for (const [t, a] of lab) {
    const rad = (a * Math.PI) / 180, half = ctx.measureText(t).width / 2;
    const x = Math.min(Math.max(c + Math.cos(rad) * (r + 14), half + 1), 2 * c - half - 1);
    ctx.fillText(t, x, c - Math.sin(rad) * (r + 12));
  }
}

// Rose of the population's direction histogram: one petal per bin, coloured by its direction.
function drawPolar(canvas, values, dominantDeg) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, c = w / 2, r = c - 26;
  ctx.clearRect(0, 0, w, w);
  polarAxes(ctx, c, r);
  if (!values || !values.length) return;
  const n = values.length, max = Math.max(...values, 1e-9), half = Math.PI / n;
  for (let k = 0; k < n; k++) {
    const a = (2 * Math.PI * k) / n, len = r * Math.sqrt(values[k] / max);
    ctx.beginPath();
    ctx.moveTo(c, c);
    ctx.arc(c, c, len, -(a + half * 0.9), -(a - half * 0.9));
    ctx.closePath();
    ctx.fillStyle = hue((360 * k) / n, 0.9, 66); // blue petals at 0.75 / 58 %: 1.9:1 on the card
    ctx.fill();
  }
  if (dominantDeg != null) {
    const rad = (dominantDeg * Math.PI) / 180;
    ctx.strokeStyle = "#ffffff";
    ctx.fillStyle = "#ffffff";
    ctx.lineWidth = 2.5;
    arrow(ctx, c + (Math.cos(rad) * r) / 2, c - (Math.sin(rad) * r) / 2, Math.cos(rad) * r, -Math.sin(rad) * r, 10);
  }
}

// How far a cell of confidence `c` is shown moving: 0 below MOVING_FROM[0], 1 from MOVING_FROM[1].
function movingRamp(c) {
  const [lo, hi] = MOVING_FROM;
  return Math.min(Math.max((c - lo) / (hi - lo), 0), 1);
}

// How much a cell of confidence `c` counts as moving in the panels (and the dominant motion).
export function movingWeight(c) {
  return c * movingRamp(c);
}

// The distribution panels draw a frame's cells from one cell's worth of motion shown (movingWeight
// summed): one faint cell, normalised to the panel's height, filled a whole petal and bar on a still
// camera view, every other frame, while the dominant motion said "no clear motion".
export const PANELS_FROM = 1.0;
export function panelsShow(hists) { return hists.speed.reduce((a, b) => a + b, 0) >= PANELS_FROM; }

// Histograms of the map's cells, each counted by movingWeight of its confidence: `speed[k]` sums the
// cells whose speed rounds to SPEED_BIN_CENTRES[k] on a log2 scale, `direction[k]` those within
// 360/16 degrees of k * 360/16. Cells below MOVING_FROM[0] (nothing shown moving) count nowhere.
export function cellHistograms(motion) {
  const speed = new Array(SPEED_BIN_CENTRES.length).fill(0);
  const direction = new Array(DIRECTION_BINS).fill(0);
  const last = SPEED_BIN_CENTRES.length - 1;
  motion.confidence.forEach((row, i) => row.forEach((c, j) => {
    const v = motion.speed_px_per_frame[i][j], d = motion.direction_deg[i][j];
    const w = movingWeight(c);
    if (!(w > 0) || !Number.isFinite(v) || !Number.isFinite(d)) return;
    const k = v > 0 ? Math.round(Math.log2(v / SPEED_BIN_CENTRES[0])) : 0;
    speed[Math.min(Math.max(k, 0), last)] += w;
    direction[((Math.round((d * DIRECTION_BINS) / 360) % DIRECTION_BINS) + DIRECTION_BINS) % DIRECTION_BINS] += w;
  }));
  return { speed, direction };
}

// Where a speed falls on the bar chart's axis, in bins (0 = the centre of the first bar).
export function speedBinPosition(v) {
  return Math.log2(v / SPEED_BIN_CENTRES[0]);
}

// Whole degrees in [0, 360): 359.6 reads 0, not 360.
export function fmtDeg(d) { return ((Math.round(d) % 360) + 360) % 360; }
// A unit's preferred direction, one of 16 measured 22.5 degrees apart: 67.5 was shown as 68.
export function fmtUnitDeg(d) {
  const a = ((d % 360) + 360) % 360;
  return Math.abs(a - Math.round(a)) < 0.05 ? String(fmtDeg(a)) : a.toFixed(1);
}
function fmtSpeed(v) { return v >= 1 ? `${+v.toFixed(1)}` : `${+v.toFixed(2)}`; }

// Bars; `marker` (a position in bins, as speedBinPosition) draws the source's true value as a tick.
function drawBars(canvas, values, labels, highlight, marker = null) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 22;
  ctx.clearRect(0, 0, w, h);
  if (!values || !values.length) return;
  const n = values.length, max = Math.max(...values, 1e-9), bw = (w - 8) / n;
  const top = marker != null ? 18 : 6; // room for the marker's label
  ctx.font = "11px system-ui";
  ctx.textAlign = "center";
  for (let k = 0; k < n; k++) {
    const bh = ((h - pad - top) * values[k]) / max;
    const x = 4 + k * bw;
    ctx.fillStyle = k === highlight ? "#58a6ff" : "#2f6fb3";
    ctx.beginPath();
    ctx.roundRect(x + 3, h - pad - bh, bw - 6, Math.max(bh, 1), 3);
    ctx.fill();
    ctx.fillStyle = "#8b9aab";
    ctx.fillText(labels[k], x + bw / 2, h - 7);
  }
  if (marker != null && Number.isFinite(marker)) {
    const x = 4 + (Math.min(Math.max(marker, -0.5), n - 0.5) + 0.5) * bw;
    ctx.strokeStyle = "#e6edf3";
    ctx.lineWidth = 2;
    ctx.setLineDash([4, 3]);
    ctx.beginPath();
    ctx.moveTo(x, 16);
    ctx.lineTo(x, h - pad);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = "#e6edf3";
    ctx.textAlign = x > w - 30 ? "right" : x < 30 ? "left" : "center";
    ctx.fillText("truth", x, 11);
  }
}

function drawDominantArrow(canvas, deg, conf, truth) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, c = w / 2;
  ctx.clearRect(0, 0, w, w);
  ctx.strokeStyle = "#2a3644";
  ctx.lineWidth = 2;
  ctx.beginPath();
  ctx.arc(c, c, c - 4, 0, 2 * Math.PI);
  ctx.stroke();
  if (truth) { // the known velocity of a synthetic source: a tick on the rim
    const t = (truth.direction_deg * Math.PI) / 180;
    ctx.strokeStyle = "#e6edf3";
    ctx.lineWidth = 4;
    ctx.beginPath();
    ctx.moveTo(c + Math.cos(t) * (c - 14), c - Math.sin(t) * (c - 14));
    ctx.lineTo(c + Math.cos(t) * (c - 1), c - Math.sin(t) * (c - 1));
    ctx.stroke();
  }
  if (deg == null) return;
  const rad = (deg * Math.PI) / 180, len = (c - 14) * 2;
  // lighter than the map's hues: blue at 62 % was 2.9:1 on the card (3:1 for a graphic)
  ctx.strokeStyle = hue(deg, 0.3 + 0.7 * conf, 70);
  ctx.fillStyle = ctx.strokeStyle;
  ctx.lineWidth = 7;
  ctx.lineCap = "round";
  arrow(ctx, c, c, Math.cos(rad) * len * 0.8, -Math.sin(rad) * len * 0.8, 22);
}

function drawSpeedTuning(canvas, speeds, values, pref) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, l = 34, b = 28, t = 10, r = 12;
  ctx.clearRect(0, 0, w, h);
  const lx = speeds.map((s) => Math.log2(s));
  const x0 = Math.min(...lx), x1 = Math.max(...lx), max = Math.max(...values, 1e-9);
  const X = (v) => l + ((v - x0) / Math.max(x1 - x0, 1e-9)) * (w - l - r);
  const Y = (v) => h - b - (v / max) * (h - b - t);
  ctx.strokeStyle = "#2a3644";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(l, t);
  ctx.lineTo(l, h - b);
  ctx.lineTo(w - r, h - b);
  ctx.stroke();
  ctx.fillStyle = "#8b9aab";
  ctx.font = "11px system-ui";
  ctx.textAlign = "center";
  speeds.forEach((s, k) => ctx.fillText(fmtSpeed(s), X(lx[k]), h - b + 15));
  ctx.fillText("px/frame (log scale)", (l + w - r) / 2, h - 2);
  ctx.save();
  ctx.translate(11, (t + h - b) / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText("response", 0, 0);
  ctx.restore();
  ctx.textAlign = "right";
  ctx.fillText(max.toFixed(2), l - 3, t + 4);
  ctx.fillText("0", l - 3, h - b);
  ctx.strokeStyle = "#58a6ff";
  ctx.lineWidth = 2.5;
  ctx.beginPath();
  values.forEach((v, k) => (k ? ctx.lineTo(X(lx[k]), Y(v)) : ctx.moveTo(X(lx[k]), Y(v))));
  ctx.stroke();
  ctx.fillStyle = "#58a6ff";
  values.forEach((v, k) => { ctx.beginPath(); ctx.arc(X(lx[k]), Y(v), 3.5, 0, 2 * Math.PI); ctx.fill(); });
  if (pref) {
    const px = X(Math.log2(pref));
    ctx.strokeStyle = "rgba(255,255,255,.35)";
    ctx.setLineDash([4, 4]);
    ctx.beginPath();
    ctx.moveTo(px, t);
    ctx.lineTo(px, h - b);
    ctx.stroke();
    ctx.setLineDash([]);
  }
}

function drawUnitPolar(canvas, dirsDeg, values, prefDeg) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, c = w / 2, r = c - 26;
  ctx.clearRect(0, 0, w, w);
  polarAxes(ctx, c, r);
  const max = Math.max(...values, 1e-9);
  ctx.beginPath();
  values.forEach((v, k) => {
    const rad = (dirsDeg[k] * Math.PI) / 180, len = (r * v) / max;
    const x = c + Math.cos(rad) * len, y = c - Math.sin(rad) * len;
    k ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
  });
  ctx.closePath();
  ctx.fillStyle = hue(prefDeg, 0.25);
  ctx.strokeStyle = hue(prefDeg, 1, 62);
  ctx.lineWidth = 2.5;
  ctx.fill();
  ctx.stroke();
}

// ---- rendering ------------------------------------------------------------------------------------
let frameRequested = false;
function scheduleRender() {
  if (frameRequested || state.paused) return;
  frameRequested = true;
  // Under prefers-reduced-motion the readings change at most twice a second, not with every result.
  const wait = reducedMotion && reducedMotion.matches ? state.renderedAt + REDUCED_MOTION_MS - performance.now() : 0;
  const draw = () => requestAnimationFrame(() => { frameRequested = false; if (!state.paused) render(); });
  if (wait > 0) setTimeout(draw, wait);
  else draw();
}

function setPaused(paused) {
  state.paused = paused;
  const btn = $("pause-btn");
  // its name says what a press does ("Resume"), so no pressed state beside it: "Resume, pressed"
  // left a screen-reader user guessing which one held
  btn.classList.toggle("held", paused);
  $("pause-label").textContent = paused ? "Resume" : "Pause";
  // Your camera sends nothing while paused (its frames would be analysed for nobody); on Resume its
  // next frame counts as a new start, as after a hidden page.
  const cam = state.camera;
  if (cam && cam.ready) cameraLive();
  else if (state.mode === "stream" && state.stream && state.ws && state.ws.readyState === WebSocket.OPEN) {
    streamConn(state.stream);
  }
  if (!paused) {
    updateStats();
    scheduleRender();
    if (cam) sendCameraFrame();
  }
}

const COMPASS = ["right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right"];
export function compass(deg) { return COMPASS[Math.round(fmtDeg(deg) / 45) % 8]; }

// What the charts show, in words, for screen readers (at most once a second: a name that changes
// with every result is read out again and again).
function describeCharts(m, confident, hists, moving, labels) {
  const now = performance.now();
  if (now - state.altAt < ALT_TEXT_MS) return;
  state.altAt = now;
  const mo = m.motion;
  const dir = mo.global_direction_deg, speed = mo.global_speed_px_per_frame;
  $("map").setAttribute("aria-label", confident
    ? `Model motion map: moving ${compass(dir)} (${fmtDeg(dir)}°) at ${fmtSpeed(speed)} px/frame, confidence ${mo.global_confidence.toFixed(2)}`
    : "Model motion map: no clear motion");
  const top = (values) => values.indexOf(Math.max(...values));
  const d = top(hists.direction), deg = (d * 360) / DIRECTION_BINS;
  $("polar").setAttribute("aria-label", moving
    ? `Direction distribution of the map's cells: most move ${compass(deg)} (${fmtDeg(deg)}°)`
    : "Direction distribution: no clear motion");
  if (state.flow) $("flow").setAttribute("aria-label", describeFlow(m.flow));
  const truth = m.truth ? `; true speed ${fmtSpeed(m.truth.speed_px_per_frame)} px/frame` : "";
  $("speed-hist").setAttribute("aria-label", moving
    ? `Speed distribution of the map's cells: most at ${labels[top(hists.speed)]} px/frame${truth}`
    : `Speed distribution: no clear motion${truth}`);
}

function render() {
  const m = state.last;
  if (!m) return;
  state.renderedAt = performance.now();
  $("waiting").hidden = true;
  const cellCss = drawMap($("map"), state.image, m.width, m.height, m.motion);
  if (cellCss) drawArrowScale($("arrow-scale"), cellCss);
  if (state.flow) {
    drawMap($("flow"), state.image, m.width, m.height, m.flow);
    const empty = $("flow-empty");
    if (!m.flow) {
      empty.textContent = "waiting for optical flow…";
      empty.hidden = false;
    } else {
      empty.textContent = "no motion found by optical flow";
      empty.hidden = !flowIsEmpty(m.flow);
    }
  }
  const mo = m.motion;
  const dir = mo.global_direction_deg, speed = mo.global_speed_px_per_frame, conf = mo.global_confidence;
  const dom = $("dominant");
  const confident = conf > 0.05;
  dom.dataset.directionDeg = dir;
  dom.dataset.speed = speed;
  dom.dataset.confidence = conf;
  dom.dataset.results = state.results;
  $("dom-dir").textContent = confident ? `${fmtDeg(dir)}°` : "–";
  $("dom-speed").textContent = confident ? `${fmtSpeed(speed)} px/frame` : "no clear motion";
  $("dom-conf").textContent = conf.toFixed(2);
  $("dom-conf-bar").style.width = `${Math.round(100 * conf)}%`;
  drawDominantArrow($("dominant-arrow"), confident ? dir : null, conf, m.truth);
  const truth = $("truth");
  truth.hidden = !m.truth;
  if (m.truth) {
    truth.replaceChildren("truth: ");
    const b = document.createElement("b");
    b.textContent = `${fmtDeg(m.truth.direction_deg)}° · ${fmtSpeed(m.truth.speed_px_per_frame)} px/frame`;
    truth.append(b, ` (${m.truth.kind}; the white tick on the dial)`);
  }
  const hists = cellHistograms(mo);
  const moving = panelsShow(hists);
  $("polar-empty").hidden = moving;
  $("speed-hist-empty").hidden = moving;
  drawPolar($("polar"), moving ? hists.direction : null, confident ? dir : null);
  const last = SPEED_BIN_CENTRES.length - 1; // the end bins take everything slower or faster
  const labels = SPEED_BIN_CENTRES.map((v, k) =>
    k === last ? `≥${fmtSpeed(v)}` : k === 0 ? `≤${fmtSpeed(v)}` : fmtSpeed(v));
  const atDominant = confident && speed > 0 ? Math.min(Math.max(Math.round(speedBinPosition(speed)), 0), last) : -1;
  drawBars($("speed-hist"), moving ? hists.speed : null, labels, atDominant,
    m.truth ? speedBinPosition(m.truth.speed_px_per_frame) : null);
  describeCharts(m, confident, hists, moving, labels);
  sayDominant(confident ? compass(dir) : null, speed);
  renderTopUnits(topActivity());
}

// A screen reader reads the readings only when asked and is not told the names of images that
// change: a blind user never heard the dominant motion turn. Its compass direction (or "no clear
// motion") is said in a polite live region once a change has held for SAY_HOLD_MS, at most every
// SAY_EVERY_MS: not the 30 readings a second.
function sayDominant(where, speed) {
  const said = state.said, now = performance.now();
  if (where !== said.candidate) { said.candidate = where; said.since = now; }
  if (where === said.what || now - said.since < SAY_HOLD_MS || now - said.at < SAY_EVERY_MS) return;
  said.what = where;
  said.at = now;
  $("say").textContent = where ? `Moving ${where} at ${fmtSpeed(speed)} px/frame` : "No clear motion";
}

// Exponential average of each unit's activity over ACTIVITY_TAU_MS; units that fade out are dropped.
function updateActivity(top, now) {
  const chips = state.chips;
  const dt = chips.lastAt == null ? ACTIVITY_TAU_MS : Math.max(0, now - chips.lastAt);
  chips.lastAt = now;
  const a = 1 - Math.exp(-dt / ACTIVITY_TAU_MS);
  for (const [id, v] of chips.activity) {
    if (v * (1 - a) < 1e-3) chips.activity.delete(id);
    else chips.activity.set(id, v * (1 - a));
  }
  for (const [id, x] of top) chips.activity.set(id, (chips.activity.get(id) || 0) + a * x);
}

function topActivity(n = 10) {
  return [...state.chips.activity].sort((p, q) => q[1] - p[1]).slice(0, n);
}

// The flow map in words, to compare with the model's: the mean flow vector of its moving cells.
export function describeFlow(flow) {
  if (!flow) return "DIS optical flow map: waiting for optical flow";
  let x = 0, y = 0, n = 0;
  flow.speed_px_per_frame.forEach((row, i) => row.forEach((v, j) => {
    if (v < FLOW_EMPTY_SPEED) return;
    const rad = (flow.direction_deg[i][j] * Math.PI) / 180;
    x += v * Math.cos(rad);
    y += v * Math.sin(rad);
    n += 1;
  }));
  if (!n) return "DIS optical flow map: no motion found";
  const deg = (Math.atan2(y, x) * 180) / Math.PI;
  return `DIS optical flow map: moving ${compass(deg)} (${fmtDeg(deg)}°) at ${fmtSpeed(Math.hypot(x, y) / n)} px/frame`;
}

export function flowIsEmpty(flow) {
  return !flow.speed_px_per_frame.some((row) => row.some((v) => v >= FLOW_EMPTY_SPEED));
}

// The most active units as chips that stay put: values change in place on every result, the set and
// its order at most once a second, and not at all while the pointer (or keyboard focus) is on them,
// so a chip can always be clicked. A chip whose unit dropped out meanwhile is dimmed.
function renderTopUnits(top) {
  const chips = state.chips;
  chips.latest = top;
  const activity = chips.activity; // every unit still active, not only the top ten
  for (const [id, el] of chips.els) {
    const a = activity.get(id);
    setChipActivity(el, id, a);
    el.classList.toggle("stale", a == null);
  }
  const order = top.map((u) => u[0]).join(",");
  const now = performance.now();
  const every = reducedMotion && reducedMotion.matches ? CHIP_REORDER_REDUCED_MS : CHIP_REORDER_MS;
  if (chips.held || order === chips.order || now - chips.reorderedAt < every) return;
  chips.order = order;
  chips.reorderedAt = now;
  const box = $("top-units");
  const keep = new Map();
  for (const [id] of top) keep.set(id, chips.els.get(id) || makeChip(id));
  for (const [id, el] of chips.els) if (!keep.has(id)) el.remove();
  chips.els = keep;
  for (const [id, el] of keep) {
    setChipActivity(el, id, activity.get(id));
    el.classList.remove("stale");
    box.append(el); // moves an existing chip, so its listeners and focus survive
  }
  $("top-units-empty").hidden = top.length > 0;
}

// The number changes with every result: shown, not read out (the chip's name stays the same).
function setChipActivity(el, id, a) {
  el.querySelector("small").textContent = a == null ? "–" : fmtActivity(a);
}

function fmtActivity(a) { return a >= 100 ? a.toFixed(0) : a >= 10 ? a.toFixed(1) : a.toFixed(2); }

// A small arrow pointing deg (0 = right, 90 = up), in the text's colour.
function directionGlyph(deg) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", "-6 -6 12 12");
  svg.setAttribute("class", "glyph");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(NS, "path");
  path.setAttribute("d", "M-4.5 0H4M1 -3.2L4.3 0L1 3.2");
  path.setAttribute("transform", `rotate(${-deg})`);
  svg.append(path);
  return svg;
}

function makeChip(id) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = `chip${id === state.unitId ? " selected" : ""}`;
  b.dataset.unit = id;
  const info = state.units && state.units.byId.get(id);
  const dot = document.createElement("i");
  dot.style.background = info ? hue(info.preferred_direction_deg) : "#8b9aab";
  const small = document.createElement("small");
  small.setAttribute("aria-hidden", "true");
  b.append(dot);
  // the preferred direction by shape too: to red-green colour-blind eyes units preferring 225°
  // and 270° had the same blue dot
  if (info) b.append(directionGlyph(info.preferred_direction_deg));
  b.append(`#${id}`, small);
  b.setAttribute("aria-pressed", String(id === state.unitId));
  b.setAttribute("aria-label", info
    ? `unit ${id}, prefers ${compass(info.preferred_direction_deg)} (${fmtUnitDeg(info.preferred_direction_deg)}°) at ${fmtSpeed(info.preferred_speed)} px/frame`
    : `unit ${id}`);
  if (info) {
    b.title = `prefers ${fmtUnitDeg(info.preferred_direction_deg)}° at ${fmtSpeed(info.preferred_speed)} px/frame` +
      (info.degenerate ? ` · ${info.degenerateWhy}` : "") + "; activity: its code summed over the frame";
  }
  b.addEventListener("click", () => {
    selectUnit(id);
    // in one column (a phone) the unit browser's top, which says the unit, is a screen or more
    // away: bring it into view
    const card = document.querySelector(".card.units");
    const box = card.getBoundingClientRect();
    if (box.top < 0 || box.top > innerHeight - 120) {
      const smooth = !(reducedMotion && reducedMotion.matches);
      card.scrollIntoView({ block: "start", behavior: smooth ? "smooth" : "auto" });
    }
  });
  return b;
}

function holdChips(held) {
  state.chips.held = held;
  $("top-units").classList.toggle("frozen", held);
  if (!held && state.chips.latest) renderTopUnits(state.chips.latest);
}

function updateStats() {
  if (state.paused) return; // held still, as the readings are
  state.statsAt = performance.now();
  $("stat-fps").textContent = state.fps ? state.fps.toFixed(1) : "–";
  $("stat-latency").textContent = state.latency == null ? "–" : state.latency.toFixed(1);
  $("stat-drops").textContent = String(state.dropsServer + state.dropsClient);
}

function onResult(m) {
  const now = performance.now();
  // Results per second over the last two seconds, as seen by this page.
  const arr = state.arrivals;
  arr.push(now);
  while (arr.length && now - arr[0] > 2000) arr.shift();
  state.fps = arr.length > 1 ? ((arr.length - 1) * 1000) / Math.max(now - arr[0], 1) : 0;
  state.results += 1;
  // the stream's count of frames it skipped since it started: this page counts those since it joined
  if (state.dropsBase == null) state.dropsBase = m.timing.dropped;
  state.dropsServer = Math.max(0, m.timing.dropped - state.dropsBase);
  if (state.mode === "camera" && state.camera && state.camera.sentAt != null) {
    state.latency = now - state.camera.sentAt; // capture to result, measured in the browser
  } else {
    state.latency = m.timing.latency_ms;
  }
  state.last = m;
  if (state.stale) setStale(false);
  if (state.mode === "stream") slowLink(m, now);
  updateActivity(m.motion.top_units, now);
  const slow = reducedMotion && reducedMotion.matches ? REDUCED_MOTION_MS : 0;
  if (now - state.statsAt >= slow) updateStats();
  // drawn when its preview arrives, unless the page dropped previews (a slow link, no picture)
  if (!m.preview || noPicture()) scheduleRender();
}

// ---- server streams -------------------------------------------------------------------------------
function closeSocket() {
  clearTimeout(state.reconnectTimer);
  if (state.ws) {
    state.ws.onclose = null;
    state.ws.close();
    state.ws = null;
  }
}

function resetView() {
  if (state.paused) setPaused(false); // another source or the camera: its readings, live
  setStale(false);
  state.said = { what: null, candidate: null, since: 0, at: -Infinity };
  $("say").textContent = "";
  state.last = null;
  state.image = null;
  state.results = 0;
  state.fps = 0;
  state.arrivals = [];
  state.latency = null;
  state.dropsServer = 0;
  state.dropsBase = null;
  state.dropsClient = 0;
  state.behind = null;
  state.chips.activity.clear();
  state.chips.lastAt = null;
  $("waiting").hidden = false;
  clearReadings();
  updateStats();
}

// Nothing of a source, camera or connection left on screen: no map, no dominant motion, no panels.
function clearReadings() {
  for (const id of ["map", "flow"]) {
    const c = $(id);
    c.getContext("2d").clearRect(0, 0, c.width, c.height);
  }
  $("flow-empty").hidden = true;
  $("dom-dir").textContent = "–";
  $("dom-speed").textContent = "–";
  $("dom-conf").textContent = "–";
  $("dom-conf-bar").style.width = "0%";
  const dom = $("dominant");
  for (const k of ["directionDeg", "speed", "confidence", "results"]) delete dom.dataset[k];
  drawDominantArrow($("dominant-arrow"), null, 0);
  $("truth").hidden = true;
  drawPolar($("polar"), null, null);
  drawBars($("speed-hist"), null, [], -1);
  $("polar-empty").hidden = true;
  $("speed-hist-empty").hidden = true;
  clearTopUnits();
}

// No chips of a source or a connection that is gone (renderTopUnits reorders at most once a second).
function clearTopUnits() {
  const chips = state.chips;
  chips.activity.clear();
  for (const el of chips.els.values()) el.remove();
  chips.els = new Map();
  chips.order = "";
  chips.latest = [];
  chips.reorderedAt = -Infinity;
  $("top-units-empty").hidden = false;
}

function openStream(name, attempt = 0) {
  closeSocket();
  state.mode = "stream";
  state.stream = name;
  state.streamState = null;
  const s = state.streams.find((x) => x.name === name);
  $("source-desc").textContent = s ? s.description : "";
  const ws = new WebSocket(wsUrl(`v1/streams/${encodeURIComponent(name)}?flow=${state.flow ? 1 : 0}`), subprotocols());
  ws.binaryType = "blob";
  state.ws = ws;
  state.link = {
    minSkew: Infinity, level: 0, rate: null, behindSince: null, behindAtStep: 0,
    caughtUpSince: null, probeFrom: null, restoreMs: LINK_RESTORE_MS,
  };
  // a retry after a loss keeps saying so: "connecting" between two failed attempts reads as progress
  if (attempt === 0) setConn("connecting", "idle");
  let opened = false;
  ws.onopen = () => {
    opened = true;
    state.heardAt = performance.now();
    state.unopened = 0;
    // "live" once results flow (or the server says the source runs), not for a source that cannot open
    setConn(`starting · ${name}`, "idle");
    checkStreamState();
    attempt = 0;
    if (state.lostBanner) { banner(null); state.lostBanner = false; }
  };
  ws.onmessage = async (ev) => {
    state.heardAt = performance.now();
    if (typeof ev.data === "string") {
      const m = JSON.parse(ev.data);
      if (m.v !== SCHEMA_VERSION) { banner(`server speaks protocol v${m.v}; this page v${SCHEMA_VERSION}`, "error"); return; }
      if (m.type === "result") {
        onResult(m);
        streamConn(name);
      } else if (m.type === "status") {
        state.dropsClient = m.dropped;
        updateStats();
        // the stream's state changed (its source down, back, ended): say so now, not at the next poll
        if (m.state && m.state !== state.streamState) { state.streamState = m.state; checkStreamState(); }
      } else if (m.type === "error") banner(`${m.code}: ${m.detail}`, "error");
      return;
    }
    // Binary preview: 4-byte magic, 4-byte sequence number, JPEG. None while the page asked for no
    // picture: one sent before it asked, or decoded after, stayed under the live arrows.
    if (noPicture()) return;
    const blob = ev.data.slice(8);
    try {
      const bmp = await createImageBitmap(blob);
      if (noPicture() || state.ws !== ws) { bmp.close(); return; }
      const old = state.image;
      state.image = bmp;
      if (old && old.close) old.close();
      scheduleRender();
    } catch (e) { /* a corrupt preview is skipped */ }
  };
  ws.onclose = (ev) => {
    if (state.ws !== ws) return;
    if (ev.code === 4401) { askToken(); return; }
    if (ev.code === 4404) { setConn("unknown stream", "bad"); return; }
    setConn("reconnecting", "warn");
    connectionLost(opened);
    const delay = Math.min(10000, 500 * 2 ** attempt) * (0.5 + Math.random() / 2);
    state.reconnectTimer = setTimeout(() => openStream(name, attempt + 1), delay);
  };
}

// The server went away (restarted, network down): no frozen map or numbers that look live. A socket
// that never opened, twice in a row, while the server answers HTTP was refused, not lost: behind a
// proxy that drops the Host's port, the page said "reconnecting" for ever and nothing else.
const LOST = "Lost the connection to the server; reconnecting…";
function connectionLost(opened) {
  if (state.results || state.last) resetView();
  state.lostBanner = true;
  state.unopened = opened ? 0 : state.unopened + 1;
  if (state.unopened >= 2) explainRefusal();
  else banner(LOST);
}

async function explainRefusal() {
  let ready = false;
  try {
    ready = (await fetch(apiUrl("readyz"), { cache: "no-store" })).ok;
  } catch (e) { /* the server is down */ }
  if (!state.lostBanner) return; // connected meanwhile
  if (!ready) { banner(LOST); return; }
  banner(
    "The server answers but refuses this page's live connection (websocket); its log says why. " +
    "Behind a reverse proxy: pass the Host header with its port (nginx: proxy_set_header Host $http_host) " +
    "and the Upgrade and Connection headers, or add this page's origin (" + location.origin + ") to " +
    "V1MOTION_ALLOWED_ORIGINS.", "error");
}

// ---- the browser's own camera ---------------------------------------------------------------------
export function cameraBlockedReason() {
  if (!window.isSecureContext) {
    return "The camera needs HTTPS: browsers only allow getUserMedia on https:// pages or on localhost. " +
      "Open this dashboard over HTTPS (for example behind a TLS reverse proxy) to use your camera.";
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) return "This browser has no camera API.";
  return null;
}

async function startCamera() {
  const blocked = cameraBlockedReason();
  if (blocked) { banner(blocked, "warn"); return; }
  if (state.cameraStarting) return; // a second click while the browser asks for the camera
  state.cameraStarting = true;
  const btn = $("camera-btn");
  const focused = document.activeElement === btn; // disabling it drops the focus to the page
  btn.disabled = true;
  let media;
  try {
    // The width alone: asked for 640x480 too, a 16:9 camera was cropped to 4:3 (a quarter of its
    // picture gone); the height follows the camera's own shape.
    media = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 } }, audio: false });
  } catch (e) {
    banner(`Could not open the camera: ${e.message}`, "error");
    return;
  } finally {
    state.cameraStarting = false;
    btn.disabled = false;
    if (focused) btn.focus(); // Enter again stops it, Tab goes on from it
  }
  closeSocket();
  resetView();
  state.cameraBanner = false;
  const video = $("cam-video");
  video.srcObject = media;
  await video.play();
  const size = cameraSize(video.videoWidth, video.videoHeight);
  const canvases = [0, 1].map(() => {
    const c = document.createElement("canvas");
    c.width = size.width;
    c.height = size.height;
    return c;
  });
  state.camera = {
    media, canvases, size, turn: 0, sentCanvas: null, inFlight: false, sentAt: null, ready: false,
    presented: null, sentPresented: null, waiting: false,
  };
  const cam = state.camera;
  for (const track of media.getVideoTracks()) {
    // Unplugged, its permission withdrawn: no "live" pill over the last numbers. Muted (another
    // application holds it, a privacy shutter): no frames until it is back.
    track.addEventListener("ended", () => cameraEnded(cam));
    track.addEventListener("mute", () => { if (state.camera === cam) setConn("camera paused · no frames", "warn"); });
    track.addEventListener("unmute", () => { if (state.camera === cam && cam.ready) cameraLive(); });
  }
  if (video.requestVideoFrameCallback) {
    cam.presented = 0;
    cam.sentPresented = -1;
    const onFrame = (now, meta) => {
      if (state.camera !== cam) return;
      cam.presented = meta.presentedFrames;
      if (cam.waiting) { cam.waiting = false; sendCameraFrame(); }
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }
  state.mode = "camera";
  cameraInPicker(true);
  $("camera-btn").classList.add("active");
  $("camera-label").textContent = "Stop camera";
  // Speeds are in px of the frames the server analyses (the camera scaled to `size`) per camera frame.
  $("source-desc").textContent =
    `your camera scaled to ${size.width}x${size.height}, analysed on the server (speeds in its px/frame)`;
  banner(null);
  openCameraSocket(state.camera);
}

function openCameraSocket(cam, attempt = 0) {
  if (state.camera !== cam) return; // stopped meanwhile
  const ws = new WebSocket(wsUrl("v1/camera"), subprotocols());
  state.ws = ws;
  cam.ready = false;
  cam.inFlight = false;
  if (attempt === 0) setConn("connecting camera", "idle");
  let opened = false;
  ws.onopen = () => {
    opened = true;
    state.unopened = 0;
    ws.send(JSON.stringify({ type: "hello", ...cam.size, flow: state.flow }));
    attempt = 0;
    if (state.lostBanner) { banner(null); state.lostBanner = false; }
  };
  ws.onmessage = (ev) => {
    state.heardAt = performance.now();
    const m = JSON.parse(ev.data);
    if (m.type === "ready") { cam.ready = true; cameraLive(); sendCameraFrame(); return; }
    if (m.type === "result") {
      cam.inFlight = false;
      state.image = cam.sentCanvas;
      onResult(m);
      scheduleRender();
      sendCameraFrame(); // one frame in flight: the next leaves when this result is back
    } else if (m.type === "error") {
      cam.inFlight = false;
      banner(`${m.code}: ${m.detail}`, "error");
      setTimeout(sendCameraFrame, 200);
    }
  };
  ws.onclose = (ev) => {
    if (state.ws !== ws) return;
    if (ev.code === 4401) { askToken(); setConn("camera disconnected", "bad"); return; }
    // the server restarted or the network dropped: the camera stays on and its socket comes back
    setConn("camera reconnecting", "warn");
    connectionLost(opened);
    const delay = Math.min(10000, 500 * 2 ** attempt) * (0.5 + Math.random() / 2);
    state.reconnectTimer = setTimeout(() => openCameraSocket(cam, attempt + 1), delay);
  };
}

// The pill of a running camera: live, or paused (Pause pressed: no frames sent).
function cameraLive() {
  if (state.paused) setConn("paused · my camera sends nothing", "warn");
  else setConn("live · my camera", "live");
}

function sendCameraFrame() {
  const cam = state.camera;
  const ws = state.ws;
  if (!cam || !cam.ready || cam.inFlight || !ws || ws.readyState !== WebSocket.OPEN) return;
  if (document.hidden || state.paused) return; // cameraOnVisibility and Resume send again
  // Never analyse the same camera frame twice: wait for the next one the video presents.
  if (cam.presented !== null && cam.presented === cam.sentPresented) {
    cam.waiting = true;
    return;
  }
  cam.sentPresented = cam.presented;
  const seq = cam.presented; // the camera's frame number: the server divides speeds by the frames skipped
  // Two canvases take turns: one holds the frame on screen (the last analysed), the other the frame
  // in flight, so the map is always drawn over the very image it was computed from.
  cam.turn = 1 - cam.turn;
  const canvas = cam.canvases[cam.turn];
  canvas.getContext("2d").drawImage($("cam-video"), 0, 0, canvas.width, canvas.height);
  cam.inFlight = true;
  const sentAt = performance.now();
  canvas.toBlob((blob) => {
    if (!blob || ws.readyState !== WebSocket.OPEN) { cam.inFlight = false; return; }
    cam.sentAt = sentAt;
    cam.sentCanvas = canvas;
    if (seq !== null) ws.send(JSON.stringify({ type: "frame", seq }));
    ws.send(blob);
  }, "image/jpeg", 0.8);
}

// A hidden page's timers are throttled: it sent about one camera frame a second, 30 camera frames
// apart, too far for the engine, and read 54° or 106° at confidence 0.7 for a pan at 0°. It sends
// nothing while hidden, and takes up again when shown.
function cameraOnVisibility() {
  const cam = state.camera;
  if (!cam || !cam.ready) return;
  if (document.hidden) {
    setConn("camera paused · page hidden", "warn");
  } else {
    cameraLive();
    sendCameraFrame();
  }
}

// While the camera runs the source picker says so (it kept showing the stream left behind).
function cameraInPicker(on) {
  const sel = $("source");
  let opt = sel.querySelector("option[data-camera]");
  if (on && !opt) {
    opt = document.createElement("option");
    opt.dataset.camera = "true";
    opt.value = "";
    opt.disabled = true;
    opt.textContent = "my camera";
    sel.append(opt);
  }
  if (on) sel.value = "";
  else if (opt) {
    opt.remove();
    if (state.stream) sel.value = state.stream;
  }
}

// The camera's track ended (unplugged, permission withdrawn): back to the server's source, said.
function cameraEnded(cam) {
  if (state.camera !== cam) return;
  stopCamera();
  banner("Your camera stopped (unplugged, or its permission withdrawn); showing the server's source again.");
  state.cameraBanner = true; // until the camera or another source is picked
}

// `reopen`: show the server's stream left for the camera (not when another one is being picked).
function stopCamera(reopen = true) {
  const cam = state.camera;
  if (!cam) return;
  closeSocket();
  cam.media.getTracks().forEach((t) => t.stop());
  state.camera = null;
  cameraInPicker(false);
  $("camera-btn").classList.remove("active");
  $("camera-label").textContent = "Use my camera";
  resetView();
  if (reopen && state.stream) openStream(state.stream);
}

// ---- units ----------------------------------------------------------------------------------------
// Each unit's tuning, measured on drifting gratings of 16 directions. A unit whose response is near zero
// is "degenerate": its tuning (and a DI of 1.00) is noise, so it is marked and filtered out by default.
// A unit that answers a single direction of the 16 is sharply direction-selective, not degenerate (a
// class saw the units firing for a grating listed as "degenerate"): it is marked as such and listed.
export function classifyUnits(units) {
  const peak = (u) => Math.max(0, ...u.direction_tuning);
  const peaks = units.filter((u) => u.responsive !== false).map(peak).sort((a, b) => a - b);
  const median = peaks.length ? peaks[Math.floor(peaks.length / 2)] : 0;
  for (const u of units) {
    u.peak = peak(u);
    u.nDirections = u.peak > 0 ? u.direction_tuning.filter((v) => v > 0.1 * u.peak).length : 0;
    u.weak = u.responsive === false || u.peak < 0.1 * median;
    u.single = !u.weak && u.nDirections <= 1;
    u.degenerate = u.weak;
    u.degenerateWhy = u.weak ? "near-zero response to gratings: its tuning is noise" : "";
  }
  return units;
}

const UNIT_FILTERS = {
  tuned: (u) => !u.degenerate,
  responsive: (u) => u.responsive !== false,
  degenerate: (u) => u.degenerate,
  all: () => true,
};
const UNIT_SORTS = {
  di: (a, b) => b.di - a.di || b.peak - a.peak,
  response: (a, b) => b.peak - a.peak,
  id: (a, b) => a.id - b.id,
};

// The unit the browser opens on: strongly direction-tuned, well responsive, and tuned to more than
// one direction so that its polar plot shows a lobe.
export function initialUnit(units) {
  const broad = units.filter((u) => !u.degenerate && u.nDirections >= 3);
  const pool = broad.length ? broad : units.filter((u) => !u.degenerate);
  return [...(pool.length ? pool : units)].sort(UNIT_SORTS.di)[0] || null;
}

function unitLabel(u) {
  // The mark leads, so a narrow select still shows it.
  const mark = u.degenerate ? "⚠ near-zero · " : u.single ? "one direction · " : "";
  return `${mark}#${u.id} · ${fmtUnitDeg(u.preferred_direction_deg)}° · DI ${u.di.toFixed(2)} · ` +
    `resp ${u.peak.toFixed(2)}`;
}

function fillUnitSelect() {
  const units = state.units.units.filter(UNIT_FILTERS[$("unit-filter").value] || UNIT_FILTERS.all);
  units.sort(UNIT_SORTS[$("unit-sort").value] || UNIT_SORTS.di);
  $("unit-select").replaceChildren(...units.map((u) => {
    const o = document.createElement("option");
    o.value = u.id;
    o.textContent = unitLabel(u);
    return o;
  }));
  return units;
}

async function loadUnits(attempt = 0) {
  let rep;
  try {
    rep = await api("v1/units");
  } catch (e) {
    if (attempt < 60) setTimeout(() => loadUnits(attempt + 1), 1000);
    return;
  }
  classifyUnits(rep.units);
  const byId = new Map(rep.units.map((u) => [u.id, u]));
  state.units = { ...rep, byId };
  for (const [id, el] of state.chips.els) { // chips made before the tuning arrived: colour and title
    const chip = makeChip(id);
    chip.querySelector("small").textContent = el.querySelector("small").textContent;
    el.replaceWith(chip);
    state.chips.els.set(id, chip);
  }
  fillUnitSelect();
  const first = initialUnit(rep.units);
  selectUnit(first ? first.id : null);
}

function onUnitListChange() {
  const units = fillUnitSelect();
  const keep = units.some((u) => u.id === state.unitId);
  selectUnit(keep ? state.unitId : units.length ? units[0].id : null);
}

function selectUnit(id) {
  if (id == null || !state.units) return;
  const u = state.units.byId.get(Number(id));
  if (!u) return;
  state.unitId = u.id;
  const sel = $("unit-select");
  if (![...sel.options].some((o) => Number(o.value) === u.id)) {
    $("unit-filter").value = "all"; // a unit clicked elsewhere that the current filter hides
    fillUnitSelect();
  }
  sel.value = String(u.id);
  const facts = [
    ["preferred direction", `${fmtUnitDeg(u.preferred_direction_deg)}°`],
    ["preferred speed", `${fmtSpeed(u.preferred_speed)} px/frame`],
    ["direction index", u.di.toFixed(2)],
    ["peak response", `${u.peak.toFixed(2)} (mean code per patch)`],
    ["responds to", `${u.nDirections} of ${u.direction_tuning.length} directions`],
  ];
  if (u.degenerate) facts.push(["degenerate", u.degenerateWhy]);
  else if (u.single) {
    const step = 360 / u.direction_tuning.length;
    facts.push(["note", `sharply tuned: no response ${step}° to either side of its direction`]);
  }
  else if (u.responsive === false) facts.push(["note", "weakly responsive to gratings"]);
  $("unit-facts").replaceChildren(...facts.flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    if (k === "degenerate") dd.className = "warn";
    return [dt, dd];
  }));
  $("unit-facts").dataset.degenerate = u.degenerate ? "true" : "false";
  drawUnitPolar($("unit-polar"), state.units.directions_deg, u.direction_tuning, u.preferred_direction_deg);
  drawSpeedTuning($("unit-speed"), state.units.speeds, u.speed_tuning, u.preferred_speed);
  $("unit-polar").setAttribute("aria-label",
    `Direction tuning of unit ${u.id}: prefers ${compass(u.preferred_direction_deg)} (${fmtUnitDeg(u.preferred_direction_deg)}°)`);
  $("unit-speed").setAttribute("aria-label", `Speed tuning of unit ${u.id}: prefers ${fmtSpeed(u.preferred_speed)} px/frame`);
  for (const [cid, el] of state.chips.els) {
    el.classList.toggle("selected", cid === u.id);
    el.setAttribute("aria-pressed", String(cid === u.id));
  }
}

function stepUnit(delta) {
  const sel = $("unit-select");
  const i = Math.min(sel.options.length - 1, Math.max(0, sel.selectedIndex + delta));
  if (i >= 0) selectUnit(sel.options[i].value);
}

// ---- start-up -------------------------------------------------------------------------------------
const LOADING = "The motion engine is loading and compiling; results start in a few seconds.";
async function waitReady() {
  for (let i = 0; ; i++) {
    try {
      const r = await fetch(apiUrl("readyz"));
      if (r.ok) {  // clears its own message only (not, say, a mistyped source's shown meanwhile)
        if (!$("banner").hidden && $("banner").textContent === LOADING) banner(null);
        return;
      }
      const body = await r.json();
      if (body.status === "failed") { banner(`The motion engine failed to load: ${body.detail}`, "error"); return; }
      if (i === 2) banner(LOADING);
    } catch (e) { /* server not up yet */ }
    await new Promise((res) => setTimeout(res, 500));
  }
}

async function start() {
  drawWheel($("wheel"));
  $("vmax-label").textContent = VMAX;
  drawArrowScale($("arrow-scale"), null);
  drawPolar($("polar"), null, null);
  drawDominantArrow($("dominant-arrow"), null, 0);
  const blocked = cameraBlockedReason();
  if (blocked) $("camera-btn").title = blocked;

  // A closed picker changes with every arrow key: a keyboard user stepping through the sources
  // opened each one on the way, its readings wiped each time. From the keyboard the source opens
  // once the keys stop (SOURCE_KEYS_MS); picked with the pointer, at once.
  let sourceKeyAt = -Infinity, sourceTimer = null;
  $("source").addEventListener("keydown", () => { sourceKeyAt = performance.now(); });
  $("source").addEventListener("change", (e) => {
    const name = e.target.value;
    clearTimeout(sourceTimer);
    const pick = () => {
      if (state.unknownSource || state.cameraBanner) {
        banner(null);
        state.unknownSource = state.cameraBanner = false;
      }
      if (state.camera) stopCamera(false); // the stream picked is opened below, once
      $("source").value = name;
      resetView();
      openStream(name);
    };
    if (performance.now() - sourceKeyAt < 200) sourceTimer = setTimeout(pick, SOURCE_KEYS_MS);
    else pick();
  });
  $("camera-btn").addEventListener("click", () => (state.camera ? stopCamera() : startCamera()));
  $("pause-btn").addEventListener("click", () => setPaused(!state.paused));
  // A tooltip shown by focus closes on Escape (WCAG 1.4.13) until focus leaves its number.
  for (const stat of document.querySelectorAll(".stat")) {
    stat.addEventListener("keydown", (e) => { if (e.key === "Escape") stat.classList.add("tip-off"); });
    stat.addEventListener("blur", () => stat.classList.remove("tip-off"));
  }
  document.addEventListener("visibilitychange", cameraOnVisibility);
  $("flow-toggle").addEventListener("change", (e) => {
    state.flow = e.target.checked;
    $("flow-card").hidden = !state.flow;
    document.querySelector(".maps").classList.toggle("with-flow", state.flow);
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify({ type: "options", flow: state.flow }));
  });
  $("unit-select").addEventListener("change", (e) => selectUnit(e.target.value));
  $("unit-filter").addEventListener("change", onUnitListChange);
  $("unit-sort").addEventListener("change", onUnitListChange);
  const chipBox = $("top-units");
  // Chips hold still under the pointer, and while a keyboard user is on one (not after a mouse click).
  const keyboardOnChip = () => chipBox.querySelector(":focus-visible") !== null;
  // A finger is no pointer that rests: on a phone, :hover stuck after a tap and the chips stayed
  // held (stale) until the next tap elsewhere. Only a mouse or pen over them holds them.
  let pointerOver = false;
  chipBox.addEventListener("pointerenter", (e) => {
    pointerOver = e.pointerType !== "touch";
    holdChips(pointerOver || keyboardOnChip());
  });
  chipBox.addEventListener("pointerleave", () => {
    pointerOver = false;
    holdChips(keyboardOnChip());
  });
  chipBox.addEventListener("focusin", () => holdChips(pointerOver || keyboardOnChip()));
  chipBox.addEventListener("focusout", (e) => {
    // Focus moving to another chip has not arrived yet (it is not :focus-visible until then): a
    // keyboard user tabbing along the chips keeps them held. After a click the pointer holds them.
    holdChips(pointerOver || chipBox.contains(e.relatedTarget));
  });
  $("unit-prev").addEventListener("click", () => stepUnit(-1));
  $("unit-next").addEventListener("click", () => stepUnit(1));
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("token-input").value.trim();
    sessionStorage.setItem("v1motion-token", state.token);
    $("source").focus(); // not lost to the top of the page with the form that had it
    $("token-form").hidden = true;
    start2();
  });
  waitReady();
  start2();
  pollStreamState();
  setInterval(watchSilence, 1000);
  setInterval(watchStale, 500);
}

// The server says something at least once a second on a stream (a status), and answers each camera
// frame: silence this long is a link that died without closing (Wi-Fi gone, a laptop's lid), which
// the browser notices only minutes later. Until this, such a page said "live" with frozen readings.
const SILENT_MS = 6000;
function watchSilence() {
  const ws = state.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN || state.heardAt == null) return;
  const now = performance.now();
  const cam = state.camera;
  const waiting = state.mode === "stream" ? now - state.heardAt
    : cam && cam.inFlight && cam.sentAt != null ? now - Math.max(cam.sentAt, state.heardAt) : 0;
  if (waiting < SILENT_MS) return;
  const lost = ws.onclose;
  ws.onclose = null;
  ws.onmessage = null;
  try { ws.close(); } catch (e) { /* closing */ }
  if (lost) lost({ code: 1006 }); // as if it had closed: "reconnecting", and a new socket
}

// A source that stops sending frames without failing (a network camera that hangs, a capture card
// that freezes) is called stalled by the server only after its stall timeout (5 s), and a slow
// engine or link can hold results up: until then the last map and "confidence 1.00" looked live.
// After STALE_MS without a result they are greyed, the time since the last one is said, and the
// status reads "no new frames" (a paused page holds its readings on purpose: not stale).
function watchStale() {
  const last = state.arrivals.at(-1);
  const age = last == null ? 0 : performance.now() - last;
  setStale(Boolean(state.last) && !state.paused && age > STALE_MS, age);
}

function setStale(stale, age = 0) {
  const was = state.stale;
  state.stale = stale;
  document.body.classList.toggle("stale", stale);
  const note = $("stale-note");
  note.hidden = !stale;
  $("dom-age").hidden = !stale;
  if (stale) {
    const s = Math.floor(age / 1000);
    note.textContent = `no new frames for ${s} s · the last map, greyed`;
    $("dom-age").textContent = `last reading, ${s} s old`;
  }
  const open = state.ws && state.ws.readyState === WebSocket.OPEN;
  if (stale && !was && state.mode === "stream" && state.stream && open) streamConn(state.stream);
}

const BEHIND_TITLE = "The server analyses under half of this source's frames: it has more " +
  "streams or cameras than its cores can take. The map stays current; the frames between are skipped.";

// "live", unless no result came for a while or the readings are held (Pause).
function streamConn(name) {
  const b = state.behind;
  if (state.paused) setConn(`paused · ${name}`, "idle");
  else if (state.stale) setConn(`no new frames · ${name}`, "warn");
  // the server analyses under half its source's frames: live, but not every frame (its status)
  else if (b) setConn(`live · ${name} · ${Math.round(b.fps)} of ${Math.round(b.source_fps)} fps analysed${linkNote()}`, "warn");
  else setConn(`live · ${name}${linkNote()}`, "live");
}

// The source's own state (running, reconnecting, stalled...) as the server reports it.
async function pollStreamState() {
  await checkStreamState();
  dropStaleStats();
  setTimeout(pollStreamState, 2000);
}

async function checkStreamState() {
  if (state.mode === "stream" && state.stream && state.ws && state.ws.readyState === WebSocket.OPEN) {
    try {
      const s = await api(`v1/streams/${encodeURIComponent(state.stream)}`);
      if (s.name !== state.stream || state.mode !== "stream") return;  // switched meanwhile
      state.behind = s.state === "running" && s.behind ? s : null;
      if (s.state === "running") streamConn(s.name);
      // an answer sent before the first result, read after it: not "starting" again
      else if (s.state === "starting") { if (!state.results) setConn(`starting · ${s.name}`, "idle"); }
      else setConn(`${s.state} · ${s.name}`, s.state === "error" ? "bad" : "warn");
      $("conn").title = s.error || (state.behind ? BEHIND_TITLE : "");
      // A source that is down, stalled or played to its end sends no results: no frozen map or
      // dominant motion that looks live (a reconnect then starts from a blank view).
      if (["reconnecting", "stalled", "error", "ended"].includes(s.state) && (state.results || state.last)) {
        resetView();
      }
      // A stream whose worker stopped sends nothing more: say so, not a frozen map at the last fps.
      if (s.state === "error") {
        banner(`The stream ${s.name} stopped: ${s.error || "see the server log"}`, "error");
        state.streamBanner = true;
      } else if (s.state === "ended") {
        banner(`The stream ${s.name} has played its file to the end (it does not loop).`);
        state.streamBanner = true;
      } else if (s.state === "reconnecting" && s.error) {
        // a source that cannot be opened or read: say why, not only "waiting for frames"
        const why = s.error.replace(/^SourceError: /, "").replace(/^source '[^']*': /, "");
        banner(`The source ${s.name} cannot be read (${why}); the server keeps trying.`);
        state.streamBanner = true;
      } else if (state.streamBanner) {  // the banner showed this stream's trouble: it is over
        banner(null);
        state.streamBanner = false;
      }
    } catch (e) { /* shown by the socket's own state */ }
  }
}

// No result for 2 s (a stream down, a camera muted or stopped, a throttled tab): no frame rate or
// latency frozen at their last values.
function dropStaleStats() {
  if ((state.fps || state.latency != null) && performance.now() - (state.arrivals.at(-1) ?? 0) > 2000) {
    state.fps = 0;
    state.latency = null;
    updateStats();
  }
}

async function start2() {
  let body;
  try {
    body = await api("v1/streams");
  } catch (e) {
    if (e.message !== "unauthorized") { setConn("server unreachable", "bad"); setTimeout(start2, 2000); }
    return;
  }
  state.streams = body.streams;
  const sel = $("source");
  sel.replaceChildren(...body.streams.map((s) => {
    const o = document.createElement("option");
    o.value = s.name;
    o.textContent = s.name === s.kind ? s.name : `${s.name} (${s.kind})`;
    o.title = s.description;
    return o;
  }));
  const wanted = new URLSearchParams(location.search).get("source");
  const known = body.streams.some((s) => s.name === wanted);
  const name = known ? wanted : body.default;
  sel.value = name;
  openStream(name);
  if (wanted !== null && !known) {  // a mistyped ?source= is said, not silently replaced
    const names = body.streams.map((s) => s.name).join(", ");
    banner(`There is no source named "${wanted}" (sources: ${names}); showing ${name}.`);
    state.unknownSource = true;  // until another source is picked
  }
  loadUnits();
}

start();
window.v1motion = {
  state, wsUrl, apiUrl, slowLink, cameraBlockedReason, arrowFraction, classifyUnits, initialUnit, flowIsEmpty,
  cellHistograms, movingWeight, speedBinPosition, drawMap, fmtDeg, fmtUnitDeg, cameraSize, panelsShow,
  describeFlow, drawDominantArrow, drawPolar,
};
