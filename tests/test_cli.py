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
    assert "SSIMAttack (pgd)" in out.stdout and "PGD linf" in out.stdout and "SSIM-matched" in out.stdout
    report = json.loads((tmp_path / "ssim_attack.json").read_text())
    assert report[0]["data"] == "digits" and len(report[0]["rows"]) == 4
    assert (tmp_path / "ssim_attack_digits.png").stat().st_size > 1000


def test_ssim_attack_bad_input():
    out = _cli("ssim-attack", "--tau", "1.5")
    assert out.returncode == 2 and "--tau" in out.stderr and "Traceback" not in out.stderr
    out = _cli("ssim-attack", "--data", "cifar")
    assert out.returncode == 2 and "invalid choice" in out.stderr and "Traceback" not in out.stderr


def test_demo_command(tmp_path):
    """The main job, small: both data sets, every attack and defense, the report files."""
    out = _cli("demo", "--n", "8", "--steps", "2", "--out", str(tmp_path), timeout=600)
    assert out.returncode == 0, out.stderr
    for name in ("MIGA (known task)", "MIGA (unknown task, MINE)", "MIGA (unknown task, reference)",
                 "denoiser degradation", "end-to-end PGD"):
        assert name in out.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["data"] for r in results] == ["natural", "digits"]
    defenses = {row["defense"] for row in results[1]["rows"]}
    assert defenses == {"none", "squeeze", "nlm", "diffusion"}
    report = (tmp_path / "report.md").read_text()
    assert "| attack | defense | ASR |" in report and "MI estimate" in report and "Reference variant" in report
    assert (tmp_path / "grid_natural.png").stat().st_size > 1000
    assert (tmp_path / "grid_digits.png").stat().st_size > 1000


def test_attack_command_runs_and_resumes(tmp_path):
    args = ("attack", "--denoiser", "dncnn_digits", "--classifier", "cnn_digits", "--data", "digits", "--n", "24",
            "--batch-size", "8", "--steps", "2", "--eps", "16/255", "--out", str(tmp_path))
    out = _cli(*args)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n"] == 24 and summary["batches"] == 3 and 0 <= summary["asr"] <= 1
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    again = _cli(*args)  # everything is done: nothing is redone or repeated
    assert again.returncode == 0
    assert (tmp_path / "results.jsonl").read_text().splitlines() == lines


def test_attack_command_users_own_models_and_folders(tmp_path):
    """A user's TorchScript denoiser, a user's state dict with a named architecture, and an
    image folder."""
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
    out = _cli("attack", "--denoiser", str(tmp_path / "denoiser.ts"), "--trust-model-file",
               "--classifier", str(tmp_path / "classifier.pt"),
               "--classifier-arch", "small_cnn", "--classifier-kwargs", '{"channels": 1, "classes": 10, "width": 16}',
               "--data", str(tmp_path / "imgs"), "--channels", "1", "--steps", "2", "--eps", "16/255",
               "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n"] == 6 and summary["psnr"] > 15


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
