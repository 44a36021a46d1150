"""The `miga-fast` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .setups import SETUPS, with_models


def _print_backends(args) -> int:
    import miga_fast

    as_json = args.json
    info = miga_fast.backends()
    if as_json:
        print(json.dumps(info, indent=2))
        return 0
    v = info["versions"]
    print(
        f"miga_fast {miga_fast.__version__}  torch {v['torch']} (CUDA {v['torch_cuda']})  "
        f"extension built for torch {v['built_for_torch']}  GPU: {v['gpu'] or 'none visible'}"
    )
    if v["version_note"]:
        print(f"warning: {v['version_note']}")
    print(f"{'backend':<10} {'built':<6} {'runs here':<10} note")
    for name in ("cuda", "triton", "cpu", "reference"):
        b = info[name]
        print(f"{name:<10} {'yes' if b['built'] else 'no':<6} {'yes' if b['runs_here'] else 'no':<10} {b['note']}")
    print(
        f"selected: {info['selected']}  (auto takes, per call, the first of cuda, cpu, triton, reference "
        "that can run it)"
    )
    print("\nper op (torch.ops.miga_fast name: what each backend's kernel takes, or why it is missing)")
    for name, table in info["ops"].items():
        print(f"{name}  [{table['public']}]")
        for backend in ("cuda", "cpu", "triton", "reference"):
            b = table[backend]
            text = "; ".join(b["needs"]) if b["built"] else "unavailable: " + "; ".join(b["reasons"])
            print(f"  {backend:<10} {text}")
    return 0


def _print_models(args) -> int:
    from miga_fast import models

    as_json, evaluate = args.json, args.evaluate
    infos = models.available()
    if not infos:
        print("no shipped models found (miga_fast/models/checkpoints/manifest.json is missing)", file=sys.stderr)
        return 1
    if evaluate:
        from miga_fast.app import train

        for info in infos.values():
            info.quality = _evaluate(info, train)
    if as_json:
        print(json.dumps({n: i.__dict__ for n, i in infos.items()}, indent=2))
        return 0
    again = ", re-measured" if evaluate else ""
    print(f"{'model':<15} {'kind':<10} {'data':<10} {'size':>8}  quality (held-out split{again})")
    for info in infos.values():
        print(f"{info.name:<15} {info.kind:<10} {info.data:<10} {info.bytes / 1024:6.0f}KB  {_quality_line(info)}")
        print(f"{'':<15} {info.description}")
    return 0


def _quality_line(info) -> str:
    q = info.quality
    if info.kind == "denoiser":
        parts = [
            f"sigma {s}: {q[f'psnr_noisy_sigma{s}']:.1f} -> {q[f'psnr_denoised_sigma{s}']:.1f} dB"
            for s in (15, 25, 50)
            if f"psnr_noisy_sigma{s}" in q
        ]
        return "PSNR noisy -> denoised  " + ", ".join(parts)
    if info.kind == "classifier":
        noisy = q.get("accuracy_noisy_sigma25", float("nan"))
        line = f"accuracy clean {q['accuracy_clean']:.1%}, noisy(25) {noisy:.1%}"
        if "accuracy_denoised_sigma25" in q:
            line += f", {q.get('denoiser')}(noisy(25)) {q['accuracy_denoised_sigma25']:.1%}"
        return line
    line = f"eps-prediction MSE {q.get('test_eps_mse', float('nan')):.4f}"
    if "test_eps_mse_t_le_210" in q:
        line += f" (t <= 210: {q['test_eps_mse_t_le_210']:.4f})"
    if "test_psnr_purified_t100" in q:
        line += (
            f"; purified PSNR t100 {q['test_psnr_purified_t100']:.1f} dB, t200 {q['test_psnr_purified_t200']:.1f} dB"
        )
    return line + (f"; samples: {q['samples']}" if "samples" in q else "")


def _evaluate(info, train) -> dict:
    from miga_fast import models

    model = models.load(info.name)
    x, y = train.load_split(info.data, "test")
    if info.kind == "denoiser":
        return train.evaluate_denoiser(model, x)
    if info.kind == "classifier":
        den = models.load(info.quality["denoiser"]) if "denoiser" in info.quality else None
        return {**train.evaluate_classifier(model, x, y, den), "denoiser": info.quality.get("denoiser")}
    samples = {"samples": info.quality["samples"]} if "samples" in info.quality else {}
    return {**train.evaluate_diffusion(model, x, t_max=info.train.get("t_max")), **samples}


def _ssim_attack(args) -> int:
    from pathlib import Path

    from miga_fast.app.experiments import SETUPS, ssim_attack_report

    if not 0 < args.tau <= 1:
        print(f"miga-fast: --tau must lie in (0, 1], got {args.tau}", file=sys.stderr)
        return 2
    if args.n < 2 or args.steps < 1:
        print("miga-fast: --n must be >= 2 and --steps >= 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    results = []
    for setup in list(SETUPS) if args.data == "all" else [args.data]:
        print(f"{setup}: attacking {args.n} held-out images ...", flush=True)
        results.append(ssim_attack_report(setup, args.n, args.tau, args.steps, out, log=lambda s: print(s, flush=True)))
    for r in results:
        print(
            f"\n{r['data']} ({r['classifier']}, {r['images']} test images, clean accuracy "
            f"{r['clean_accuracy']:.1%}; PGD radii matched on {r['val_images']} val images)"
        )
        print("agreement of 1 - SSIM map with the CAM: mean over images; random = the same SSIM budget, random signs")
        print(
            f"{'attack':<48} {'fooled':>6} {'SSIM':>6} {'linf':>6} {'l2':>5} | {'corr':>6} {'random':>6} "
            f"{'other':>6} | {'IoU':>5} {'random':>6} {'other':>6} | {'IoU++':>5} {'flat':>6}"
        )
        for row in r["rows"]:
            g, pp = row["agreement"]["grad_cam"], row["agreement"]["grad_cam_pp"]
            print(
                f"{row['attack']:<48} {row['fooling_rate']:6.1%} {row['mean_ssim']:6.3f} {row['linf']:6.3f} "
                f"{row['l2']:5.2f} | {g['correlation']['mean']:6.3f} {g['random_in_ball_correlation']['mean']:6.3f} "
                f"{g['other_image_correlation']['mean']:6.3f} | {g['iou']['mean']:5.3f} "
                f"{g['random_in_ball_iou']['mean']:6.3f} {g['other_image_iou']['mean']:6.3f} | "
                f"{pp['iou']['mean']:5.3f} {row['agreement']['flatness_correlation']['mean']:6.3f}"
            )
        print(f"grid (clean / adversarial / amplified perturbation / 1 - SSIM map / Grad-CAM): {r['grid']}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "ssim_attack.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out / 'ssim_attack.json'}")
    return 0


def _demo(args) -> int:
    from pathlib import Path

    from miga_fast.app import demo

    if args.n < 2 or args.steps < 1:
        print("miga-fast: --n must be >= 2 and --steps >= 1", file=sys.stderr)
        return 2
    print(
        f"miga-fast demo: MIGA and baselines on the shipped models ({args.n} images per data set, "
        f"{args.steps} steps); output in {args.out}/",
        flush=True,
    )
    results = demo.run(args.out, n=args.n, steps=args.steps, compile=args.compile)  # draws a progress bar
    demo.print_table(results)
    out = Path(args.out)
    print(
        f"\nwrote {out / 'report.md'}, {out / 'results.json'} and " + ", ".join(str(Path(r["grid"])) for r in results)
    )
    return 0


def _unknown_task(args) -> int:
    from pathlib import Path

    from miga_fast.app import unknown_task

    if args.n < 2 or args.steps < 1 or args.pretrain_steps < 0:
        print("miga-fast: --n must be >= 2, --steps >= 1 and --pretrain-steps >= 0", file=sys.stderr)
        return 2
    setups = ["natural", "digits"] if args.data == "all" else [args.data]
    unknown_task.run(
        args.out, setups, n=args.n, steps=args.steps, pretrain_steps=args.pretrain_steps,
        log=lambda s: print(s, flush=True),
    )  # fmt: skip
    print(f"\nwrote {Path(args.out) / 'report.md'} and {Path(args.out) / 'unknown_task.json'}")
    return 0


def _purify_eval(args) -> int:
    from pathlib import Path

    from miga_fast.app import purify_eval

    for name in ("n", "votes", "pgd_steps", "eot", "stride"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"miga-fast: --{name.replace('_', '-')} must be >= 1, got {value}", file=sys.stderr)
            return 2
    datasets = ["digits", "natural"] if args.data == "all" else [args.data]
    s = purify_eval.settings(args.quick)
    print(
        f"miga-fast purify-eval ({'quick' if args.quick else 'the paper'}'s settings: {s}); output in {args.out}/",
        flush=True,
    )
    from miga_fast import distributed

    try:
        with distributed.process_group("cpu"):  # under torchrun: the rows shared out by rank
            rank = distributed.rank_world()[0]
            results = purify_eval.evaluate(
                Path(args.out), datasets, quick=args.quick, seed=args.seed, log=lambda m: print(m, flush=True),
                n=args.n, votes=args.votes, pgd_steps=args.pgd_steps, eot=args.eot, stride=args.stride,
                autoattack=True if args.autoattack else None, gradient=args.gradient,
            )  # fmt: skip
    except ValueError as exc:
        print(f"miga-fast: {exc}", file=sys.stderr)
        return 2
    if rank != 0:
        return 0
    print()
    print(purify_eval.report(results))
    print(f"wrote {Path(args.out) / 'report.md'} and {Path(args.out) / 'results.json'}")
    return 0


def _load_data(args):
    from miga_fast import data

    name = args.data
    if name in SETUPS:  # a shipped data set: its test split
        return SETUPS[name].load("test")
    class_map = None
    if args.classifier:  # labels must be the classifier's class indices
        class_map = "index"
        if args.class_map:
            try:
                class_map = json.loads(Path(args.class_map).read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"--class-map {args.class_map}: {exc}") from exc
    # a folder is streamed: the run reads it batch by batch, with --workers processes
    return data.ImageFolderDataset(
        name,
        size=args.size,
        channels=args.channels,
        class_map=class_map,
        limit=args.n,
        follow_symlinks=args.follow_symlinks,
    )


def parse_radius(text: str | None, norm: str):
    """--eps as the user wrote it: a number or a fraction such as 8/255, in the units of
    the [0, 1] image range for every norm (never rescaled behind the user's back). None
    means the norm's default. l-inf radii above 1 are refused (ambiguous: 8 most likely
    meant 8/255); --norm ssim is bounded by --tau, so an --eps there is refused."""
    import math

    from miga_fast.attacks._common import DEFAULT_EPS

    if norm == "ssim":
        if text is not None:
            raise ValueError("--norm ssim is bounded by --tau (the SSIM floor), not --eps: drop --eps")
        return None
    if text is None:
        return DEFAULT_EPS[norm]
    try:
        if "/" in text:
            num, den = text.split("/")
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"--eps must be a number or a fraction such as 8/255, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"--eps must be finite and >= 0, got {text!r}")
    if norm == "linf" and value > 1:
        raise ValueError(
            f"--eps {text} is ambiguous for --norm linf: radii are fractions of the [0, 1] image "
            f"range; write --eps {text}/255 for {text} grey levels"
        )
    return value


def _check_out_dir(out) -> str | None:
    """None if `out` is (or can be made) a writable folder, else why not."""
    import tempfile

    out = Path(out)
    if out.exists() and not out.is_dir():
        return f"--out {out} exists and is not a folder"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out):
            pass
    except OSError as exc:
        return f"--out {out} is not writable: {exc.strerror or exc}"
    return None


def _attack(args) -> int:
    """miga-fast attack: any configuration, the user's models and folders included. Bad
    input ends with a one-line message and exit status 2, never a traceback."""
    import torch
    from PIL import Image

    from miga_fast import distributed
    from miga_fast.attacks import MIGA, DenoiserDegradation, EndToEndPGD, RunFolderBusyError
    from miga_fast.models import registry

    def fail(msg):
        print(f"miga-fast attack: {msg}", file=sys.stderr)
        return 2

    try:
        eps = parse_radius(args.eps, args.norm)
    except ValueError as exc:
        return fail(str(exc))
    if not 0 < args.tau <= 1:
        return fail(f"--tau must lie in (0, 1], got {args.tau}")
    if args.batch_size < 1 or args.steps < 0 or (args.n is not None and args.n < 1):
        return fail("--batch-size and --n must be >= 1, --steps >= 0")
    if args.class_map and not args.classifier:
        return fail("--class-map maps folders to the classifier's classes: it needs --classifier")
    problem = _check_out_dir(args.out)
    if problem:
        return fail(problem)
    kwargs = {}
    for side in ("denoiser", "classifier"):
        text = getattr(args, f"{side}_kwargs")
        try:
            kwargs[side] = json.loads(text) if text else {}
            if not isinstance(kwargs[side], dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            return fail(f"--{side}-kwargs must be a JSON object of the architecture's arguments: {exc}")
    trust = args.trust_model_file
    try:
        denoiser = registry.load(args.denoiser, arch=args.denoiser_arch, trust=trust, **kwargs["denoiser"])
        classifier = (
            registry.load(args.classifier, arch=args.classifier_arch, trust=trust, **kwargs["classifier"])
            if args.classifier
            else None
        )
    except (ValueError, FileNotFoundError, RuntimeError, TypeError) as exc:
        return fail(str(exc).splitlines()[0])
    if args.workers is not None and args.workers < 0:
        return fail("--workers must be >= 0")
    try:
        dataset = _load_data(args)
        if isinstance(dataset, tuple):  # a shipped data set, in memory
            x, y = dataset
            if x.shape[0] == 0:
                return fail(f"--data {args.data!r} holds no images")
            if args.n is not None:
                x, y = x[: args.n], y[: args.n]
            dataset, first, max_label = (x, y), x[:1], int(y.max())
        else:  # a folder: its first image checks the models, its labels are known unread
            first, max_label = dataset[0][0].unsqueeze(0), max(label for _, label in dataset.samples)
    except (ValueError, TypeError, FileNotFoundError, OSError, Image.DecompressionBombError) as exc:
        return fail(f"cannot read --data {args.data!r}: {str(exc).splitlines()[0]}")
    try:
        with torch.no_grad():
            denoiser(first)
            logits = classifier(first) if classifier is not None else None
    except Exception as exc:  # noqa: BLE001 - the models cannot take these images: say so
        return fail(f"the models cannot take images of shape {tuple(first.shape[1:])}: {str(exc).splitlines()[0]}")
    if logits is not None:
        classes = logits.shape[-1]
        if max_label >= classes:
            return fail(
                f"--data {args.data!r} has labels up to {max_label} but the classifier has {classes} "
                "classes: name the class folders by class index (0, 1, ...) or pass --class-map"
            )
    try:
        kw = dict(
            eps=eps, norm=args.norm, steps=args.steps, compile=args.compile, tau=args.tau, precision=args.precision
        )
        if args.attack == "miga":
            attack = MIGA(denoiser, classifier, task=args.task, **kw)
        elif args.attack == "degradation":
            attack = DenoiserDegradation(denoiser, classifier, **kw)
        else:
            if classifier is None:
                return fail("--attack e2e-pgd needs --classifier")
            attack = EndToEndPGD(denoiser, classifier, **kw)
        # under torchrun: a process group (gloo on CPU), the batches sharded by rank
        with distributed.process_group("cpu"):
            summary = attack.run(
                dataset,
                args.out,
                batch_size=args.batch_size,
                sigma=args.sigma,
                overwrite=args.overwrite,
                num_workers=args.workers,
            )
            rank = distributed.rank_world()[0]
    except (ValueError, TypeError, OSError, RuntimeError, RunFolderBusyError) as exc:
        return fail(str(exc).splitlines()[0])
    if rank == 0:
        print(json.dumps(summary, indent=2))
        print(f"wrote the records (results*.jsonl) and {args.out}/summary.json")
    return 0


def main(argv=None) -> int:
    from miga_fast import __version__

    parser = argparse.ArgumentParser(prog="miga-fast", description=__doc__)
    parser.add_argument("--version", action="version", version=f"miga_fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("backends", help="what was built and what runs on this machine")
    p.set_defaults(func=_print_backends)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = sub.add_parser("models", help="the shipped models and their measured quality")
    p.set_defaults(func=_print_models)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--evaluate", action="store_true", help="re-measure quality on the held-out splits now")
    p = sub.add_parser("ssim-attack", help="SSIM-ball attacks vs SSIM-matched PGD, with SSIM-map / Grad-CAM agreement")
    p.set_defaults(func=_ssim_attack)
    p.add_argument("--data", choices=[*with_models("cam_classifier"), "all"], default="all")
    p.add_argument("--n", type=int, default=96, help="test images (and as many val images) per data set")
    p.add_argument("--tau", type=float, default=0.95, help="the SSIM bound")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default="miga-fast-out", help="folder for the JSON and the PNG grids")
    p = sub.add_parser("demo", help="MIGA end to end on the shipped models: the main job (a few minutes)")
    p.set_defaults(func=_demo)
    p.add_argument("--n", type=int, default=64, help="test images per data set")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--compile", action="store_true", help="torch.compile the attack loss (slow to start on CPU)")
    p.add_argument("--out", default="miga-fast-demo", help="folder for report.md, results.json, grids")
    p = sub.add_parser("unknown-task", help="does the unknown-task MIGA change semantics? (held-out judge, controls)")
    p.set_defaults(func=_unknown_task)
    p.add_argument("--data", choices=["natural", "digits", "all"], default="all")
    p.add_argument("--n", type=int, default=64, help="val and test images per data set")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--pretrain-steps", type=int, default=500, help="the population critic's pre-training steps")
    p.add_argument("--out", default="miga-fast-unknown-task", help="folder for report.md and unknown_task.json")
    p = sub.add_parser("purify-eval", help="diffusion purifiers against adaptive attacks on the shipped models")
    p.set_defaults(func=_purify_eval)
    p.add_argument("--data", choices=["digits", "natural", "all"], default="all")
    p.add_argument("--quick", action="store_true", help="settings that finish in minutes on a CPU")
    p.add_argument("--n", "--n-images", dest="n", type=int, default=None, help="test images per data set")
    p.add_argument("--votes", type=int, default=None, help="purifications per majority vote")
    p.add_argument("--pgd-steps", type=int, default=None)
    p.add_argument("--eot", type=int, default=None, help="draws averaged per PGD step")
    p.add_argument("--stride", type=int, default=None, help="DDIM step of the purifiers")
    p.add_argument("--autoattack", action="store_true", help="also torchattacks' AutoAttack (rand), when installed")
    p.add_argument(
        "--gradient", choices=["full", "checkpoint"], default=None, help="how the full-gradient attack differentiates"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="miga-fast-purify", help="folder for report.md, results.json, grids (resumable)")
    p = sub.add_parser("attack", help="any attack configuration on shipped or your own models and images")
    p.set_defaults(func=_attack)
    p.add_argument("--denoiser", required=True, help="a shipped denoiser name or a model file")
    p.add_argument("--denoiser-arch", default=None, help="architecture of a .pt state dict")
    p.add_argument("--classifier", default=None, help="a shipped classifier name or a model file")
    p.add_argument("--classifier-arch", default=None, help="architecture of a .pt state dict")
    p.add_argument(
        "--denoiser-kwargs", default=None, help='the architecture\'s arguments as JSON, e.g. {"channels": 1}'
    )
    p.add_argument("--classifier-kwargs", default=None, help="the architecture's arguments as JSON")
    p.add_argument(
        "--trust-model-file",
        action="store_true",
        help="allow TorchScript and .pt2 model files: loading them can RUN CODE embedded in the file, "
        "so use this only for files you trust (without it, only state dicts with --*-arch load)",
    )
    p.add_argument("--data", required=True, help=f"{', '.join(SETUPS)} (a shipped test split) or an image folder")
    p.add_argument(
        "--class-map",
        default=None,
        help="folders: a JSON file, a list of the classifier's class names or {folder: index}; "
        "without it, class folders must be named by class index (0, 1, ...)",
    )
    p.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="folders: read symbolic links that lead out of the folder (skipped by default)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="--out holds a run of another configuration: delete its results and start anew",
    )
    p.add_argument("--size", type=int, default=None, help="resize folder images to size x size")
    p.add_argument("--channels", type=int, default=3, choices=[1, 3], help="folder images: 1 or 3 channels")
    p.add_argument("--attack", choices=["miga", "degradation", "e2e-pgd"], default="miga")
    p.add_argument("--task", choices=["known", "unknown"], default=None)
    p.add_argument(
        "--eps",
        default=None,
        help="the radius in units of the [0, 1] image range, a number or a fraction such as 8/255 "
        "(default: 8/255 for linf, 1.0 for l2; linf radii above 1 are refused; not for ssim)",
    )
    p.add_argument("--norm", choices=["linf", "l2", "ssim"], default="linf")
    p.add_argument("--tau", type=float, default=0.95, help="--norm ssim: the SSIM floor, SSIM(x, x + delta) >= tau")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sigma", type=float, default=25.0, help="noise level (0-255 scale)")
    p.add_argument(
        "--n",
        "--n-images",
        dest="n",
        type=int,
        default=None,
        help="attack only the first n images (under torchrun, spell it --n-images: torchrun reads --n as its own)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes that read an image folder ahead of the attack (default: up to 4; 0: read in the attack's)",
    )
    p.add_argument("--compile", action="store_true")
    p.add_argument(
        "--precision",
        choices=["float32", "bfloat16"],
        default="float32",
        help="the models' arithmetic inside the attack (bfloat16: autocast, about 2x faster on CPUs with AVX-512 BF16)",
    )
    p.add_argument("--out", default="miga-fast-attack")
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
