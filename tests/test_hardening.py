"""Regression tests of the hardening issue: every defect found when the package was
probed as a careless or hostile user would, one test (or a few) per item, named after it.
Each failed before its fix."""

import pytest
import torch

import miga_fast
from miga_fast import ops
from miga_fast.reference import projection as ref

from conftest import backend_params

BACKENDS = backend_params() + [pytest.param("reference", "cpu", id="reference")]

# --------------------------------------------------------------- 1. the l2 step overflows

MAGNITUDES = {
    torch.float32: [0.0, 1e-44, 1e-30, 1.0, 1e30],
    torch.float64: [0.0, 1e-310, 1e-44, 1e-30, 1.0, 1e30, 1e300],
}


def extreme_gradients(dtype, rng, n=37):
    """One sample per magnitude, then one sample whose entries mix every magnitude."""
    mags = MAGNITUDES[dtype]
    rows = [torch.randn(n, generator=rng, dtype=torch.float64) * m for m in mags]
    mixed = torch.randn(n, generator=rng, dtype=torch.float64)
    mixed *= torch.tensor(mags, dtype=torch.float64)[torch.arange(n) % len(mags)]
    rows.append(mixed)
    g = torch.stack(rows).to(dtype)
    if dtype == torch.float32:  # the scaled values must survive the cast
        assert torch.isfinite(g).all()
    return g


def _ball_inputs(g, rng):
    b, n = g.shape
    x = torch.full((b, n), 0.5, dtype=g.dtype)
    d0 = ((torch.rand(b, n, generator=rng, dtype=torch.float64) - 0.5) * 0.01).to(g.dtype)
    return x, d0


def check_extreme_l2(step, g, rng, eps=0.3, alpha=0.05):
    """step(delta, grad, x, eps, alpha) runs one l2 step; the result is finite, inside the
    ball and the box; a non-zero gradient of any magnitude moves delta by a full step
    before the projection (here the ball does not bind); a zero gradient takes none."""
    x, d0 = _ball_inputs(g, rng)
    out = d0.clone()
    step(out, g, x, eps, alpha)
    assert torch.isfinite(out).all()
    norms = out.double().norm(dim=1)
    assert (norms <= eps * (1 + 1e-6)).all(), norms
    assert ((x + out) >= 0).all() and ((x + out) <= 1).all()
    moved = (out - d0).double().norm(dim=1)
    zero = (g == 0).all(dim=1)
    torch.testing.assert_close(out[zero], d0[zero], rtol=0, atol=1e-7)  # no step; only the box rounds
    tol = 1e-4 if g.dtype == torch.float32 else 1e-10
    torch.testing.assert_close(moved[~zero], torch.full_like(moved[~zero], alpha), rtol=tol, atol=tol)
    return out


