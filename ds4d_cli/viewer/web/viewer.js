// ds4d's 4D viewer: plays one compressed splat file per clip frame with Spark (three.js).
//
// A classic script (no ES modules) so that the page also runs from file://: the libraries come
// from vendor/ds4d-lib.js (window.DS4DLib), the scene description from scene.js
// (window.DS4D_SCENE) and each frame from frames/frame_NNNN.spz.js, a script that hands its SPZ
// bytes (base64) to window.DS4D_FRAME. Nothing is fetched from anywhere else.
//
// URL parameters (all optional): az, el, r, fov   an orbit camera in ds4d's convention (degrees;
//   azimuth 0 = the input camera's side, 90 = +X), instead of the input camera;
// frame=N (start frame), play=0 (start paused), speed=0.5, bg=%23rrggbb, size=N (N x N px canvas).
(function () {
  "use strict";
  const lib = window.DS4DLib;
  const scene = window.DS4D_SCENE;
  const params = new URLSearchParams(window.location.search);
  const $ = (id) => document.getElementById(id);

  function fail(message) {
    $("loading-text").textContent = message;
    document.body.dataset.error = message;
    throw new Error(message);
  }
  if (!lib) fail("vendor/ds4d-lib.js is missing: run `make setup`, then export again");
  if (!scene) fail("scene.js is missing: export the page again with `ds4d export --format html`");
  const { THREE, OrbitControls, SparkRenderer, SplatMesh } = lib;
  const numFrames = scene.frames.length;

  // ds4d's world is Z up with the input camera on -Y; three.js is Y up: (x, y, z) -> (x, z, -y).
  const toThree = (v) => new THREE.Vector3(v[0], v[2], -v[1]);

  function numberParam(name, fallback) {
    const text = params.get(name);
    const value = text === null ? NaN : Number(text);
    return Number.isFinite(value) ? value : fallback;
  }

  // The camera of ds4d_cli.cameras.orbit_camera, as position / forward / up in world axes.
  function orbitCamera(azDeg, elDeg, radius) {
    const az = (azDeg * Math.PI) / 180, el = (elDeg * Math.PI) / 180;
    const offset = [Math.sin(az) * Math.cos(el), -Math.cos(az) * Math.cos(el), Math.sin(el)];
    const forward = offset.map((c) => -c);
    const right = [Math.cos(az), Math.sin(az), 0];
    const down = [
      forward[1] * right[2] - forward[2] * right[1],
      forward[2] * right[0] - forward[0] * right[2],
      forward[0] * right[1] - forward[1] * right[0],
    ];
    return { position: offset.map((c) => radius * c), forward, up: down.map((c) => -c) };
  }

  // ---------------------------------------------------------------- renderer, camera, controls
  const fixedSize = numberParam("size", 0);
  if (fixedSize > 0) document.body.classList.add("fixed-size");
  const holder = $("canvas-holder");
  const renderer = new THREE.WebGLRenderer({ antialias: false });
  renderer.setPixelRatio(fixedSize > 0 ? 1 : window.devicePixelRatio);
  holder.appendChild(renderer.domElement);

  const world = new THREE.Scene();
  world.background = new THREE.Color(params.get("bg") || scene.background || "#ffffff");
  // Match ds4d's own rasterizer: 3 sigma extent, 0.3 px dilation without opacity compensation,
  // depth (not radial) sort, alpha below 1/255 dropped.
  const spark = new SparkRenderer({
    renderer, maxStdDev: 3.0, preBlurAmount: 0.3, blurAmount: 0.0, sortRadial: false, minAlpha: 1.0 / 255.0,
  });
  world.add(spark);

  const cam = scene.camera;
  const useOrbit = params.has("az") || params.has("el") || params.has("r");
  const view = useOrbit
    ? orbitCamera(numberParam("az", 0), numberParam("el", 0), numberParam("r", cam.radius))
    : { position: cam.position, forward: cam.forward, up: cam.up };
  const fov = numberParam("fov", cam.fov_deg);
  const camera = new THREE.PerspectiveCamera(fov, 1, 0.01, 100);
  const position = toThree(view.position);
  const forward = toThree(view.forward).normalize();
  camera.position.copy(position);
  camera.up.copy(toThree(view.up).normalize());
  // Orbit around the point of the view ray nearest to the object's centre (the world origin).
  const target = position.clone().addScaledVector(forward, -position.dot(forward));
  camera.lookAt(target);
  const controls = new OrbitControls(camera, renderer.domElement);
  controls.target.copy(target);
  controls.enableDamping = false;
  controls.update();

  function resize() {
    const w = fixedSize > 0 ? fixedSize : holder.clientWidth;
    const h = fixedSize > 0 ? fixedSize : holder.clientHeight;
    renderer.setSize(w, h, fixedSize > 0);
    camera.aspect = w / Math.max(1, h);
    camera.updateProjectionMatrix();
  }
  window.addEventListener("resize", resize);
  resize();

  // ---------------------------------------------------------------- playback state and UI
  const state = {
    frame: Math.min(Math.max(0, Math.round(numberParam("frame", 0))), numFrames - 1),
    playing: params.get("play") !== "0",
    speed: numberParam("speed", 1),
    clock: 0,
    ready: false,
    renders: 0,
  };
  const meshes = new Array(numFrames).fill(null);
  // Playback runs on the clip's own clock: frame i shows from its time until the next frame's
  // (a --frames subset keeps its real timing); the loop lasts the clip plus one frame.
  const times = scene.frames.map((f) => f.seconds - scene.frames[0].seconds);
  const period = times[numFrames - 1] + 1 / scene.fps;
  const clockAt = (index) => times[index] + 1e-6;
  function frameAt(clock) {
    let index = 0;
    while (index + 1 < numFrames && times[index + 1] <= clock) index += 1;
    return index;
  }
  state.clock = clockAt(state.frame);

  const playButton = $("play"), scrub = $("scrub"), speedSelect = $("speed"), counter = $("counter");
  const inputImage = $("input-frame");
  scrub.max = String(numFrames - 1);
  if (![...speedSelect.options].some((o) => Number(o.value) === state.speed)) {
    speedSelect.add(new Option(`${state.speed}×`, String(state.speed)));
  }
  speedSelect.value = String(state.speed);
  if (!scene.input || !scene.input.length) $("input-panel").style.display = "none";

  function showFrame(index) {
    const prev = meshes[state.frame];
    if (prev) prev.visible = false;
    state.frame = index;
    const mesh = meshes[index];
    if (mesh) mesh.visible = true;
    scrub.value = String(index);
    const info = scene.frames[index];
    counter.textContent = `frame ${index + 1} / ${numFrames} · ${info.seconds.toFixed(2)} s`;
    if (scene.input && scene.input[index]) inputImage.src = scene.input[index];
    document.body.dataset.frame = String(index);
  }

  function setPlaying(playing) {
    state.playing = playing;
    playButton.textContent = playing ? "pause" : "play";
    document.body.dataset.playing = playing ? "1" : "0";
  }

  playButton.addEventListener("click", () => setPlaying(!state.playing));
  scrub.addEventListener("input", () => {
    const index = Number(scrub.value);
    state.clock = clockAt(index);
    showFrame(index);
  });
  speedSelect.addEventListener("change", () => { state.speed = Number(speedSelect.value); });
  window.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLSelectElement || event.target instanceof HTMLInputElement) return;
    if (event.code === "Space") { setPlaying(!state.playing); event.preventDefault(); }
    const step = event.key === "ArrowRight" ? 1 : event.key === "ArrowLeft" ? -1 : 0;
    if (step) {
      setPlaying(false);
      const index = (state.frame + step + numFrames) % numFrames;
      state.clock = clockAt(index);
      showFrame(index);
    }
  });
  setPlaying(state.playing);
  showFrame(state.frame);

  // ---------------------------------------------------------------- loading the frames
  function base64Bytes(text) {
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  const pending = new Map();
  window.DS4D_FRAME = (index, base64) => {
    const done = pending.get(index);
    if (done) done(base64Bytes(base64));
  };

  function loadScript(index) {
    return new Promise((resolve, reject) => {
      pending.set(index, resolve);
      const tag = document.createElement("script");
      tag.src = scene.frames[index].file;
      tag.onerror = () => reject(new Error(`cannot load ${tag.src}`));
      tag.onload = () => tag.remove();
      document.head.appendChild(tag);
    });
  }

  async function loadAll() {
    const fill = $("loading-fill"), text = $("loading-text");
    for (let i = 0; i < numFrames; i++) {
      text.textContent = `loading frame ${i + 1} / ${numFrames}…`;
      const bytes = await loadScript(i);
      pending.delete(i);
      const mesh = new SplatMesh({ fileBytes: bytes, fileName: "frame.spz" });
      mesh.visible = i === state.frame;
      world.add(mesh);
      await mesh.initialized;
      meshes[i] = mesh;
      fill.style.width = `${(100 * (i + 1)) / numFrames}%`;
    }
    showFrame(state.frame);
    $("loading").classList.add("done");
    state.ready = true;
    document.body.dataset.ready = "1";
  }
  loadAll().catch((error) => fail(`could not load the frames: ${error.message}`));

  // ---------------------------------------------------------------- the loop
  let last = null;
  renderer.setAnimationLoop((now) => {
    const dt = last === null ? 0 : Math.min(0.25, (now - last) / 1000);
    last = now;
    if (state.ready && state.playing) {
      state.clock = (state.clock + dt * state.speed) % period;
      const index = frameAt(state.clock);
      if (index !== state.frame) showFrame(index);
    }
    controls.update();
    renderer.render(world, camera);
    state.renders += 1;
  });

  // Read-only view of the state, for scripts and tests (the UI itself is the way to change it).
  window.ds4d = {
    get ready() { return state.ready; },
    get frame() { return state.frame; },
    get playing() { return state.playing; },
    get speed() { return state.speed; },
    get renders() { return state.renders; },
    numFrames,
  };
})();
