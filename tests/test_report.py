"""report.html, checked in a real browser: headless Chromium (Debian's `chromium`) loads each report with no console
message, decodes every image and draws a page that is not blank. Reports of a Fashion-MNIST run (the `reslab train`
command a user types), of an image-folder run, and of an experiment folder; `reslab eval` adding to a report; the
live page of a run in progress."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reslab.checkpoint import read_checkpoint
from reslab.cli import main
from reslab.config import make_config
from reslab.data.fashion_mnist import find_data_dir
from reslab.errors import ReslabError
from reslab.report import MISTAKES_SHOWN, render_run, report
from reslab.train import fit

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it",
)
SRC = str(Path(__file__).resolve().parents[1] / "src")

# appended to a copy of the page: after the load event, every <img>'s decoded width, written into the DOM that
# --dump-dom prints (the page itself has no script, and its Content-Security-Policy would block one)
PROBE = """<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify([...document.images].map((i) => [i.alt, i.complete ? i.naturalWidth : 0]));
  document.body.appendChild(out);
});
</script>"""


def chromium(*args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


def in_browser(page: Path, shot: Path) -> dict:
    """Chromium's view of `page`: its console messages, each image's decoded width, and a screenshot (saved)."""
    seen = chromium(f"--screenshot={shot}", "--window-size=1280,2600", page.as_uri())
    console = [line for line in seen.stderr.splitlines() if ":CONSOLE" in line]
    text = page.read_text()
    probe = page.with_name(f".probe-{page.name}")
    start, end = text.index('<meta http-equiv="Content-Security-Policy"'), text.index(">", text.index("Content-Sec"))
    probe.write_text(text[:start] + text[end + 1 :].replace("</body>", PROBE + "</body>"))
    dom = chromium("--dump-dom", "--virtual-time-budget=5000", probe.as_uri()).stdout
    probe.unlink()
    images = json.loads(dom.split('<pre id="probe">', 1)[1].split("</pre>", 1)[0].replace("&quot;", '"'))
    return {"console": console, "images": images, "shot": Image.open(shot).convert("L")}


def assert_renders(page: Path, shot: Path, *, min_images: int) -> dict:
    seen = in_browser(page, shot)
    assert seen["console"] == [], seen["console"]
    assert len(seen["images"]) >= min_images, seen["images"]
    assert all(width > 0 for _, width in seen["images"]), seen["images"]
    pixels = np.asarray(seen["shot"])
    assert pixels.shape[1] == 1280
    # not blank: dark text, and pictures and table shading that are neither background nor text
    assert (pixels < 100).mean() > 0.002 and ((pixels > 100) & (pixels < 230)).mean() > 0.002
    return seen


@needs_chromium
def test_the_browser_check_catches_a_broken_image_and_a_blocked_request(tmp_path):
    # the checks above must be able to fail: a page with an undecodable image and a request to the network
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; img-src data:\"></head><body><p>text</p>"
        '<img alt="broken" src="data:image/png;base64,AAAA"><img alt="network" src="http://127.0.0.1:9/x.png">'
        "</body></html>"
    )
    seen = in_browser(page, tmp_path / "bad.png")
    assert any("Content Security Policy" in line for line in seen["console"])
    assert dict(seen["images"])["broken"] == 0


# ----------------------------------------------------------------------------------------------------------------------
# a Fashion-MNIST run, trained with the command a user types


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory):
    if find_data_dir(None) is None:
        pytest.skip("Fashion-MNIST is not installed (reslab data downloads it)")
    out = tmp_path_factory.mktemp("fmnist")
    cmd = [sys.executable, "-m", "reslab", "train", "--epochs", "1", "--train-subset", "1024", "--val-size", "500"]
    cmd += ["--output", str(out), "--name", "fm", "--threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": SRC})
    assert done.returncode == 0, done.stderr[-2000:]
    return out / "fm", done.stdout


def test_a_fashion_mnist_run_leaves_a_report_with_its_mistakes(fashion_run):
    run, stdout = fashion_run
    assert f"report: {run / 'report.html'}" in stdout
    state = json.loads((run / "report.json").read_text())
    analysis = state["analysis"]
    confusion = torch.tensor(analysis["confusion"])
    assert analysis["split"] == "test" and confusion.sum() == 10_000
    # the same weights, the same test images: the run's own last test accuracy
    history = read_checkpoint(run / "last.pt")["history"]
    assert confusion.trace().item() / 10_000 == pytest.approx(history[-1]["test_acc"], abs=1e-9)
    mistakes = analysis["mistakes"]
    assert len(mistakes) == min(MISTAKES_SHOWN, 10_000 - confusion.trace().item())
    assert all(m["true"] != m["pred"] for m in mistakes)
    assert [m["conf"] for m in mistakes] == sorted((m["conf"] for m in mistakes), reverse=True)
    grid = Image.open(run / "mistakes.png")
    assert grid.width > 6 * 100 and grid.height > 4 * 100  # 6 columns, 4 rows of 28x28 images enlarged
    page = (run / "report.html").read_text()
    assert "reslab train --epochs 1 --train-subset 1024" in page  # the command as typed
    for label in ("T-shirt/top", "Ankle boot", "Most confident mistakes", "Grad-CAM", "href='last.pt'"):
        assert label in page
    assert "http://" not in page and "https://" not in page


@needs_chromium
def test_the_fashion_mnist_report_renders_in_chromium(fashion_run, tmp_path):
    run, _ = fashion_run
    # curves, mistakes grid, Grad-CAM rows
    assert_renders(run / "report.html", tmp_path / "fashion.png", min_images=3)


# ----------------------------------------------------------------------------------------------------------------------
# an image-folder run (train/ and val/, no test/: the report shows the validation split)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    g = torch.Generator().manual_seed(0)
    colours = {"red": (150, 90, 90), "green": (90, 150, 90), "blue": (90, 90, 150)}
    names = list(colours)
    for split, n in (("train", 24), ("val", 8)):
        for c, (name, rgb) in enumerate(colours.items()):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                # a faint colour under strong noise; the first two validation images of each class carry the next
                # class's colour, so that even a model that learned the colours makes mistakes to show
                if split == "val" and i < 2:
                    rgb = colours[names[(c + 1) % len(names)]]
                elif split == "val" and i == 2:
                    rgb = colours[name]
                noise = torch.randint(-90, 90, (32, 32, 3), generator=g)
                image = (torch.tensor(rgb) + noise).clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(image).save(root / split / name / f"{i}.png")
    config = make_config(
        dataset="imagefolder", data_dir=str(root), epochs=1, batch_size=16, output=str(tmp_path_factory.mktemp("runs")),
        name="photos", threads=1, progress=False,
    )  # fmt: skip
    result = fit(config)
    return result.run_dir


def test_an_image_folder_run_reports_the_validation_split(folder_run):
    analysis = json.loads((folder_run / "report.json").read_text())["analysis"]
    assert analysis["split"] == "val" and analysis["classes"] == ["blue", "green", "red"]
    wrong = 24 - sum(analysis["confusion"][i][i] for i in range(3))
    assert wrong > 0 and len(analysis["mistakes"]) == wrong
    assert (folder_run / "mistakes.png").is_file() and (folder_run / "gradcam.png").is_file()


@needs_chromium
def test_the_image_folder_report_renders_in_chromium(folder_run, tmp_path):
    assert_renders(folder_run / "report.html", tmp_path / "folder.png", min_images=3)


def test_eval_adds_its_result_to_the_report(folder_run, capsys):
    assert main(["eval", str(folder_run), "--split", "val", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {folder_run / 'report.html'}" in printed
    entry = json.loads((folder_run / "report.json").read_text())["evals"][-1]
    assert entry["split"] == "val" and entry["checkpoint"] == "best.pt" and entry["total"] == 24
    assert f"accuracy {100 * entry['accuracy']:.2f}%" in printed
    page = (folder_run / "report.html").read_text()
    assert "Evaluations (reslab eval)" in page and f"{100 * entry['accuracy']:.2f}%" in page
    assert "Most confident mistakes" in page  # the earlier analysis stays
    assert "As run:" not in page  # fit() called from Python (here, pytest) has no command line to show


def test_reslab_report_redoes_the_analysis_or_keeps_the_old_one(folder_run, tmp_path, capsys):
    run = shutil.copytree(folder_run, tmp_path / "copy")
    before = json.loads((run / "report.json").read_text())["analysis"]
    assert main(["report", str(run), "--device", "cpu"]) == 0
    after = json.loads((run / "report.json").read_text())["analysis"]
    # last.pt holds the final weights the run analysed: the same predictions
    assert after["confusion"] == before["confusion"] and after["mistakes"] == before["mistakes"]
    assert after["weights"].startswith("last.pt")
    # the images are gone (a run copied to another machine): the page is made again, with the analysis it had
    ckpt = read_checkpoint(run / "last.pt")
    torch.save({**ckpt, "config": {**ckpt["config"], "data_dir": str(tmp_path / "gone")}}, run / "last.pt")
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert "note: no new analysis" in capsys.readouterr().out
    assert json.loads((run / "report.json").read_text())["analysis"] == after
    assert "Most confident mistakes" in (run / "report.html").read_text()


def test_the_live_page_reloads_itself_and_waits_for_the_end_for_the_analysis(folder_run, tmp_path):
    live = shutil.copytree(folder_run, tmp_path / "live")
    page = render_run(live, live=True).read_text()
    assert 'http-equiv="refresh"' in page and "training: epoch 1 of 1 done" in page
    assert "Most confident mistakes" not in page
    final = render_run(live).read_text()
    assert 'http-equiv="refresh"' not in final and "finished: 1 of 1 epochs" in final


def test_training_updates_the_page_as_epochs_finish(tmp_path, monkeypatch):
    import reslab.report

    pages = []

    def render_and_keep(run_dir, **kwargs):
        path = real(run_dir, **kwargs)
        pages.append(path.read_text())
        return path

    real = reslab.report.render_run
    monkeypatch.setattr(reslab.report, "render_run", render_and_keep)
    monkeypatch.setattr(reslab.report, "FIRST_UPDATE_S", 0.0)  # a run of seconds: updates from the first epoch on
    config = make_config(
        dataset="synthetic", epochs=3, train_subset=128, val_size=64, batch_size=32, output=str(tmp_path),
        name="live", threads=1, progress=False,
    )  # fmt: skip
    fit(config)
    first, final = pages[0], pages[-1]
    assert "training: epoch 1 of 3 done, step 4" in first and 'http-equiv="refresh"' in first
    assert "loss, accuracy and learning rate per epoch" in first and "Most confident mistakes" not in first
    assert "finished: 3 of 3 epochs" in final and 'http-equiv="refresh"' not in final
    assert len(pages) <= 3  # at most epochs 1 and 2 live (the last epoch's page is the final one), then the end


def test_a_stopped_run_says_how_to_continue_and_a_resumed_one_gets_its_analysis(tmp_path):
    config = make_config(
        dataset="synthetic", epochs=2, train_subset=256, val_size=64, batch_size=64, output=str(tmp_path),
        name="s", threads=1, progress=False, max_steps=4,
    )  # fmt: skip
    run = fit(config).run_dir
    page = (run / "report.html").read_text()
    assert "stopped after epoch 1 of 2, step 4" in page and f"reslab train --resume {run}" in page
    assert not (run / "mistakes.png").exists()
    fit(make_config(**{**config.to_dict(), "max_steps": None, "resume": str(run)}))
    assert "finished: 2 of 2 epochs" in (run / "report.html").read_text()
    assert (run / "mistakes.png").is_file()


def test_report_of_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "neither a run folder" in err[1]
    with pytest.raises(ReslabError, match="no folder"):
        report(tmp_path / "missing")


def test_an_interrupted_write_leaves_the_previous_report(folder_run, tmp_path, monkeypatch):
    run = shutil.copytree(folder_run, tmp_path / "copy")
    before = (run / "report.html").read_bytes()

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(ReslabError, match="no space left"):
        render_run(run)
    assert (run / "report.html").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.startswith(".report.html.tmp")]


# ----------------------------------------------------------------------------------------------------------------------
# an experiment folder


@pytest.fixture
def experiment(tmp_path):
    folder = tmp_path / "experiments" / "degradation-quick"
    for label, errors in (("plain-20", (0.6, 0.5)), ("resnet-20", (0.5, 0.3))):
        (folder / "runs" / label).mkdir(parents=True)
        rows = ["epoch,train_loss,train_acc,val_acc,test_acc,lr,step"]
        rows += [f"{e + 1},{1.5 - e / 2},{1 - err},,{1.02 - err},0.1,{8 * (e + 1)}" for e, err in enumerate(errors)]
        (folder / "runs" / label / "metrics.csv").write_text("\n".join(rows) + "\n")
    (folder / "results.json").write_text(json.dumps({"title": "plain vs residual", "runs": []}))
    (folder / "table.md").write_text(
        "| network | test error |\n|---|---:|\n| plain-20 | 48.00% |\n| resnet-20 | 28.00% |\n"
    )
    (folder / "verdict.txt").write_text("residual beats plain by 20.0 points\n")
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(folder / "figure.png")
    return folder


def test_an_experiment_report_shows_the_verdict_the_table_and_every_network(experiment, capsys):
    assert main(["report", str(experiment)]) == 0
    page = (experiment / "report.html").read_text()
    assert "residual beats plain by 20.0 points" in page
    assert "<td>resnet-20</td><td>28.00%</td>" in page
    assert "plain-20: 2 epochs" in page and "resnet-20: 2 epochs" in page
    assert page.count("<img") == 2  # the experiment's figure and the networks' curves


@needs_chromium
def test_the_experiment_report_renders_in_chromium(experiment, tmp_path):
    main(["report", str(experiment)])
    assert_renders(experiment / "report.html", tmp_path / "experiment.png", min_images=2)
