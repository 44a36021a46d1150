"""Run the peers' own test suites against miga_fast's drop-ins (not part of `make test`:
the suites are not in the peers' wheels, so this needs their source checkouts).

    python tests/peer_suites.py --pytorch-msssim PATH --torchattacks PATH [--out DIR]

PATH: a checkout (working tree or bare git directory) of pytorch-msssim
(github.com/VainF/pytorch-msssim) or of torchattacks (adversarial-attacks-pytorch).

Every suite runs twice, as the control (the peer's own package) and as the drop-in:
- pytorch-msssim: each script of its tests/ folder, with `pytorch_msssim` on the path
  being a package that re-exports miga_fast.integrations.pytorch_msssim. The scripts
  download a Kodak photo when it is missing: a bundled scikit-image photo is put in its
  place (no network here). Scripts that need TensorFlow or a GPU are listed as not run
  when those are missing.
- torchattacks: code_coverage/test_atks.py under pytest, every attack of torchattacks
  on 5 images, with torchattacks patched (miga_fast.integrations.torchattacks.patch();
  --torchattacks-k selects tests, as pytest -k does)
  for the drop-in. Its `robustbench` helpers (which download a CIFAR-10 model and data)
  are replaced by the project's natural-patch ResNet and held-out photo patches.

Writes peer_suites.json and peer_suites.md to --out (default benchmarks/results/peer_suites).
--extra-path DIR puts packages on the scripts' path (e.g. TensorFlow, installed apart with
`pip install --target DIR tensorflow-cpu`, for the script that compares with it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARK = "[peer_suites] pytorch_msssim is miga_fast.integrations.pytorch_msssim"
SHIM_MSSSIM = f"""import sys

from miga_fast.integrations.pytorch_msssim import *  # noqa: F401,F403

print({MARK!r}, file=sys.stderr)
"""

CONFTEST_PATCH = """import torchattacks

import miga_fast.integrations.torchattacks as fast

