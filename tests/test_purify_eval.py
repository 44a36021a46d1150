"""`miga-fast purify-eval` on a tiny configuration: every purifier and attack runs on the
shipped digits models, the results are resumable, the report and the grid are written."""

import json
import subprocess
import sys

import torch

from miga_fast.app import purify_eval
from miga_fast.models import registry
from miga_fast.purify import UniformPurifier

TINY = dict(n=4, votes=1, pgd_steps=1, eot=1, stride=50, multi_u=2, autoattack=False, gradient="checkpoint")


def test_purify_eval_runs_resumes_and_reports(tmp_path):
    logs = []
    results = purify_eval.evaluate(tmp_path, ["digits"], quick=True, log=logs.append, **TINY)
    rows = results["rows"]
    purifiers = {r["purifier"] for r in rows}
    assert purifiers == {"none", "uniform t*=100", "heterogeneous single U=10", "heterogeneous multi U=2",
                         "heterogeneous none"}  # fmt: skip
    assert {r["attack"] for r in rows if r["purifier"] != "none"} == {
        "clean", "pgd-eot full gradient", "pgd-eot bpda", "pgd-eot surrogate"
    }  # fmt: skip
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    clean = {r["purifier"]: r for r in rows if r["attack"] == "clean"}
    single, multi = clean["heterogeneous single U=10"], clean["heterogeneous multi U=2"]
    assert single["model_calls"] == 2 * 2 + 3 and multi["model_calls"] == 2 * 2 + 3  # stride 50: 2 stage-1 steps
    assert (tmp_path / "report.md").read_text().count("| digits |") == len(rows)
    assert (tmp_path / "purify_digits.png").stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["rows"]) == len(rows)
    logs.clear()
    again = purify_eval.evaluate(tmp_path, ["digits"], quick=True, log=logs.append, **TINY)
    assert len(again["rows"]) == len(rows) and not any(" ..." in m for m in logs)  # nothing recomputed
    # an interrupted run resumes to the rows a whole run gives: drop two rows, rerun
    kept = json.loads((tmp_path / "results.json").read_text())
    dropped = kept["rows"][3:5]
    kept["rows"] = kept["rows"][:3] + kept["rows"][5:]
    (tmp_path / "results.json").write_text(json.dumps(kept))
    resumed = purify_eval.evaluate(tmp_path, ["digits"], quick=True, log=logs.append, **TINY)
    redone = [
        r for r in resumed["rows"] if (r["purifier"], r["attack"]) in {(d["purifier"], d["attack"]) for d in dropped}
    ]
    assert [r["accuracy"] for r in redone] == [d["accuracy"] for d in dropped]


def test_pgd_eot_stays_in_the_ball_and_raises_the_loss():
    classifier = registry.load("cnn_digits").eval()
    from miga_fast import data

    x, y = data.load_digits("test")
    x, y = x[:8], y[:8]
    adv = purify_eval.pgd_eot(classifier, x, y, steps=5, eot=1)
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    loss = torch.nn.functional.cross_entropy
    with torch.no_grad():
        assert loss(classifier(adv), y) > loss(classifier(x), y)
    p = UniformPurifier(registry.load("ddpm_digits"), stride=50)
    model = purify_eval._Single(p, classifier, "checkpoint", torch.Generator().manual_seed(0))
    adv = purify_eval.pgd_eot(model, x[:2], y[:2], steps=1, eot=2)
    assert (adv - x[:2]).abs().max() > 0


def test_cli_rejects_bad_settings(tmp_path):
    out = subprocess.run(
        [sys.executable, "-P", "-m", "miga_fast.app.cli", "purify-eval", "--n", "0", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 2 and "--n must be >= 1" in out.stderr


def test_autoattack_path_runs_on_the_classifier_alone():
    """torchattacks' AutoAttack (rand) through the evaluation's adapter, on the bare classifier
    (the purified models take the same path; on a CPU they are run with --autoattack only)."""
    import pytest

    pytest.importorskip("torchattacks")
    from miga_fast import data

    classifier = registry.load("cnn_digits").eval()
    x, y = data.load_digits("test")
    adv = purify_eval._autoattack(None, classifier, x[:4], y[:4], {}, 0, print)
    assert adv.shape == x[:4].shape and (adv - x[:4]).abs().max() <= 8 / 255 + 1e-6
    with torch.no_grad():
        assert (classifier(adv).argmax(1) == y[:4]).float().mean() < 1
