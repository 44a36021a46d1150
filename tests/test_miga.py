"""MIGA end to end on the shipped models: the known task flips labels at a small PSNR
cost where the degradation baseline costs PSNR and flips few; fused and reference paths
agree; the unknown task lowers the MI estimate; run() resumes without losing or
repeating batches; bad input gets clear errors."""

import json

import pytest
import torch

import miga_fast
from miga_fast import data, metrics
from miga_fast.attacks import MIGA, DenoiserDegradation, EndToEndPGD
from miga_fast.mine import measure_mi
from miga_fast.models import registry


@pytest.fixture(scope="module")
def natural():
    x, y = data.load_natural_patches("test", 32)
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:32]
    x, y = x[idx], y[idx]
    return (
        x,
        y,
        data.add_gaussian_noise(x, 25, generator=0),
        registry.load("dncnn_natural"),
        registry.load("resnet_natural"),
    )


@pytest.fixture(scope="module")
def digits():
    x, y = data.load_digits("test")
    x, y = x[:96], y[:96]
    return x, y, data.add_gaussian_noise(x, 25, generator=0), registry.load("dncnn_digits"), registry.load("cnn_digits")


def test_known_task_flips_labels_and_keeps_the_output_clean(natural):
    x, y, xn, D, F = natural
    res = MIGA(D, F, eps=8 / 255, steps=20, compile=False)(xn, y, x_clean=x)
    clean_psnr = float(metrics.psnr(res.denoised_clean.clamp(0, 1), x).mean())
    assert res.attack_success_rate() >= 0.7
    assert float(res.psnr.mean()) > clean_psnr - 3.0
    assert float(res.linf.max()) <= 8 / 255 + 1e-6
    assert float((res.adversarial - xn).abs().max()) <= 8 / 255 + 1e-6
    assert res.adversarial.min() >= 0 and res.adversarial.max() <= 1
    assert set(res.losses) == {"rec", "mi"} and len(res.losses["mi"]) == 20
    degr = DenoiserDegradation(D, F, eps=8 / 255, steps=20, compile=False)(xn, y, x_clean=x)
    # the baseline degrades the output much more and changes far fewer labels
    assert float(degr.psnr.mean()) < float(res.psnr.mean()) - 1.5
    assert degr.attack_success_rate() < res.attack_success_rate() - 0.4


def test_known_task_on_digits_at_the_stated_eps(digits):
    x, y, xn, D, F = digits
    res = MIGA(D, F, eps=16 / 255, steps=20, compile=False)(xn[:48], y[:48], x_clean=x[:48])
    assert res.attack_success_rate() >= 0.7
    assert float(res.psnr.mean()) > float(metrics.psnr(res.denoised_clean.clamp(0, 1), x[:48]).mean()) - 6.0


def test_targeted_and_end_to_end(natural):
    x, y, xn, D, F = natural
    target = (y + 1) % 8
    res = MIGA(D, F, eps=8 / 255, steps=20, targeted=True, compile=False)(xn, target, x_clean=x)
    assert res.attack_success_rate() >= 0.3  # a chosen class is harder than any other: 44% measured
    e2e = EndToEndPGD(D, F, eps=8 / 255, steps=10, compile=False)(xn, y, x_clean=x)
    assert e2e.attack_success_rate() >= 0.7


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fused_and_reference_paths_agree(natural, norm):
    x, y, xn, D, F = natural
    eps = 8 / 255 if norm == "linf" else 1.0
    a = MIGA(D, F, eps=eps, norm=norm, steps=5, compile=False)(xn[:8], y[:8], x_clean=x[:8])
    with miga_fast.set_backend("reference"):
        b = MIGA(D, F, eps=eps, norm=norm, steps=5, compile=False)(xn[:8], y[:8], x_clean=x[:8])
    torch.testing.assert_close(a.adversarial, b.adversarial, rtol=0, atol=5e-5)  # 5 steps through D: rounding grows


def test_ssim_norm_keeps_the_ssim_bound(natural):
    x, y, xn, D, F = natural
    from miga_fast import ops

    res = MIGA(D, F, norm="ssim", tau=0.9, steps=5, compile=False)(xn[:8], y[:8], x_clean=x[:8])
    assert bool((ops.ssim(res.adversarial.double(), xn[:8].double()) >= 0.9 - 1e-6).all())


