"""The `miga-fast` commands end to end: output, files, and clear errors for bad input."""

import json
import subprocess
import sys
from pathlib import Path


def _cli(*args, timeout=300):
    exe = Path(sys.executable).with_name("miga-fast")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout)


def test_ssim_attack_command(tmp_path):
    out = _cli("ssim-attack", "--data", "digits", "--n", "12", "--steps", "2", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "SSIMAttack (pgd, l2 step)" in out.stdout and "PGD linf" in out.stdout and "SSIM-matched" in out.stdout
    report = json.loads((tmp_path / "ssim_attack.json").read_text())
    r = report[0]
    assert r["data"] == "digits" and r["split"] == "test" and len(r["rows"]) == 5
    assert r["images"] == 12 and r["val_images"] == 12
    for row in r["rows"]:
        for cam in ("grad_cam", "grad_cam_pp"):
            a = row["agreement"][cam]
            assert -1 <= a["correlation"]["mean"] <= 1 and 0 <= a["iou"]["mean"] <= 1
            assert a["random_in_ball_iou"]["sd_over_seeds"] >= 0 and "other_image_iou" in a
    assert (tmp_path / "ssim_attack_digits.png").stat().st_size > 1000


def test_ssim_attack_bad_input():
    out = _cli("ssim-attack", "--tau", "1.5")
    assert out.returncode == 2 and "--tau" in out.stderr and "Traceback" not in out.stderr
    out = _cli("ssim-attack", "--data", "cifar")
    assert out.returncode == 2 and "invalid choice" in out.stderr and "Traceback" not in out.stderr


def test_demo_command(tmp_path):
    """The main job, small: both data sets, every attack and defense, the report files."""
    from miga_fast.app import demo

    out = _cli("demo", "--n", "8", "--steps", "2", "--out", str(tmp_path), timeout=600)
    assert out.returncode == 0, out.stderr
    for name in (
        "MIGA (known task)",
        "MIGA (unknown task, MINE)",
        "MIGA (unknown task, reference)",
        "denoiser degradation",
        "end-to-end PGD",
        "MIGA (known task) through the purifier",
    ):
        assert name in out.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["data"] for r in results] == ["natural", "digits"]
    for r in results:
        # eps and lambda_rec were chosen on val: the smallest eps reaching the goal, else the largest
        sel = r["selection"]
        assert sel["val_images"] == 8 and r["eps"] in demo.EPS_GRID and r["lambda_rec"] in demo.LAMBDA_REC_GRID
        reached = [t["eps"] for t in sel["trials"] if t["lambda_rec"] == 10.0 and t["asr"] >= demo.ASR_GOAL]
        assert r["eps"] == (min(reached) if reached else demo.EPS_GRID[-1])
        assert {row["eps"] for row in r["rows"]} == {r["eps"]}
        assert {row["defense"] for row in r["rows"]} == {"none", "squeeze", "nlm", "diffusion", "heterogeneous"}
        assert {row["attack"] for row in r["rows"]} == set(demo.ATTACKS)
    report = (tmp_path / "report.md").read_text()
    assert "| attack | defense | ASR |" in report and "Reference variant" in report
    assert "independent of the attack" in report and "| critic | before | after | random, same budget |" in report
    mi = [row["mi"] for r in results for row in r["rows"] if "mi" in row]
    assert len(mi) == 2 * 5  # one measurement per data set, repeated on each defense's row
    assert set(mi[0]) == {"mlp", "cnn"} and len(mi[0]["mlp"]["after"]["values"]) == 5
    assert (tmp_path / "grid_natural.png").stat().st_size > 1000
    assert (tmp_path / "grid_digits.png").stat().st_size > 1000


