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
