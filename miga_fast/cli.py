"""The `miga-fast` command."""
from __future__ import annotations

import argparse
import json
import sys


def _print_backends(as_json: bool) -> int:
    import miga_fast

    info = miga_fast.backends()
    if as_json:
        print(json.dumps(info, indent=2))
        return 0
    v = info["versions"]
    print(f"miga_fast {miga_fast.__version__}  torch {v['torch']} (CUDA {v['torch_cuda']})  "
          f"extension built for torch {v['built_for_torch']}  GPU: {v['gpu'] or 'none visible'}")
    if v["version_note"]:
        print(f"warning: {v['version_note']}")
    print(f"{'backend':<10} {'built':<6} {'runs here':<10} note")
    for name in ("cuda", "triton", "cpu", "reference"):
        b = info[name]
        print(f"{name:<10} {'yes' if b['built'] else 'no':<6} {'yes' if b['runs_here'] else 'no':<10} {b['note']}")
    print(f"selected: {info['selected']}")
    return 0


def _print_models(as_json: bool, evaluate: bool) -> int:
    from miga_fast import models

    infos = models.available()
    if not infos:
        print("no shipped models found (miga_fast/models/checkpoints/manifest.json is missing)", file=sys.stderr)
        return 1
    if evaluate:
        from miga_fast import train

        for info in infos.values():
            info.quality = _evaluate(info, train)
    if as_json:
        print(json.dumps({n: i.__dict__ for n, i in infos.items()}, indent=2))
        return 0
    print(f"{'model':<15} {'kind':<10} {'data':<10} {'size':>8}  quality (held-out split{', re-measured' if evaluate else ''})")
    for info in infos.values():
        print(f"{info.name:<15} {info.kind:<10} {info.data:<10} {info.bytes / 1024:6.0f}KB  {_quality_line(info)}")
        print(f"{'':<15} {info.description}")
    return 0


def _quality_line(info) -> str:
    q = info.quality
    if info.kind == "denoiser":
        parts = [f"sigma {s}: {q[f'psnr_noisy_sigma{s}']:.1f} -> {q[f'psnr_denoised_sigma{s}']:.1f} dB"
                 for s in (15, 25, 50) if f"psnr_noisy_sigma{s}" in q]
        return "PSNR noisy -> denoised  " + ", ".join(parts)
    if info.kind == "classifier":
        line = f"accuracy clean {q['accuracy_clean']:.1%}, noisy(25) {q.get('accuracy_noisy_sigma25', float('nan')):.1%}"
        if "accuracy_denoised_sigma25" in q:
            line += f", {q.get('denoiser')}(noisy(25)) {q['accuracy_denoised_sigma25']:.1%}"
        return line
    line = f"eps-prediction MSE {q.get('test_eps_mse', float('nan')):.4f}"
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
    return {**train.evaluate_diffusion(model, x), **({"samples": info.quality["samples"]} if "samples" in info.quality else {})}


def _ssim_attack(args) -> int:
    from pathlib import Path

    from miga_fast.experiments import SETUPS, ssim_attack_report

    if not 0 < args.tau <= 1:
        print(f"miga-fast: --tau must lie in (0, 1], got {args.tau}", file=sys.stderr)
        return 2
    if args.n < 2 or args.steps < 1:
        print("miga-fast: --n must be >= 2 and --steps >= 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    results = []
    for setup in (list(SETUPS) if args.data == "all" else [args.data]):
        print(f"{setup}: attacking {args.n} held-out images ...", flush=True)
        results.append(ssim_attack_report(setup, args.n, args.tau, args.steps, out,
                                          log=lambda s: print(s, flush=True)))
    for r in results:
        print(f"\n{r['data']} ({r['classifier']}, {r['images']} images, clean accuracy {r['clean_accuracy']:.1%})")
        print(f"{'attack':<40} {'fooled':>7} {'SSIM':>6} {'linf':>6} {'l2':>6} {'corr(1-SSIM,CAM)':>17} {'IoU top20%':>10}")
        for row in r["rows"]:
            print(f"{row['attack']:<40} {row['fooling_rate']:7.1%} {row['mean_ssim']:6.3f} {row['linf']:6.3f} "
                  f"{row['l2']:6.2f} {row['ssim_cam_correlation']:17.3f} {row['ssim_cam_iou']:10.3f}")
        print(f"grid (clean / adversarial / amplified perturbation / 1 - SSIM map / Grad-CAM): {r['grid']}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "ssim_attack.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out / 'ssim_attack.json'}")
    return 0


def main(argv=None) -> int:
    from miga_fast import __version__

    parser = argparse.ArgumentParser(prog="miga-fast", description=__doc__)
    parser.add_argument("--version", action="version", version=f"miga_fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("backends", help="what was built and what runs on this machine")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = sub.add_parser("models", help="the shipped models and their measured quality")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--evaluate", action="store_true", help="re-measure quality on the held-out splits now")
    p = sub.add_parser("ssim-attack", help="SSIM-ball attacks vs SSIM-matched PGD, with SSIM-map / Grad-CAM agreement")
    p.add_argument("--data", choices=["natural", "digits", "all"], default="all")
    p.add_argument("--n", type=int, default=96, help="held-out images per data set")
    p.add_argument("--tau", type=float, default=0.95, help="the SSIM bound")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default="miga-fast-out", help="folder for the JSON and the PNG grids")
    args = parser.parse_args(argv)
    if args.command == "ssim-attack":
        return _ssim_attack(args)
    if args.command == "backends":
        return _print_backends(args.json)
    if args.command == "models":
        return _print_models(args.json, args.evaluate)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2


if __name__ == "__main__":
    sys.exit(main())
