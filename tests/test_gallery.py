"""The demo's gallery page, opened in headless Chromium: every video loads, with an audio
track where the task has sound and the duration of its clips."""

import functools
import http.server
import json
import shutil
import threading

import pytest

from mmldm.config import load_config
from mmldm.data.media import read_media, write_video
from mmldm.synthetic.demo import SAMPLE_PLAN, write_gallery
from mmldm.synthetic.families import synthesize_dataset

SILENT_TASKS = ("video", "video-continuation")

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]

PROBE = """async () => {
  const videos = [...document.querySelectorAll('video')];
  await Promise.all(videos.map(v => new Promise(done => {
    if (v.readyState >= 1 || v.error) return done();
    v.addEventListener('loadedmetadata', done); v.addEventListener('error', done);
  })));
  const out = [];
  for (const v of videos) {
    v.muted = true;
    try { await v.play(); } catch (e) {}
    await new Promise(r => setTimeout(r, 400));
    v.pause();
    out.push({src: v.getAttribute('src'), duration: v.duration,
              error: v.error && v.error.code, audioBytes: v.webkitAudioDecodedByteCount,
              videoBytes: v.webkitVideoDecodedByteCount});
  }
  return out;
}"""


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """A gallery of real sounding mp4s laid out as the demo writes them."""
    out = tmp_path_factory.mktemp("demo")
    data = load_config("tiny").data
    clips = synthesize_dataset(out / "data", 4, seed=0, data=data, duration=data.clip_seconds)
    for task in SAMPLE_PLAN:
        folder = out / "samples" / task
        folder.mkdir(parents=True)
        records = []
        for i, clip in enumerate(clips[:2]):
            name = f"{task}_{i:04d}.mp4"
            if task in SILENT_TASKS:  # as the demo writes them: no audio track
                frames = read_media(clip, audio=False).frames
                write_video(folder / name, frames, data.fps)
            else:
                shutil.copy(clip, folder / name)
            records.append(
                {"file": name, "seed": 0, "condition": str(clips[2]), "condition_class": 0}
                if task in ("a2v", "v2a")
                else {"file": name, "seed": 0}
            )
        (folder / f"{task}.json").write_text(json.dumps({"samples": records}))
    scores = {"value": {"av_class_agreement": 0.9}, "shuffled": {"av_class_agreement": 0.3}}
    metrics = {"real": {"value": {"av_class_agreement": 1.0}}, "svg": scores}
    return out, write_gallery(out, metrics), data


def test_gallery_videos_play_with_sound_in_chromium(gallery):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is required for this test: make test installs it"
    out, page_path, data = gallery
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.server_port}/{page_path.name}")
            assert "MM-LDM demo" in page.title()
            results = page.evaluate(PROBE)
            browser.close()
    finally:
        server.shutdown()
    assert len(results) == 2 * len(SAMPLE_PLAN) + 2 * 2  # samples + the a2v / v2a conditions
    for r in results:
        assert r["error"] is None, r
        assert r["duration"] == pytest.approx(data.clip_seconds, abs=0.1), r
        assert r["videoBytes"] > 0, r
        if r["src"].split("/")[1] in SILENT_TASKS:
            assert r["audioBytes"] == 0, r  # no track where the task has no sound
        else:
            assert r["audioBytes"] > 0, r  # the AAC track decodes