fast.patch()  # torchattacks.PGD, PGDL2, MIFGSM, EOTPGD, APGD are miga_fast's from here on
assert all(getattr(torchattacks, name) is cls for name, cls in fast.PATCHED.items())
"""

ROBUSTBENCH_UTILS = '''"""Stand-ins for robustbench's helpers, offline: the project's own model and data."""
import torch
from miga_fast.models import registry


def load_model(model_name="Standard", model_dir="./models", norm="Linf", **kwargs):
    return registry.load("resnet_natural").eval()


def clean_accuracy(model, x, y, batch_size=100, device=None):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()
'''

ROBUSTBENCH_DATA = '''"""Stand-in for robustbench.data.load_cifar10: held-out 32x32 photo patches."""
from miga_fast import data


def load_cifar10(n_examples=None, data_dir="./data", **kwargs):
    x, y = data.load_natural_patches("test", 32)
    return (x, y) if n_examples is None else (x[:n_examples], y[:n_examples])
'''


def _export(checkout: Path, folder: str, dest: Path) -> Path:
    """`folder` of a checkout (a working tree, or a bare git directory) copied to dest."""
    if (checkout / folder).is_dir():
        shutil.copytree(checkout / folder, dest / folder)
    else:
        archive = subprocess.run(
            ["git", "--git-dir", str(checkout), "archive", "HEAD", folder], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / folder


def _run(cmd, cwd, env, timeout=1800) -> dict:
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        rc, text = out.returncode, out.stdout + out.stderr
    except subprocess.TimeoutExpired as err:
        rc, text = "timeout", str(err)
    seconds = round(time.perf_counter() - start, 1)
    return {"returncode": rc, "passed": rc == 0, "seconds": seconds, "shim": MARK in text, "tail": text[-1500:]}


EXTRA_PATH: list[str] = []  # --extra-path: packages for the peers' scripts (TensorFlow), after the shim


def _env(extra_path: Path | None) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    paths = ([str(extra_path)] if extra_path is not None else []) + EXTRA_PATH
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "")
    return env


def pytorch_msssim_suite(checkout: Path, work: Path) -> dict:
    from miga_fast import data

    tests = _export(checkout, "tests", work)
    shutil.copy(data._skimage_data_dir() / "astronaut.png", tests / "kodim10.png")  # the scripts' Kodak photo
    shim = work / "shim"
    (shim / "pytorch_msssim").mkdir(parents=True)
    (shim / "pytorch_msssim" / "__init__.py").write_text(SHIM_MSSSIM)
    results = {}
    for script in sorted(tests.glob("tests_*.py")):
        needs = []
        has_tf = importlib.util.find_spec("tensorflow") is not None or any(
            (Path(p) / "tensorflow").is_dir() for p in EXTRA_PATH
        )
        if "tf" in script.stem and not has_tf:
            needs.append("TensorFlow")
        if "cuda" in script.stem and not _cuda():
            needs.append("a GPU")
        if needs:
            results[script.name] = {"not_run": f"needs {' and '.join(needs)}"}
            continue
        runs = {
            label: _run([sys.executable, script.name], tests, _env(path))
            for label, path in (("control", None), ("drop_in", shim))
        }
        # the drop-in run imported the shim, the control run did not
        runs["drop_in"]["passed"] &= runs["drop_in"]["shim"]
        runs["control"]["passed"] &= not runs["control"]["shim"]
        results[script.name] = runs
    return results


def torchattacks_suite(checkout: Path, work: Path, select: str | None = None) -> dict:
    results = {}
    for label in ("control", "drop_in"):
        root = work / label
        root.mkdir()
        cov = root / "code_coverage"
        cov.mkdir()
        if (checkout / "code_coverage").is_dir():
            shutil.copy(checkout / "code_coverage" / "test_atks.py", cov / "test_atks.py")
        else:
            src = subprocess.run(
                ["git", "--git-dir", str(checkout), "show", "HEAD:code_coverage/test_atks.py"],
                check=True,
                capture_output=True,
            ).stdout
            (cov / "test_atks.py").write_bytes(src)
        (root / "robustbench").mkdir()
        (root / "robustbench" / "__init__.py").write_text("")
        (root / "robustbench" / "utils.py").write_text(ROBUSTBENCH_UTILS)
        (root / "robustbench" / "data.py").write_text(ROBUSTBENCH_DATA)
        if label == "drop_in":
            (cov / "conftest.py").write_text(CONFTEST_PATCH)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "code_coverage/test_atks.py", "-rA"]
        cmd += ["-k", select] if select else []
        run = _run(cmd, root, _env(None))
        run["selection"] = select or "all"
        lines = run["tail"].splitlines()
        run["summary"] = next((ln for ln in reversed(lines) if " passed" in ln or " failed" in ln), "")
        results[label] = run
    return results


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def render(report: dict) -> tuple[list[str], bool]:
    """The Markdown table of a report, and whether every drop-in passed where its control did."""
    when = f"{report['date']}, {report['machine']}, torch {report['torch']}"
    lines = [f"# Peer test suites against the drop-ins ({when})", ""]
    lines += ["| suite | test | control (the peer) | drop-in (miga_fast) |", "|---|---|---|---|"]
    ok = True
    for script, r in report.get("pytorch_msssim", {}).items():
        if "not_run" in r:
            lines.append(f"| pytorch-msssim | {script} | not run: {r['not_run']} | not run: {r['not_run']} |")
            continue
        c, d = r["control"], r["drop_in"]
        ok &= d["passed"] or not c["passed"]
        lines.append(
            f"| pytorch-msssim | {script} | {'pass' if c['passed'] else 'FAIL'} ({c['seconds']} s) "
            f"| {'pass' if d['passed'] else 'FAIL'} ({d['seconds']} s) |"
        )
    for key in sorted(k for k in report if k.startswith("torchattacks")):
        c, d = report[key]["control"], report[key]["drop_in"]
        ok &= d["passed"] or not c["passed"]
        which = "code_coverage/test_atks.py" + key[len("torchattacks") :]
        lines.append(
            f"| torchattacks | {which} | {c['summary'] or c['returncode']} ({c['seconds']} s) "
            f"| {d['summary'] or d['returncode']} ({d['seconds']} s) |"
        )
    return lines, ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pytorch-msssim", type=Path)
    p.add_argument("--torchattacks", type=Path)
    p.add_argument("--merge", type=Path, nargs="*", default=[], help="earlier peer_suites.json reports to include")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/peer_suites"))
    p.add_argument("--extra-path", action="append", default=[], help="a folder of packages the scripts need")
    p.add_argument("--torchattacks-k", default=None, help="pytest -k selection of torchattacks' tests (default: all)")
    args = p.parse_args()
    EXTRA_PATH.extend(str(Path(e).resolve()) for e in args.extra_path)
    import torch

    import miga_fast

    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "miga_fast": miga_fast.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    for earlier in args.merge:
        report.update(
            {k: v for k, v in json.loads(earlier.read_text()).items() if k in ("pytorch_msssim", "torchattacks")}
        )
    with tempfile.TemporaryDirectory() as tmp:
        if args.pytorch_msssim:
            (Path(tmp) / "msssim").mkdir()
            report["pytorch_msssim"] = pytorch_msssim_suite(args.pytorch_msssim, Path(tmp) / "msssim")
        if args.torchattacks:
            (Path(tmp) / "atks").mkdir()
            key = "torchattacks" if not args.torchattacks_k else f"torchattacks -k {args.torchattacks_k}"
            report[key] = torchattacks_suite(args.torchattacks, Path(tmp) / "atks", args.torchattacks_k)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peer_suites.json").write_text(json.dumps(report, indent=2) + "\n")
    lines, ok = render(report)
    (args.out / "peer_suites.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