def test_unknown_task_lowers_the_mi_that_independent_critics_measure(digits):
    """MI measured by critics independent of the attack (other seeds, trained on the training
    split's pairs, evaluated on the attacked test images), against the control of a random
    sign perturbation of the same l-inf budget: the attack lowers the measured MI by more
    than the seeds' spread, and by more than the random perturbation does."""
    x, y, xn, D, F = digits
    res = MIGA(D, None, eps=16 / 255, steps=20, lambda_rec=1.0, compile=False)(xn, None, x_clean=x)
    assert res.success is None
    xt, _ = data.load_digits("train")
    signs = torch.randint(0, 2, xn.shape, generator=torch.Generator().manual_seed(7)) * 2 - 1
    with torch.no_grad():
        fit = (xt, D(data.add_gaussian_noise(xt, 25, generator=1)).clamp(0, 1))
        random_out = D((xn + signs * 16 / 255).clamp(0, 1)).clamp(0, 1)
    sets = {"before": (x, res.denoised_clean), "after": (x, res.denoised), "random": (x, random_out)}
    m = measure_mi(fit, sets, architectures=("mlp",), steps=200, batch_size=128, hidden=64)["mlp"]
    assert len(m["after"]["values"]) == 5
    spread = m["before"]["sd"] + m["after"]["sd"]
    assert m["after"]["mean"] < m["before"]["mean"] - spread, m
    assert m["after"]["mean"] < m["random"]["mean"] - m["random"]["sd"] - m["after"]["sd"], m


def test_run_resumes_without_losing_or_repeating_batches(digits, tmp_path, monkeypatch, capsys):
    x, y, _, D, F = digits
    x, y = x[:40], y[:40]
    full = MIGA(D, F, eps=16 / 255, steps=3, compile=False).run((x, y), tmp_path / "full", batch_size=8, progress=False)
    attack = MIGA(D, F, eps=16 / 255, steps=3, compile=False)
    calls = {"n": 0}
    original = attack.forward

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(attack, "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        attack.run((x, y), tmp_path / "part", batch_size=8, progress=False)
    log = tmp_path / "part" / "results.jsonl"
    first = log.read_text().splitlines()
    assert [json.loads(line)["batch"] for line in first] == [0, 1]
    with log.open("a") as f:  # a line cut by the interruption is redone, not trusted
        f.write('{"batch": 2, "n": 8, "ps')
    monkeypatch.setattr(attack, "forward", original)
    capsys.readouterr()
    summary = attack.run((x, y), tmp_path / "part", batch_size=8)  # with the progress bar (tqdm, on stderr)
    bar = capsys.readouterr().err
    assert "miga" in bar and "16/40" in bar and "40/40" in bar, bar  # starts at the 2 batches (16 images) done
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]
    assert sorted(r["batch"] for r in lines) == [0, 1, 2, 3, 4]
    assert log.read_text().splitlines()[:2] == first
    assert summary["n"] == full["n"] == 40
    for key in ("asr", "psnr", "ssim", "l2"):
        assert summary[key] == pytest.approx(full[key], rel=1e-5, abs=1e-6)


def test_bad_input(natural):
    x, y, xn, D, F = natural
    with pytest.raises(ValueError, match="`eps` must be >= 0"):
        MIGA(D, F, eps=-0.1)
    with pytest.raises(ValueError, match="`eps` must lie in"):
        MIGA(D, F, eps=2.0)
    with pytest.raises(ValueError, match="needs a classifier"):
        MIGA(D, None, task="known")
    with pytest.raises(ValueError, match="`norm` must be one of"):
        MIGA(D, F, norm="l1")
    attack = MIGA(D, F, steps=1, compile=False)
    with pytest.raises(ValueError, match="`labels` must have shape"):
        attack(xn, y[:3])
    with pytest.raises(ValueError, match="known task needs `labels`"):
        attack(xn)
    bad = xn.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="`x_noisy` contains NaN"):
        attack(bad, y)
    with pytest.raises(ValueError, match="`x_clean` must have x_noisy's shape"):
        attack(xn, y, x_clean=x[:4])
    with pytest.raises(ValueError, match=r"`x_noisy` must lie in \[0, 1\]"):
        attack(xn * 2, y)
    with pytest.raises(ValueError, match="empty"):
        attack.run((x[:0], y[:0]), "/tmp/never-written", progress=False)