def check_extreme_mi_fgsm(step, g, rng):
    x, d0 = _ball_inputs(g, rng)
    out, mom = d0.clone(), torch.zeros_like(d0)
    step(out, mom, g, x, 8 / 255, 2 / 255)
    assert torch.isfinite(out).all() and torch.isfinite(mom).all()
    l1 = mom.double().abs().sum(1)
    zero = (g == 0).all(dim=1)
    assert (l1[zero] == 0).all()
    torch.testing.assert_close(l1[~zero], torch.ones_like(l1[~zero]), rtol=1e-5, atol=1e-5)
    assert (out.abs() <= 8 / 255 + 1e-7).all()
    return out, mom


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_l2_step_overflows_never(backend, device, dtype, rng):
    g = extreme_gradients(dtype, rng)
    rng.manual_seed(1)
    expected = check_extreme_l2(lambda d, gg, x, e, a: ref.pgd_step_(d, gg, x, e, a, "l2"), g, rng)

    def step(d, gg, x, e, a):
        with miga_fast.set_backend(backend):
            ops.pgd_step_(d, gg.to(device), x.to(device), e, a, "l2")

    rng.manual_seed(1)
    out = check_extreme_l2(step, g, rng)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_l2_step_overflows_never_in_mi_fgsm_l1(backend, device, dtype, rng):
    g = extreme_gradients(dtype, rng)
    rng.manual_seed(2)
    exp_d, exp_m = check_extreme_mi_fgsm(lambda *a: ref.mi_fgsm_step_(*a), g, rng)

    def step(d, m, gg, x, e, a):
        with miga_fast.set_backend(backend):
            ops.mi_fgsm_step_(d, m, gg, x, e, a)

    rng.manual_seed(2)
    out, mom = check_extreme_mi_fgsm(step, g, rng)
    torch.testing.assert_close(out, exp_d)
    torch.testing.assert_close(mom, exp_m, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_l2_step_overflows_never_in_project(backend, device, dtype, rng):
    """An l2 projection of a delta of any finite magnitude lands on the ball's surface
    in delta's direction (the norm of 1e30 in float32 overflowed to inf: delta became 0)."""
    big = 1e30 if dtype == torch.float32 else 1e300
    d = torch.randn(4, 50, generator=rng, dtype=torch.float64).to(dtype)
    d[1] *= big
    d[2] *= 1e-30
    d[3] = 0
    x = torch.full_like(d, 0.5)
    with miga_fast.set_backend(backend):
        out = ops.project_(d.clone(), x, 0.2, "l2")
    assert torch.isfinite(out).all()
    n = out.double().norm(dim=1)
    torch.testing.assert_close(n[:2], torch.full((2,), 0.2, dtype=torch.float64), rtol=1e-5, atol=1e-7)
    cos = torch.nn.functional.cosine_similarity(out[1].double(), (d[1] / big).double(), dim=0)
    assert cos > 1 - 1e-6
    torch.testing.assert_close(out[2:], d[2:], rtol=0, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_l2_step_overflows_never_in_random_init(dtype, rng):
    d = torch.empty(3, 0, dtype=dtype)
    ops.random_init_(d, torch.empty_like(d), 0.5, "l2", generator=0)  # raised ZeroDivisionError
    d = torch.zeros(3, 1, 4, 4, dtype=dtype)
    ops.random_init_(d, torch.full_like(d, 0.5), 0.4, "l2", generator=0)
    assert torch.isfinite(d).all() and (d.flatten(1).norm(dim=1) <= 0.4 * (1 + 1e-6)).all()


def test_l2_step_overflows_never_in_pgd_on_a_confident_model():
    """The probe's case: PGD-l2 (eps 0.5) on a linear model with a huge logit margin gives
    gradients near 1e-40; the result stayed far outside the ball (norms 3.7-4.2)."""
    from miga_fast.attacks import PGD

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    with torch.no_grad():
        model[1].weight.mul_(300.0)
    x = torch.rand(16, 3, 8, 8)
    y = model(x).argmax(1)
    for backend in ("cpu", "reference"):
        with miga_fast.set_backend(backend):
            adv = PGD(model, eps=0.5, alpha=0.2, steps=5, norm="l2", generator=0)(x, y)
        n = (adv - x).flatten(1).norm(dim=1)
        assert torch.isfinite(adv).all() and (n <= 0.5 + 1e-5).all(), n


# ------------------------------------------------------- 2. untrusted model files run code


class _Payload:
    """A pickle whose loading would create a marker file (harmless stand-in for a shell command)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_untrusted_model_files_run_no_code(tmp_path, monkeypatch):
    import warnings

    from miga_fast import models

    marker = tmp_path / "payload-ran"
    torch.save({"weight": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        models.load(str(tmp_path / "evil.pt"), arch="dncnn")
    assert not marker.exists()

    m = models.DnCNN(channels=1, depth=3, width=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(m).save(str(tmp_path / "model.ts"))
    torch.export.save(torch.export.export(m, (torch.rand(1, 1, 8, 8),)), str(tmp_path / "model.pt2"))
    opened = []  # the code-running loaders, replaced by recorders: the default path must never reach them
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: opened.append("jit") or m)
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: opened.append("export"))
    for name in ("model.ts", "model.pt2"):
        with pytest.raises(ValueError, match="refusing to load .*can run arbitrary code.*trust=True"):
            models.load(str(tmp_path / name))
    assert opened == []
    models.load(str(tmp_path / "model.ts"), trust=True)  # the explicit opt-in reaches the loader
    assert opened == ["jit"]


def test_untrusted_model_files_run_no_code_from_the_cli(tmp_path):
    from miga_fast import models

    from test_cli import _cli

    torch.save(_Payload(tmp_path / "payload-ran"), tmp_path / "model.ts")
    out = _cli("attack", "--denoiser", str(tmp_path / "model.ts"), "--data", "digits", "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and "--trust-model-file" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "payload-ran").exists()
    assert models.load("dncnn_digits") is not None  # shipped checkpoints (SHA-256 checked) need no opt-in


# ------------------------------------------------------- 3. resume ignores the configuration


@pytest.fixture(scope="module")
def digits():
    from miga_fast import data
    from miga_fast.models import registry

    x, y = data.load_digits("test")
    return x[:20], y[:20], registry.load("dncnn_digits"), registry.load("cnn_digits")


def _miga(D, F, **kw):
    from miga_fast.attacks import MIGA

    return MIGA(D, F, **{"eps": 16 / 255, "steps": 1, "compile": False, **kw})


def test_resume_ignores_the_configuration_never(digits, tmp_path):
    import json

    x, y, D, F = digits
    out = tmp_path / "run"
    first = _miga(D, F).run((x[:8], y[:8]), out, batch_size=4, progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["parameters"]["eps"] == pytest.approx(16 / 255) and config["images"] == 8
    assert config["models"]["denoiser"]["sha256"] and config["data"] and config["miga_fast"]
    cases = [
        (lambda: _miga(D, F, eps=8 / 255).run((x[:8], y[:8]), out, batch_size=4, progress=False), "parameters.eps"),
        (
            lambda: _miga(D, F, norm="l2", eps=1.0).run((x[:8], y[:8]), out, batch_size=4, progress=False),
            "parameters.norm",
        ),
        (lambda: _miga(D, F).run((x[8:16], y[8:16]), out, batch_size=4, progress=False), "data"),
        (lambda: _miga(D, F).run((x[:8], y[:8]), out, batch_size=4, seed=1, progress=False), "seed"),
        (lambda: _miga(D, F).run((x[:8], y[:8]), out, batch_size=4, sigma=15, progress=False), "sigma"),
    ]
    other = copy_with_new_weights(F)
    cases.append((lambda: _miga(D, other).run((x[:8], y[:8]), out, batch_size=4, progress=False), "models"))
    for call, field in cases:
        with pytest.raises(ValueError, match=f"another configuration .*{field}"):
            call()
    assert _miga(D, F).run((x[:8], y[:8]), out, batch_size=4, progress=False) == first  # same: resumes, redoes nothing
    again = _miga(D, F, eps=8 / 255).run((x[:8], y[:8]), out, batch_size=4, progress=False, overwrite=True)
    assert json.loads((out / "config.json").read_text())["parameters"]["eps"] == pytest.approx(8 / 255)
    assert again["n"] == 8 and len((out / "results.jsonl").read_text().splitlines()) == 2


def copy_with_new_weights(model):
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    return other


def test_resume_ignores_the_configuration_never_and_locks_the_folder(digits, tmp_path):
    from miga_fast.attacks import RunFolderBusyError
    from miga_fast.attacks.run_folder import RunLock as _RunLock

    x, y, D, F = digits
    out = tmp_path / "run"
    out.mkdir()
    with _RunLock(out):  # another run holds the folder
        with pytest.raises(RunFolderBusyError, match="another run is writing"):
            _miga(D, F).run((x[:4], y[:4]), out, batch_size=4, progress=False)
    assert not (out / "results.jsonl").exists()
    assert _miga(D, F).run((x[:4], y[:4]), out, batch_size=4, progress=False)["n"] == 4  # released
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.jsonl").write_text('{"batch": 0, "n": 4}\n')  # no config.json
    with pytest.raises(ValueError, match="unknown configuration"):
        _miga(D, F).run((x[:4], y[:4]), tmp_path / "old", batch_size=4, progress=False)


# ------------------------------------------------------------------ 4. CLI eps is ambiguous


def test_cli_eps_is_ambiguous_never():
    from miga_fast.app.cli import parse_radius

    from test_cli import _cli

    assert parse_radius("8/255", "linf") == pytest.approx(8 / 255)
    assert parse_radius("0.5", "linf") == 0.5 and parse_radius("1", "linf") == 1.0
    assert parse_radius("1.5", "l2") == 1.5 and parse_radius("3/2", "l2") == 1.5  # l2 radii are never rescaled
    assert parse_radius(None, "linf") == pytest.approx(8 / 255) and parse_radius(None, "l2") == 1.0
    assert parse_radius(None, "ssim") is None
    for text, norm, match in (
        ("1.5", "linf", "ambiguous.*1.5/255"),
        ("8", "linf", "ambiguous"),
        ("8/0", "linf", "fraction"),
        ("-1", "l2", ">= 0"),
        ("nan", "l2", "finite"),
        ("abc", "linf", "fraction"),
        ("8/255", "ssim", "--tau"),
    ):
        with pytest.raises(ValueError, match=match):
            parse_radius(text, norm)
    out = _cli("attack", "--denoiser", "dncnn_digits", "--data", "digits", "--norm", "ssim", "--eps", "0.1")
    assert out.returncode == 2 and "--tau" in out.stderr and "Traceback" not in out.stderr
    out = _cli("attack", "--denoiser", "dncnn_digits", "--data", "digits", "--norm", "ssim", "--tau", "1.5")
    assert out.returncode == 2 and "--tau must lie in (0, 1]" in out.stderr


# ---------------------------------------------- 6. tracebacks where the CLI promises one line


def _digit_folder(root, names, n=2):
    from PIL import Image

    from miga_fast import data

    x, _ = data.load_digits("test")
    for k, name in enumerate(names):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray((x[k * n + i, 0] * 255).round().byte().numpy(), mode="L").save(root / name / f"{i}.png")


def test_cli_tracebacks_never(tmp_path):
    from PIL import Image

    from test_cli import _cli

    (tmp_path / "a-file").write_text("x")
    base = ("attack", "--denoiser", "dncnn_digits", "--classifier", "cnn_digits", "--channels", "1", "--steps", "1")
    _digit_folder(tmp_path / "twelve", [str(i) for i in range(12)], n=1)
    _digit_folder(tmp_path / "named", ["cat", "dog"])
    (tmp_path / "bomb" / "0").mkdir(parents=True)
    Image.new("L", (6000, 6000)).save(tmp_path / "bomb" / "0" / "big.png")  # 36 M pixels, a small file
    cases = [
        (("--data", "digits", "--out", str(tmp_path / "a-file")), "exists and is not a folder"),
        (("--data", "digits", "--out", str(tmp_path / "a-file" / "sub")), "not writable"),
        (("--data", str(tmp_path / "twelve"), "--out", str(tmp_path / "o")), "classifier has 10 classes"),
        (("--data", str(tmp_path / "named"), "--out", str(tmp_path / "o")), "class indices"),
        (("--data", str(tmp_path / "bomb"), "--out", str(tmp_path / "o")), "refused before decoding"),
        (
            (
                "--data",
                str(tmp_path / "named"),
                "--class-map",
                str(tmp_path / "missing.json"),
                "--out",
                str(tmp_path / "o"),
            ),
            "--class-map",
        ),
    ]
    for args, message in cases:
        out = _cli(*base, *args)
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1, (
            args,
            out.stderr,
        )
    (tmp_path / "map.json").write_text('{"cat": 3, "dog": 5}')
    out = _cli(
        *base,
        "--data",
        str(tmp_path / "named"),
        "--class-map",
        str(tmp_path / "map.json"),
        "--out",
        str(tmp_path / "mapped"),
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.filterwarnings("ignore:skipped .* symbolic link")
def test_cli_tracebacks_never_image_folders(tmp_path):
    """Folders: class maps, symlinks out of the root, --n before decoding, bombs."""
    import warnings

    from miga_fast.data import ImageFolderDataset

    _digit_folder(tmp_path / "root", ["3", "7"])
    _digit_folder(tmp_path / "outside", ["9"])
    (tmp_path / "root" / "3" / "link.png").symlink_to(tmp_path / "outside" / "9" / "0.png")
    (tmp_path / "root" / "9").symlink_to(tmp_path / "outside" / "9", target_is_directory=True)
    with pytest.warns(UserWarning, match="skipped 2 symbolic link"):
        ds = ImageFolderDataset(tmp_path / "root", class_map="index")
    assert sorted({y for _, y in ds.samples}) == [3, 7] and len(ds) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(ImageFolderDataset(tmp_path / "root", class_map="index", follow_symlinks=True)) == 7
    with pytest.raises(ValueError, match=r"folders \['3'\] are not in the class map"):
        ImageFolderDataset(tmp_path / "root", class_map={"7": 1})
    assert [y for _, y in ImageFolderDataset(tmp_path / "root", class_map={"3": 0, "7": 1}).samples] == [0, 0, 1, 1]
    (tmp_path / "root" / "7" / "z-junk.png").write_bytes(b"not a png")
    x, y = ImageFolderDataset(tmp_path / "root", class_map="index", limit=3).tensors()  # never decodes the junk
    assert x.shape[0] == 3 and y.tolist() == [3, 3, 7]
    with pytest.raises(ValueError, match="refused before decoding"):
        ImageFolderDataset(tmp_path / "root", class_map="index", max_pixels=100)[0]


# ------------------------------------------------------------- 7. runs that cannot finish


def test_runs_that_cannot_finish_unknown_task_single_image_tail(digits, tmp_path):
    import json

    x, y, D, _ = digits
    attack = _miga(D, None, task="unknown", critic_steps=1)
    summary = attack.run((x[:5], None), tmp_path / "u", batch_size=2, progress=False)  # batches 2 + 3
    assert summary["n"] == 5 and summary["batches"] == 2
    assert [json.loads(line)["n"] for line in (tmp_path / "u" / "results.jsonl").read_text().splitlines()] == [2, 3]
    assert attack.run((x[:5], None), tmp_path / "u", batch_size=2, progress=False) == summary  # resumes: done
    with pytest.raises(ValueError, match="at least 2 images"):
        attack(x[:1])
    with pytest.raises(ValueError, match="at least 2 images"):
        attack.run((x[:1], None), tmp_path / "one", progress=False)


def test_runs_that_cannot_finish_unlabelled_samples_keep_the_batch_labels(digits, tmp_path):
    import json

    x, y, D, F = digits
    y = y[:8].clone()
    y[0] = -1
    _miga(D, F).run((x[:8], y), tmp_path / "l", batch_size=8, progress=False)
    rec = json.loads((tmp_path / "l" / "results.jsonl").read_text())
    assert len(rec["success"]) == 8 and rec["correct_before"][0] is False
    assert sum(rec["correct_before"][1:]) >= 5  # the other labels were kept and used
    with pytest.raises(ValueError, match="class indices >= 0"):
        _miga(D, F)(x[:2], torch.tensor([-2, 1]))


# ------------------------------------------------------------- 10. attacks train the model


class _BNNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Dropout(0.5)
        )
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def test_attacks_train_the_model_never():
    from miga_fast.attacks import PGD

    torch.manual_seed(0)
    model = _BNNet()
    model.body[1].running_mean.uniform_(-0.1, 0.1)
    model.train()
    x = torch.rand(6, 3, 8, 8)
    y = torch.randint(0, 4, (6,))
    stats = model.body[1].running_mean.clone()
    adv = PGD(model, steps=3, generator=0)(x, y)
    assert model.training and all(m.training for m in model.modules()), "the caller's mode is restored"
    assert torch.equal(model.body[1].running_mean, stats), "running statistics untouched"
    model.eval()
    expected = PGD(model, steps=3, generator=0)(x, y)
    assert not model.training
    assert torch.equal(adv, expected), "the attack ran on the model in eval mode"
    model.train()
    PGD(model, steps=1, generator=0, model_mode="keep")(x, y)
    assert not torch.equal(model.body[1].running_mean, stats)  # "keep": the caller asked for training mode
    with pytest.raises(ValueError, match="model_mode"):
        PGD(model, model_mode="inference")


def test_attacks_train_the_model_never_denoiser_attacks(digits):
    x, y, D, F = digits
    D.train()
    try:
        _miga(D, F)(x[:4], y[:4])
        assert D.training and not F.training
    finally:
        D.eval()


# ------------------------------------------------------- 12. PGD(norm="l2") keeps l-inf defaults


def test_pgd_l2_defaults_are_l2():
    from miga_fast.attacks import PGD

    model = torch.nn.Linear(3, 2)
    assert (PGD(model).eps, PGD(model).alpha) == (8 / 255, 2 / 255)
    assert (PGD(model, norm="l2").eps, PGD(model, norm="l2").alpha) == (1.0, 0.2)
    assert PGD(model, norm="l2", eps=0.5).eps == 0.5
    assert _miga(torch.nn.Identity(), None, eps=None, norm="l2").eps == 1.0
    with pytest.raises(ValueError, match="not used with norm='ssim'"):
        _miga(torch.nn.Identity(), None, norm="ssim")


# ------------------------------------------------- 5. inputs modified although the call raises


def _step_inputs(shape=(3, 2, 4, 4), dtype=torch.float32):
    g = torch.Generator().manual_seed(5)
    x = torch.rand(shape, generator=g, dtype=dtype)
    d = (torch.rand(shape, generator=g, dtype=dtype) - 0.5) * 0.02
    grad = torch.randn(shape, generator=g, dtype=dtype)
    return x, d, grad


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_inputs_modified_although_the_call_raises_never(backend, device):
    x, d, grad = _step_inputs()
    with miga_fast.set_backend(backend):
        mom = torch.zeros(1, *d.shape[1:]).expand_as(d)  # stride 0: every sample shares one row
        d0 = d.clone()
        with pytest.raises(ValueError, match="`momentum` overlaps itself"):
            ops.mi_fgsm_step_(d, mom, grad, x, 8 / 255, 2 / 255)
        assert torch.equal(d, d0)
        wide = d.clone()
        with pytest.raises(ValueError, match="`delta` overlaps itself"):
            ops.pgd_step_(wide[:1].expand_as(x), grad, x, 8 / 255, 2 / 255)
        for call, match in (
            (lambda: ops.mi_fgsm_step_(d, d, grad, x, 8 / 255, 2 / 255), "`delta` and `momentum` share memory"),
            (lambda: ops.pgd_step_(d, d, x, 8 / 255, 2 / 255), "`delta` and `grad` share memory"),
            (lambda: ops.project_(d, d, 8 / 255), "`delta` and `x` share memory"),
        ):
            with pytest.raises(ValueError, match=match):
                call()
            assert torch.equal(d, d0)
    half = d.half()
    h0 = half.clone()
    if backend in ("cpu",):
        with miga_fast.set_backend(backend):
            with pytest.raises(miga_fast.BackendUnavailableError):
                ops.random_init_(half, x.half(), 8 / 255, generator=0)
        assert torch.equal(half, h0), "random_init_ checks the backend before writing"
    x4, d4, _ = _step_inputs((2, 1, 8, 8))
    for call in (lambda: ops.ssim_ball_project_(x4, x4, 0.9), lambda: ops.ssim_window_ball_project_(x4, x4, 0.9)):
        with pytest.raises(ValueError, match="`delta` and `x` share memory"):
            call()


# ------------------------------------------------------------ 8. value_checks is process-wide


def test_value_checks_are_process_wide_never():
    import threading

    seen = {}
    ready, done = threading.Event(), threading.Event()

    def attacker():
        with miga_fast.value_checks(False), miga_fast.set_backend("reference"):
            ready.set()
            done.wait(10)

    t = threading.Thread(target=attacker)
    t.start()
    assert ready.wait(10)
    try:
        x, d, grad = _step_inputs()
        grad[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="`grad` contains NaN"):
            ops.pgd_step_(d, grad, x, 8 / 255, 2 / 255)  # this thread still checks
        seen["backend"] = miga_fast.get_backend()
    finally:
        done.set()
        t.join()
    assert seen["backend"] == "auto"


# ------------------------------------------------------------------------------ 9. smaller


def test_smaller_one_dimensional_delta_on_every_backend():
    x, d, grad = (t.reshape(-1) for t in _step_inputs((6, 1, 1, 1)))
    out = {}
    for backend in ("cpu", "reference"):
        with miga_fast.set_backend(backend):
            out[backend] = ops.pgd_step_(d.clone(), grad, x, 0.05, 0.01, "l2")
            ops.random_init_(d.clone(), x, 0.05, "l2", generator=0)
    torch.testing.assert_close(out["cpu"], out["reference"])


def test_smaller_window_ball_and_window_sigma_extremes():
    x, d, _ = _step_inputs((2, 1, 8, 8), torch.float64)
    with pytest.raises(ValueError, match=r"`gamma` must lie in \[1e-06, 1\]"):
        ops.ssim_window_ball_project_(d.clone(), x, 1e-300)
    out = ops.ssim_window_ball_project_(d.clone(), x, 1e-6)
    assert torch.isfinite(out).all()
    for backend in ("cpu", "reference"):
        with miga_fast.set_backend(backend):
            v = ops.ssim(x, (x + d).clamp(0, 1), win_sigma=1e-30, win_size=3, padding="same")
        assert torch.isfinite(v).all()  # a delta window: the pixel-wise SSIM
        torch.testing.assert_close(v, ops.ssim(x, (x + d).clamp(0, 1), win_size=1, padding="same"))


def test_smaller_window_ball_floor_in_the_convex_attack():
    from miga_fast.attacks import SSIMAttack

    with pytest.raises(ValueError, match="`tau` must be >= 1e-06 for solver='convex'"):
        SSIMAttack(torch.nn.Identity(), tau=1e-300, solver="convex")


def test_smaller_meta_tensors_and_out_of_range_eps():
    x, d, grad = _step_inputs()
    meta = d.to("meta")
    with pytest.raises(ValueError, match="`delta` is a meta tensor"):
        ops.pgd_step_(meta, grad.to("meta"), x.to("meta"), 8 / 255, 2 / 255)
    with pytest.raises(ValueError, match="`x` is a meta tensor"):
        ops.ssim(x.to("meta"), x.to("meta"))
    d0 = d.clone()
    with pytest.raises(ValueError, match="`eps` = 1e\\+39 is beyond torch.float32's range"):
        ops.pgd_step_(d, grad, x, 1e39, 2 / 255)
    with pytest.raises(ValueError, match="`alpha` holds values beyond torch.float32's range"):
        ops.pgd_step_(d, grad, x, 0.1, torch.full((3,), 1e39, dtype=torch.float64))
    assert torch.equal(d, d0)
    ops.pgd_step_(d.double(), grad.double(), x.double(), 1e39, 2 / 255)  # fine in float64


def test_smaller_ssim_same_padding_scratch_is_bounded_by_the_image():
    import resource

    x, d, _ = _step_inputs((1, 1, 4, 4), torch.float64)
    y = (x + d).clamp(0, 1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for backend in ("cpu", "reference"):
        with miga_fast.set_backend(backend):
            big = ops.ssim(x, y, win_size=30001, win_sigma=1e4, padding="same")
            small = ops.ssim(x, y, win_size=7, win_sigma=1e4, padding="same")
        torch.testing.assert_close(big, small, rtol=1e-4, atol=1e-6)  # a flat window: far taps see padding
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: was ~18 GB


def test_smaller_nan_delta_is_rejected_by_every_step():
    x, d, grad = _step_inputs()
    d[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="`delta` contains NaN"):
        ops.pgd_step_(d, grad, x, 8 / 255, 2 / 255)
    with pytest.raises(ValueError, match="`delta` contains NaN"):
        ops.mi_fgsm_step_(d, torch.zeros_like(d), grad, x, 8 / 255, 2 / 255)


def test_smaller_unknown_task_leaves_the_global_generators_alone(digits):
    x, _, D, _ = digits
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    expected = torch.rand(3)
    torch.random.set_rng_state(state)
    seeds = []
    import miga_fast.attacks.miga as miga_module

    original = torch.manual_seed
    torch.manual_seed = lambda s: seeds.append(s) or original(s)  # the old code reseeded every device
    try:
        _miga(D, None, task="unknown", critic_steps=1)(x[:4])
    finally:
        torch.manual_seed = original
    assert seeds == [] and miga_module is not None
    assert torch.equal(torch.rand(3), expected), "the caller's CPU random stream is untouched"


# ------------------------------------------------------- 11. SSIM's second derivative is zero


def _hvp(fn, x, v):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x), x, create_graph=True)
    (h,) = torch.autograd.grad((g * v).sum(), x)
    return h


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_ssim_second_derivative_is_never_silently_zero(backend, device):
    x, d, _ = _step_inputs((2, 1, 12, 12), torch.float64)
    y = (x + d).clamp(0, 1)
    v = torch.randn_like(x)
    from miga_fast.reference import ssim as ref_ssim

    expected = _hvp(lambda t: ref_ssim.ssim(t, y).sum(), x, v)
    assert expected.abs().max() > 1e-3
    with miga_fast.set_backend(backend):
        got = _hvp(lambda t: ops.ssim(t, y).sum(), x, v)
    torch.testing.assert_close(got, expected)
    if backend != "triton":  # hundreds of forward passes: minutes through the Triton interpreter
        with miga_fast.set_backend(backend):
            torch.autograd.gradgradcheck(lambda a: ops.ssim(a, y), (x.clone().requires_grad_(True),))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_ssim_second_derivative_is_never_silently_zero_in_mine(backend, device):
    from miga_fast.reference import mine as ref_mine

    g = torch.Generator().manual_seed(0)
    u, v = (torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(2))
    b1, w2 = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    b2 = torch.zeros((), dtype=torch.float64)
    dv = torch.randn_like(u)
    for act in ("elu", "softplus"):
        expected = _hvp(lambda t: ref_mine.bound(t, v, b1, w2, b2, "dv", "all", None, act), u, dv)
        with miga_fast.set_backend(backend):
            got = _hvp(lambda t: ops.mine_bound(t, v, b1, w2, b2, bound="dv", activation=act), u, dv)
        assert expected.abs().max() > 1e-3
        torch.testing.assert_close(got, expected)


def test_inputs_modified_although_the_call_raises_never_fake_tensors_share_nothing():
    """Fake tensors (FakeTensorMode, tracing) have no memory: the overlap check must not
    see their zero data pointers as one buffer."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from miga_fast._validation import check_no_overlap

    with FakeTensorMode():
        d, x = torch.empty(2, 3), torch.empty(2, 3)
        check_no_overlap({"delta": d}, {"x": x})
