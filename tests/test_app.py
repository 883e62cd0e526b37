"""`mmldm app`: the Gradio page served on localhost and driven in Debian's headless Chromium as
a user would: pick a2v, upload a clip, generate, and a video with sound plays."""

import json
import shutil

import pytest

from conftest import free_port
from mmldm.cli import main
from mmldm.data.media import probe
from test_gallery import CHROMIUM_ARGS, PROBE

pytest.importorskip("gradio", reason="pip install -e '.[dev]' (includes the app extra)")


@pytest.fixture(scope="module")
def model(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("app") / "model"
    args = ["export", "--generator", str(trained["gen"]), "--autoencoder", str(trained["ae"])]
    assert main([*args, "--out", str(out), "-q"]) == 0
    return out


def test_app_generates_a2v_from_an_upload_and_plays_it_with_sound(model, trained, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is required for this test: make test installs it"
    from mmldm.app import serve
    from mmldm.pipeline import MMLDMPipeline

    pipe = MMLDMPipeline.from_pretrained(model)
    port = free_port()
    app = serve(pipe, port=port, outputs=tmp_path / "outputs", block=False)
    upload = next(trained["synth"].rglob("*.mp4"))
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_label("a2v").check()
            page.locator("input[type=file]").first.set_input_files(str(upload))
            page.wait_for_selector(f"text={upload.name}", timeout=30_000)  # the upload landed
            page.get_by_role("button", name="Generate").click()
            page.wait_for_selector("video[src]", timeout=120_000)
            results = page.evaluate(PROBE)
            assert page.get_by_text('"decoder_steps"').count() == 1  # the settings panel
            browser.close()
    finally:
        app.close()
    assert len(results) == 1 and results[0]["error"] is None, results
    data = pipe.cfg.data
    assert results[0]["duration"] == pytest.approx(data.clip_seconds, abs=0.1)
    assert results[0]["videoBytes"] > 0 and results[0]["audioBytes"] > 0  # frames and AAC decode
    written = list((tmp_path / "outputs").glob("a2v_seed0_*.mp4"))
    assert len(written) == 1
    info = probe(written[0])
    assert info.has_audio and info.num_frames == data.num_frames


def test_app_command_needs_a_model(capsys):
    assert main(["app", "-q"]) == 2
    assert "give --model MODEL" in capsys.readouterr().err


def test_only_the_app_imports_gradio():
    """Gradio is an optional extra: no other module may import it (read from the sources)."""
    import ast
    from pathlib import Path

    import mmldm

    importers = []
    for path in Path(mmldm.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(name.split(".")[0] == "gradio" for name in names):
                importers.append(path.name)
    assert importers == ["app.py"]


def test_class_names_of_the_training_data_reach_the_app_and_sample_label(trained, tmp_path):
    import gradio as gr

    from mmldm.app import build_app
    from mmldm.pipeline import MMLDMPipeline

    gen = tmp_path / "gen"  # a class-conditional generator of the tiny latent cache
    args = ["train-generator", "--latents", str(trained["latents"]), "--out", str(gen)]
    args += ["--max-steps", "1", "--set", "dit.class_conditional=true", "--config", "tiny"]
    assert main([*args, "-q"]) == 0
    pipe = MMLDMPipeline.from_pretrained(gen, autoencoder=trained["ae"])
    folders = sorted(p.name for p in trained["synth"].iterdir() if p.is_dir())
    assert pipe.class_names == folders and pipe.dit.num_classes == len(folders)
    app = build_app(pipe, tmp_path)
    (dropdown,) = [b for b in app.blocks.values() if isinstance(b, gr.Dropdown)]
    assert [tuple(c) for c in dropdown.choices] == [(name, i) for i, name in enumerate(folders)]
    # and `sample --label` takes a name as well as an index
    out = tmp_path / "s"
    args = ["sample", "--generator", str(gen), "--autoencoder", str(trained["ae"]), "--task"]
    args += ["svg", "--num", "2", "--steps", "1", "--out", str(out), "-q", "--label"]
    assert main([*args, folders[1], "0"]) == 0
    records = json.loads((out / "svg.json").read_text())["samples"]
    assert [r["class_index"] for r in records] == [1, 0]
    assert main([*args, "purple", "--out", str(tmp_path / "t")]) == 1  # not a class: one line
    assert main([*args, "3", "--out", str(tmp_path / "u")]) == 1  # 3 classes: 0..2
    assert pipe.class_index("1") == 1 and pipe.class_index(folders[2]) == 2
