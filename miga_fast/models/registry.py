"""The registry of committed checkpoints, and loading users' own models.

`checkpoints/manifest.json` lists each shipped model: its architecture and arguments,
the data it was trained on, its file's SHA-256 and size, a description and the quality
the training script measured on the held-out split. Checkpoints are plain state dicts,
loaded with `torch.load(..., weights_only=True)` after their checksum is verified.
Users' files load by default only in formats that cannot run code (docs/security.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .classifiers import SmallCNN, SmallResNet
from .denoisers import DnCNN, UNetDenoiser
from .diffusion import DiffusionUNet

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
MANIFEST = CHECKPOINT_DIR / "manifest.json"
ARCHITECTURES = {
    "dncnn": DnCNN,
    "unet_denoiser": UNetDenoiser,
    "small_cnn": SmallCNN,
    "small_resnet": SmallResNet,
    "diffusion_unet": DiffusionUNet,
}


@dataclass
class ModelInfo:
    name: str
    kind: str  # "denoiser" | "classifier" | "diffusion"
    arch: str
    kwargs: dict
    data: str
    description: str
    file: str
    sha256: str
    bytes: int
    quality: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)


def build(arch: str, **kwargs) -> nn.Module:
    """A fresh (untrained) model of a named architecture."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**kwargs)


def _read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST.name
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def available(directory: Path | None = None) -> dict[str, ModelInfo]:
    """The shipped models by name, each with its description and measured quality
    (`directory`: another checkpoint folder with its own manifest.json)."""
    manifest = _read_manifest(directory or CHECKPOINT_DIR)
    return {name: ModelInfo(name=name, **entry) for name, entry in sorted(manifest.items())}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_state(path: Path, expected_sha: str | None = None) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if expected_sha is not None and sha256_of(path) != expected_sha:
        raise ValueError(
            f"checkpoint {path.name} is corrupt: its SHA-256 does not match the manifest "
            "(re-install miga_fast or re-run its training script)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, expected a state dict")
    return state


def _ready(model: nn.Module, device) -> nn.Module:
    try:
        model.eval()
    except NotImplementedError:  # a torch.export module keeps the mode it was exported in
        pass
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device) if device is not None else model


def _load_weights_file(path: Path) -> dict:
    """A user's weights file, read by a loader that cannot run code: safetensors, or a
    pickled state dict through torch.load(weights_only=True)."""
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ValueError(f"{path} is a safetensors file: install the `safetensors` package to read it") from exc
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - a malformed file: say so in one line
            raise ValueError(f"cannot read safetensors file {path}: {type(exc).__name__}: {exc}") from exc
    return _load_state(path)


UNTRUSTED_FORMATS = (".pt2 (torch.export)", "TorchScript")
TRUST_NOTE = (
    "TorchScript and torch.export (.pt2) files can run arbitrary code while they load; "
    "load one only from a source you trust"
)


def load(
    name: str, device=None, *, arch: str | None = None, directory: Path | None = None, trust: bool = False, **kwargs
) -> nn.Module:
    """A ready model in eval mode (parameters frozen).

    name: a shipped model (see `available()`; its file's SHA-256 is checked against the
    manifest), or a path to a user's file:
      - a state dict (`.pt`/`.pth`, read with `torch.load(weights_only=True)`, or
        `.safetensors`) together with `arch=` (one of ARCHITECTURES) and its keyword
        arguments: the safe default, no code in the file is run;
      - a TorchScript file or a `torch.export` archive (`.pt2`), only with `trust=True`.
        Loading these formats can execute code embedded in the file (TorchScript runs
        the module's `__setstate__`, and a `.pt2` archive unpickles parts of itself
        without restriction), so a file from an untrusted source can take over the
        process. Without `trust=True` such a file is refused before it is opened.
    `directory`: another checkpoint folder with its own manifest.json.
    """
    directory = Path(directory or CHECKPOINT_DIR)
    models = available(directory)
    if name in models:
        info = models[name]
        state = _load_state(directory / info.file, info.sha256)
        model = build(info.arch, **info.kwargs)
        model.load_state_dict(state)
        return _ready(model, device)
    path = Path(name)
    if not path.exists():
        raise ValueError(
            f"unknown model {name!r}: not a shipped model ({', '.join(models) or 'none'}) and not an existing file"
        )
    if arch is not None:
        model = build(arch, **kwargs)
        try:
            model.load_state_dict(_load_weights_file(path))
        except RuntimeError as exc:
            raise ValueError(f"{path} does not fit architecture {arch!r} with {kwargs}: {exc}") from exc
        return _ready(model, device)
    if not trust:
        raise ValueError(
            f"refusing to load {path} without arch=: it would be read as TorchScript or a "
            f"torch.export archive, and {TRUST_NOTE}. Save its state dict and pass arch= "
            f"(one of {sorted(ARCHITECTURES)}), or pass trust=True (CLI: --trust-model-file) "
            "for a file you trust"
        )
    if path.suffix == ".pt2":
        try:
            return _ready(torch.export.load(str(path)).module(), device)
        except Exception as exc:
            raise ValueError(f"cannot read the torch.export archive {path}: {exc}") from exc
    try:
        return _ready(torch.jit.load(str(path), map_location="cpu"), device)
    except Exception as exc:
        raise ValueError(
            f"{path} is not a TorchScript file; for a state dict pass arch= (one of {sorted(ARCHITECTURES)})"
        ) from exc


def register(info: ModelInfo, state: dict, directory: Path | None = None) -> ModelInfo:
    """Save a state dict into the checkpoint folder and record it in the manifest
    (used by the training scripts)."""
    directory = Path(directory or CHECKPOINT_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / info.file
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, path)
    info.sha256 = sha256_of(path)
    info.bytes = path.stat().st_size
    manifest = _read_manifest(directory)
    entry = {k: v for k, v in info.__dict__.items() if k != "name"}
    manifest[info.name] = entry
    (directory / MANIFEST.name).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return info