def test_bfloat16_precision_runs_the_models_in_bfloat16_and_keeps_delta_float32(rng):
    """precision="bfloat16": the models' convolutions run under autocast (a hook sees
    bfloat16 activations); delta, its budget and the box stay exact float32; the weights
    are untouched; any other precision is refused by name."""
    from miga_fast.models import DnCNN
    from miga_fast.models.classifiers import SmallCNN

    torch.manual_seed(0)
    D, F = DnCNN(3, 3, 8).eval(), SmallCNN(3, 10, 8).eval()
    seen = []
    D.body[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.rand(4, 3, 16, 16, generator=rng)
    y = torch.randint(0, 10, (4,), generator=rng)
    eps = 8 / 255
    res = MIGA(D, F, eps=eps, steps=3, compile=False, precision="bfloat16")(x, y)
    assert torch.bfloat16 in seen
    assert res.delta.dtype == torch.float32 and float(res.delta.abs().max()) <= eps + 1e-7
    assert float(res.adversarial.min()) >= 0 and float(res.adversarial.max()) <= 1
    assert all(p.dtype == torch.float32 for p in list(D.parameters()) + list(F.parameters()))
    seen.clear()
    MIGA(D, F, eps=eps, steps=1, compile=False)(x, y)
    assert torch.bfloat16 not in seen
    with pytest.raises(ValueError, match="precision"):
        MIGA(D, F, eps=eps, precision="float16")


def test_one_clamping_rule_for_the_pipeline_image(rng):
    """A denoiser whose outputs leave [0, 1]: the result's images are clamped, and success,
    PSNR and SSIM are judged on exactly those images (DenoiserAttack.pipeline_image)."""

    class Overshoot(torch.nn.Module):
        def forward(self, x):
            return 1.6 * x - 0.3

    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    torch.nn.init.normal_(classifier[1].weight, generator=rng)
    x = torch.rand((6, 3, 8, 8), generator=rng)
    labels = classifier(Overshoot()(x).clamp(0, 1)).argmax(1)
    res = MIGA(Overshoot(), classifier, eps=8 / 255, steps=3, compile=False)(x, labels, x_clean=x)
    assert res.denoised.min() >= 0 and res.denoised.max() <= 1
    assert res.denoised_clean.min() >= 0 and res.denoised_clean.max() <= 1
    torch.testing.assert_close(res.denoised_clean, Overshoot()(x).clamp(0, 1))
    with torch.no_grad():
        assert torch.equal(res.success, classifier(res.denoised).argmax(1) != labels)
    torch.testing.assert_close(res.psnr, metrics.psnr(res.denoised, x))


def test_population_critic_is_pretrained_persists_and_replays_the_pool(digits, rng):
    """pretrain_critic: reproducible from its seed, and its bound on held-out clean pairs is
    far above the bound on mismatched pairs. MIGA with mine= and critic_pool=: the critic
    keeps training across batches (its weights move, it is the same object), each critic
    step sees the batch and as many pool pairs, and a bad pool is refused."""
    from miga_fast.mine import pretrain_critic

    x, y, xn, D, F = digits
    xt, _ = data.load_digits("train")
    mine, pool = pretrain_critic(D, xt[:512], steps=300, batch_size=64)
    again, _ = pretrain_critic(D, xt[:512], steps=300, batch_size=64)
    for p, q in zip(mine.critic.parameters(), again.critic.parameters()):
        assert torch.equal(p, q)
    with torch.no_grad():
        paired = D(xn).clamp(0, 1)
    assert mine.estimate(x, paired) > mine.estimate(x, paired.roll(1, 0)) + 1.0
    seen = []
    step = mine.step
    mine.step = lambda a, b: (seen.append(a.shape[0]), step(a, b))[1]
    before = [p.detach().clone() for p in mine.critic.parameters()]
    attack = MIGA(D, None, eps=16 / 255, steps=2, lambda_rec=1.0, mine=mine, critic_pool=pool, compile=False)
    attack(xn[:8], None, x_clean=x[:8])
    attack(xn[8:16], None, x_clean=x[8:16])
    assert set(seen) == {16} and len(seen) == 2 * (4 * 5 + 5)  # 8 attacked + 8 replayed pairs per step
    assert any(not torch.equal(p, q) for p, q in zip(mine.critic.parameters(), before))
    with pytest.raises(ValueError, match="`critic_pool`"):
        MIGA(D, None, critic_pool=(x, x[:, :, :8]))
    with pytest.raises(ValueError, match="`critic_pool`"):
        MIGA(D, F, critic_pool=pool)


def test_reference_variant_pulls_the_output_toward_the_reference(digits):
    """With `reference` the fidelity term targets x_r: the attacked output moves toward the
    reference images (lower MSE to them than the un-attacked output) while its distance to
    the clean image grows."""
    x, y, xn, D, F = digits
    reference = x[:16].roll(1, 0)
    res = MIGA(D, None, eps=16 / 255, steps=10, lambda_rec=1.0, lambda_mi=0.0, reference=reference, compile=False)(
        xn[:16], None, x_clean=x[:16]
    )
    to_ref = lambda t: (t - reference).pow(2).flatten(1).mean(1)  # noqa: E731
    assert (to_ref(res.denoised) < to_ref(res.denoised_clean)).float().mean() > 0.9
    assert float(res.psnr.mean()) < float(metrics.psnr(res.denoised_clean, x[:16]).mean())