def test_unknown_task_command(tmp_path):
    """The unknown-task experiment, small: lambda_mi chosen on val, every row of the curve on
    test, judged by the held-out classifier, the reference rows with their toward-reference
    measures."""
    out = _cli(
        "unknown-task", "--data", "digits", "--n", "8", "--steps", "2", "--pretrain-steps", "20",
        "--out", str(tmp_path), timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (r,) = json.loads((tmp_path / "unknown_task.json").read_text())
    assert r["judge"] == "resnet_digits" and r["pipeline_classifier"] == "cnn_digits"
    assert r["val"]["chosen_lambda_mi"] in (0.01, 0.1, 1.0, 10.0) and len(r["val"]["rows"]) == 4
    assert len(r["curve"]) == 3
    for point in r["curve"]:
        rows = point["rows"]
        assert len(rows) == 7 and "control: random signs, same budget" in rows
        for v in rows.values():
            assert 0 <= v["labels_changed"] <= 1 and v["psnr"] > 0
        assert "reference_similarity_gain" in rows["reference variant (population)"]
    report = (tmp_path / "report.md").read_text()
    assert "| eps | attack | labels changed |" in report and "Toward the reference" in report
    out = _cli("unknown-task", "--n", "1")
    assert out.returncode == 2 and "--n" in out.stderr


def test_attack_command_runs_and_resumes(tmp_path):
    args = (
        "attack",
        "--denoiser",
        "dncnn_digits",
        "--classifier",
        "cnn_digits",
        "--data",
        "digits",
        "--n",
        "24",
        "--batch-size",
        "8",
        "--steps",
        "2",
        "--eps",
        "16/255",
        "--out",
        str(tmp_path),
    )
    out = _cli(*args)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n"] == 24 and summary["batches"] == 3 and 0 <= summary["asr"] <= 1
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    again = _cli(*args)  # everything is done: nothing is redone or repeated
    assert again.returncode == 0
    assert (tmp_path / "results.jsonl").read_text().splitlines() == lines


def test_attack_command_bfloat16_precision_is_recorded(tmp_path):
    out = _cli(
        "attack", "--denoiser", "dncnn_digits", "--classifier", "cnn_digits", "--data", "digits", "--n", "8",
        "--steps", "1", "--precision", "bfloat16", "--out", str(tmp_path),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["parameters"]["precision"] == "bfloat16"


def test_attack_command_users_own_models_and_folders(tmp_path):
    """A user's TorchScript denoiser, a user's state dict with a named architecture, and an
    image folder (streamed, by 2 worker processes)."""
    import torch
    from PIL import Image

    from miga_fast.models import registry

    torch.jit.script(registry.load("dncnn_digits")).save(str(tmp_path / "denoiser.ts"))
    torch.save(registry.load("cnn_digits").state_dict(), tmp_path / "classifier.pt")
    digits, labels = __import__("miga_fast.data", fromlist=["load_digits"]).load_digits("test")
    for i in range(6):  # class folders named by the classifier's class index
        folder = tmp_path / "imgs" / str(int(labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits[i, 0] * 255).round().byte().numpy(), mode="L").save(folder / f"{i}.png")
    out = _cli(
        "attack",
        "--denoiser",
        str(tmp_path / "denoiser.ts"),
        "--trust-model-file",
        "--classifier",
        str(tmp_path / "classifier.pt"),
        "--classifier-arch",
        "small_cnn",
        "--classifier-kwargs",
        '{"channels": 1, "classes": 10, "width": 16}',
        "--data",
        str(tmp_path / "imgs"),
        "--channels",
        "1",
        "--steps",
        "2",
        "--eps",
        "16/255",
        "--batch-size",
        "4",
        "--workers",
        "2",
        "--out",
        str(tmp_path / "out"),
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n"] == 6 and summary["batches"] == 2 and summary["psnr"] > 15


def test_attack_command_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    cases = [
        (("--denoiser", "nope", "--data", "digits"), "unknown model"),
        (("--denoiser", "dncnn_digits", "--data", str(tmp_path / "empty")), "no PNG/JPEG images"),
        (("--denoiser", "dncnn_digits", "--classifier", "cnn_digits", "--data", "natural"), "cannot take images"),
        (("--denoiser", "dncnn_digits", "--data", "digits", "--eps", "300"), "ambiguous"),
        (("--denoiser", "dncnn_digits", "--data", "digits", "--attack", "e2e-pgd"), "needs --classifier"),
        (("--denoiser", "dncnn_digits", "--data", "digits", "--denoiser-kwargs", "{bad"), "--denoiser-kwargs"),
    ]
    for args, message in cases:
        out = _cli("attack", *args, "--out", str(tmp_path / "o"))
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)


def test_the_library_never_imports_the_application():
    code = (
        "import sys, pkgutil, importlib, miga_fast\n"
        "def walk(pkg):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if m.name.startswith(('miga_fast.app', 'miga_fast.triton_kernels', 'miga_fast._C')):\n"
        "            continue\n"
        "        mod = importlib.import_module(m.name)\n"
        "        if m.ispkg:\n"
        "            walk(mod)\n"
        "walk(miga_fast)\n"
        "print(sorted(n for n in sys.modules if n.startswith('miga_fast.app')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_one_setups_table_names_the_classes():
    from miga_fast import data
    from miga_fast.app import demo, experiments, setups

    assert setups.setup("natural").classes == data.NATURAL_CLASSES
    assert setups.setup("natural").class_name(1) == "chelsea"
    assert setups.setup("natural32") is setups.SETUPS["natural"]  # the manifest's name for the same data
    assert demo.SETUPS == ["natural", "digits"] and experiments.SETUPS == ["natural", "digits"]
    x, y = setups.setup("faces").load("test")
    assert x.shape[0] == y.shape[0] > 0 and set(y.tolist()) <= {0, 1}


def test_labelled_grid_has_row_titles_and_captions(tmp_path):
    """Each row's title is drawn in a margin left of the images, each caption under its image."""
    import numpy as np
    import torch
    from PIL import Image

    from miga_fast.app.viz import save_labelled_grid

    rows = [torch.ones(3, 3, 8, 8), torch.ones(3, 3, 8, 8)]  # white images: any dark pixel is text
    titles = ["clean x", "a longer row title"]
    path = save_labelled_grid(rows, titles, tmp_path / "g.png", captions=[["cat"] * 3, ["dog"] * 3], scale=3)
    a = np.asarray(Image.open(path).convert("L"))
    text = a < 128
    margin = a.shape[1] - 3 * (24 + 4) - 4  # the title column's width
    assert margin > 60 and text[:, :margin].any(axis=1).sum() >= 2 * 5  # two titles, several pixel rows each
    band = text[:, margin:]
    assert band.any(axis=1).sum() >= 2 * 5  # the captions under the images
    with __import__("pytest").raises(ValueError, match="row titles"):
        save_labelled_grid(rows, titles[:1], tmp_path / "bad.png")


def test_attack_success_rate_is_computed_in_one_place():
    """The demo's ASR is metrics.attack_success_rate: NaN (not 0) when no sample was right before."""
    import inspect
    import math

    import torch

    from miga_fast import metrics
    from miga_fast.app import demo

    assert math.isnan(metrics.attack_success_rate(torch.tensor([True, True]), torch.tensor([False, False])))
    assert "metrics.attack_success_rate(" in inspect.getsource(demo.run_setup)
