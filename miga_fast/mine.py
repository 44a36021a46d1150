"""MINE: mutual information neural estimation (Belghazi et al. 2018; docs/algorithms.md
section 3) on the fused critic bound.

    critic = MINECritic(x_dim=8, y_dim=8, hidden=128)
    mine = MINE(critic, bound="dv")
    for xb, yb in batches:
        mine.step(xb, yb)              # one critic ascent step, no host sync
    mine.estimate(x_test, y_test)      # nats
    estimate_mi(x, y)                  # all of it: a fresh critic, trained, evaluated held out

The critic is T(x, y) = w2 . act(W_x f(x) + W_y g(y) + b1) + b2 with encoders f, g (an MLP
of `depth - 1` layers on flat inputs, a small CNN on images, or the user's modules). Its
first layer splits, so every score over all B x B pairs comes from u = W_x f(x) and
v = W_y g(y) through `miga_fast.ops.mine_bound`: the critic runs once per batch (not once
for joint and once for shuffled pairs) and the pair matrix is never stored.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import ops
from ._validation import check_choice, check_finite, check_int, check_scalar, value_checks
from .reference.mine import ACTIVATIONS, BOUNDS, PAIRS

_ACT_MODULES = {"relu": nn.ReLU, "elu": nn.ELU, "softplus": nn.Softplus}


class ImageEncoder(nn.Module):
    """A small CNN for [N, C, H, W] images -> [N, 128] features (two stride-2 convolutions,
    pooled to 2 x 2): enough for a critic to tell images apart, cheap enough to train in
    the loop of an attack."""

    def __init__(self, channels: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width // 2, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width // 2, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.out_features = 4 * width

    def forward(self, x):
        return self.net(x)


def _mlp(in_features: int, hidden: int, layers: int, activation: str) -> tuple[nn.Module, int]:
    if layers == 0:
        return nn.Flatten(), in_features
    mods: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), _ACT_MODULES[activation]()]
        width = hidden
    return nn.Sequential(*mods), hidden


def _encoder_for(dim, encoder, hidden: int, depth: int, activation: str, name: str) -> tuple[nn.Module, int]:
    """(module, output width) for one side of the critic."""
    if isinstance(encoder, nn.Module):
        return encoder, _infer_width(encoder, dim, name)
    if isinstance(dim, int):
        if dim < 1:
            raise ValueError(f"`{name}` must be >= 1, got {dim}")
        if encoder not in (None, "mlp"):
            raise ValueError(f"encoder {encoder!r} needs image inputs: give `{name}` as (C, H, W)")
        return _mlp(dim, hidden, depth - 1, activation)
    if not (isinstance(dim, (tuple, list)) and len(dim) == 3 and all(isinstance(d, int) and d > 0 for d in dim)):
        raise ValueError(f"`{name}` must be a feature count or an image shape (C, H, W), got {dim!r}")
    if encoder in (None, "cnn"):
        enc = ImageEncoder(dim[0])
        return enc, enc.out_features
    if encoder == "mlp":
        return _mlp(math.prod(dim), hidden, depth - 1, activation)
    raise ValueError(f"`encoder` must be None, 'cnn', 'mlp', a module or a pair of modules, got {encoder!r}")


def _infer_width(module: nn.Module, dim, name: str) -> int:
    shape = (dim,) if isinstance(dim, int) else tuple(dim)
    try:
        with torch.no_grad():
            out = module(torch.zeros((2, *shape), device=next(module.parameters(), torch.zeros(())).device))
    except Exception as exc:  # noqa: BLE001 - the user's module: report what failed
        raise ValueError(f"the encoder for `{name}` failed on inputs of shape [N, *{shape}]: {exc}") from exc
    return int(out.reshape(2, -1).shape[1])


class MINECritic(nn.Module):
    """T(x, y) = w2 . act(W_x f(x) + W_y g(y) + b1) + b2.

    x_dim, y_dim: feature counts (inputs [N, d]) or image shapes (C, H, W) (inputs
    [N, C, H, W]). hidden: width of the split layer (the op's H). depth: layers of the
    flat-input encoders f, g before the split layer (depth=1: none; the critic is then
    one hidden layer, MINE's classic critic). encoder: None (an MLP for flat inputs, a
    small CNN for images), "mlp", "cnn", a module for both sides (shared weights), or a
    pair (f, g) of modules."""

    def __init__(self, x_dim, y_dim, hidden: int = 256, depth: int = 1, encoder=None, activation: str = "relu"):
        super().__init__()
        check_choice(activation, "activation", ACTIVATIONS)
        check_int(hidden, "hidden", 1)
        check_int(depth, "depth", 1)
        enc_x, enc_y = encoder if isinstance(encoder, (tuple, list)) else (encoder, encoder)
        self.f, fx = _encoder_for(x_dim, enc_x, hidden, depth, activation, "x_dim")
        self.g, fy = _encoder_for(y_dim, enc_y, hidden, depth, activation, "y_dim")
        self.x_dim, self.y_dim, self.activation = x_dim, y_dim, activation
        self.wx = nn.Linear(fx, hidden, bias=False)
        self.wy = nn.Linear(fy, hidden, bias=False)
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.w2 = nn.Parameter(torch.randn(hidden) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(()))

    def _check(self, t, dim, name):
        want = (dim,) if isinstance(dim, int) else tuple(dim)
        if not isinstance(t, torch.Tensor) or tuple(t.shape[1:]) != want:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"`{name}` must be [N, {', '.join(map(str, want))}], got {got}")

    def features(self, x, y):
        """(u, v) [N, hidden]: the split first layer, u = W_x f(x), v = W_y g(y)."""
        self._check(x, self.x_dim, "x")
        self._check(y, self.y_dim, "y")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"`x` and `y` must pair up: {x.shape[0]} vs {y.shape[0]} samples")
        return self.wx(self.f(x)), self.wy(self.g(y))

    def forward(self, x, y):
        """T(x_i, y_i) [N] on the paired samples."""
        u, v = self.features(x, y)
        act = {"relu": torch.relu, "elu": nn.functional.elu, "softplus": nn.functional.softplus}[self.activation]
        return act(u + v + self.b1) @ self.w2 + self.b2

    def bound(self, x, y, bound: str = "dv", pairs: str = "all", perm=None):
        """The lower bound on I(X; Y) from the batch (x, y) (miga_fast.ops.mine_bound)."""
        u, v = self.features(x, y)
        return ops.mine_bound(
            u, v, self.b1, self.w2, self.b2, bound=bound, pairs=pairs, perm=perm, activation=self.activation
        )

    def terms(self, x, y, pairs: str = "all", perm=None):
        """(E_P[T], log E_Q[e^T]) on the batch (miga_fast.ops.mine_terms)."""
        u, v = self.features(x, y)
        return ops.mine_terms(u, v, self.b1, self.w2, self.b2, pairs=pairs, perm=perm, activation=self.activation)


class MINE:
    """Trains a critic by gradient ascent on a bound of I(X; Y).

    bound: "dv" (with Belghazi et al.'s bias-corrected gradient: the denominator's
    gradient is divided by a moving average of E_Q[e^T], kept as a log in a device
    tensor, so there is no overflow and no host sync), "nwj" or "infonce".
    ema: the moving average's rate (0.01 as in public implementations); 0 or 1 turns
    the correction off. pairs: "all" (every i != j is a marginal pair, fused) or
    "shuffle". lr: Adam's step size."""

    def __init__(
        self,
        critic: MINECritic,
        bound: str = "dv",
        ema: float = 0.01,
        lr: float = 1e-3,
        pairs: str = "all",
        optimizer: torch.optim.Optimizer | None = None,
    ):
        if not isinstance(critic, MINECritic):
            raise TypeError(f"`critic` must be a MINECritic, got {type(critic).__name__}")
        self.critic = critic
        self.bound = check_choice(bound, "bound", BOUNDS)
        self.pairs = check_choice(pairs, "pairs", PAIRS)
        if bound == "infonce" and pairs != "all":
            raise ValueError("`bound='infonce'` takes pairs='all' only")
        self.ema = check_scalar(ema, "ema")
        if self.ema > 1:
            raise ValueError(f"`ema` must lie in [0, 1], got {ema}")
        lr = check_scalar(lr, "lr")
        if lr <= 0:
            raise ValueError(f"`lr` must be > 0, got {lr}")
        self.optimizer = optimizer or torch.optim.Adam(critic.parameters(), lr=lr)
        self.log_ma: torch.Tensor | None = None  # log of the moving average of E_Q[e^T]

    def loss(self, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        """(surrogate loss to minimise, the bound's value) on one batch. The ops' data-reading
        checks (NaN scans: host syncs) are off here: this runs in training loops."""
        with value_checks(False):
            return self._loss(x, y)

    def _loss(self, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        if self.bound != "dv":
            value = self.critic.bound(x, y, bound=self.bound, pairs=self.pairs)
            return -value, value.detach()
        joint, lme = self.critic.terms(x, y, pairs=self.pairs)
        value = (joint - lme).detach()
        if not 0 < self.ema < 1:
            return -(joint - lme), value
        with torch.no_grad():
            if self.log_ma is None:
                self.log_ma = lme.detach().clone()
            else:  # log((1 - a) ma + a E_Q[e^T]) in the log domain
                self.log_ma = torch.logaddexp(self.log_ma + math.log1p(-self.ema), lme + math.log(self.ema))
            scale = torch.exp(lme - self.log_ma)
        # d/dtheta of scale * lme = grad E_Q[e^T] / ma: the bias-corrected denominator.
        return -(joint - scale * lme), value

    def step(self, x, y) -> torch.Tensor:
        """One ascent step of the critic on the batch; returns the bound (a detached
        device tensor: reading it is the caller's sync)."""
        self.critic.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss, value = self.loss(x, y)
        loss.backward()
        self.optimizer.step()
        return value

    @torch.no_grad()
    def estimate(self, x, y, batch_size: int = 1024) -> float:
        """The bound on (x, y) in nats with the current critic, averaged over batches of
        `batch_size` (all pairs within each batch)."""
        self.critic.eval()
        n = x.shape[0]
        if n < 2:
            raise ValueError(f"`x` must hold at least 2 samples, got {n}")
        values, weights = [], []
        for i in range(0, n, batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            if xb.shape[0] < 2:
                continue
            values.append(self.critic.bound(xb, yb, bound=self.bound))
            weights.append(xb.shape[0])
        w = torch.tensor(weights, dtype=values[0].dtype, device=values[0].device)
        return float((torch.stack(values) * w).sum() / w.sum())


def _dim(t: torch.Tensor):
    """A critic side's input size: the feature count of [N, d], the image shape of [N, C, H, W]."""
    return t.shape[1] if t.dim() == 2 else tuple(t.shape[1:])


def _train_critic(x, y, steps, batch_size, seed, generator=None, lr=1e-3, ema=0.01, bound="dv", **critic_kwargs):
    """A fresh MINECritic for (x, y), seeded, trained for `steps` Adam steps on random batches
    of the pairs (drawn with `generator`, a CPU generator seeded by `seed` if None) without
    touching the caller's random state. Returns the MINE estimator."""
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        critic = MINECritic(_dim(x), _dim(y), **critic_kwargs).to(device=x.device, dtype=x.dtype)
        mine = MINE(critic, bound=bound, ema=ema, lr=lr)
        batch = min(batch_size, x.shape[0])
        for _ in range(steps):
            idx = torch.randint(x.shape[0], (batch,), generator=g).to(x.device)
            mine.step(x[idx], y[idx])
    return mine


def estimate_mi(
    x,
    y,
    steps: int = 1500,
    batch_size: int = 256,
    seed: int = 0,
    hidden: int = 128,
    depth: int = 1,
    lr: float = 1e-3,
    bound: str = "dv",
    ema: float = 0.01,
    held_out: float = 0.2,
    encoder=None,
    activation: str = "relu",
) -> float:
    """I(X; Y) in nats from paired samples x [N, dx] (or [N, C, H, W]) and y [N, dy] (or
    images): trains a fresh MINECritic for `steps` Adam steps on random batches of the
    training part and returns the bound on the held-out part (`held_out` of the samples;
    0 evaluates on the training samples). Reproducible for a given `seed`."""
    for t, name in ((x, "x"), (y, "y")):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"`{name}` must be a floating-point tensor")
        if t.dim() not in (2, 4):
            raise ValueError(f"`{name}` must be [N, d] or [N, C, H, W], got shape {tuple(t.shape)}")
        check_finite(t, name)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"`x` and `y` must pair up: {x.shape[0]} vs {y.shape[0]} samples")
    check_int(steps, "steps", 1)
    if not 0 <= held_out < 1:
        raise ValueError(f"`held_out` must lie in [0, 1), got {held_out}")
    n = x.shape[0]
    n_test = int(round(n * held_out))
    if n - n_test < 2 or (held_out and n_test < 2):
        raise ValueError(f"too few samples ({n}) for training and a held-out part of {held_out}")
    check_int(batch_size, "batch_size", 2)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g).to(x.device)
    train, test = order[n_test:], (order[:n_test] if n_test else order)
    mine = _train_critic(
        x[train], y[train], steps, batch_size, seed, generator=g, lr=lr, ema=ema, bound=bound,
        hidden=hidden, depth=depth, encoder=encoder, activation=activation,
    )  # fmt: skip
    return mine.estimate(x[test], y[test], batch_size=max(batch_size, 2))


# The critics an independent measurement uses: flat inputs through a two-layer MLP, and
# images through the small CNN. Neither is the attack's critic (its seed, its training data).
MEASURE_ARCHITECTURES = {"mlp": dict(encoder="mlp", depth=2), "cnn": dict(encoder="cnn", depth=1)}
MEASURE_SEEDS = (1001, 1002, 1003, 1004, 1005)


def measure_mi(
    fit: tuple[torch.Tensor, torch.Tensor],
    evaluate: dict,
    seeds=MEASURE_SEEDS,
    architectures=("mlp", "cnn"),
    steps: int = 1500,
    batch_size: int = 256,
    hidden: int = 128,
    lr: float = 1e-3,
    ema: float = 0.01,
) -> dict:
    """An MI measurement independent of any attack: for every architecture in
    MEASURE_ARCHITECTURES and every seed, a fresh critic trained for `steps` Adam steps on
    the `fit` pairs (x, y) (e.g. a training split's clean images and their denoised
    versions) and evaluated (the DV bound, nats, all pairs of the set) on each pair set of
    `evaluate` ({name: (x, y)}: disjoint images, e.g. the test split before and after an
    attack). The DV bound holds for any fixed critic, so every value is a lower bound on
    that set's I(x; y); the same critics measure every set, so the sets compare.

    Returns {architecture: {name: {"values": [per seed], "mean", "sd"}}}."""
    x_fit, y_fit = fit
    if x_fit.shape[0] != y_fit.shape[0] or x_fit.shape[0] < 2:
        raise ValueError(f"`fit` must be two tensors of one N >= 2 samples, got {x_fit.shape[0]}, {y_fit.shape[0]}")
    if not isinstance(evaluate, dict) or not evaluate:
        raise ValueError("`evaluate` must be a non-empty dict {name: (x, y)}")
    for name, (xe, ye) in evaluate.items():
        if xe.shape[1:] != x_fit.shape[1:] or ye.shape[1:] != y_fit.shape[1:] or xe.shape[0] != ye.shape[0]:
            raise ValueError(f"`evaluate[{name!r}]` must pair up and match `fit`'s sample shapes")
    for a in architectures:
        check_choice(a, "architectures", tuple(MEASURE_ARCHITECTURES))
    if len(seeds) < 1:
        raise ValueError("`seeds` must hold at least one seed")
    check_int(steps, "steps", 1)
    check_int(batch_size, "batch_size", 2)
    out = {}
    for arch in architectures:
        values = {name: [] for name in evaluate}
        for seed in seeds:
            mine = _train_critic(
                x_fit, y_fit, steps, batch_size, seed, lr=lr, ema=ema, hidden=hidden, **MEASURE_ARCHITECTURES[arch]
            )
            for name, (xe, ye) in evaluate.items():
                values[name].append(mine.estimate(xe, ye, batch_size=max(batch_size, 2)))
        out[arch] = {}
        for name, vals in values.items():
            t = torch.tensor(vals, dtype=torch.float64)
            out[arch][name] = {"values": vals, "mean": float(t.mean()), "sd": float(t.std()) if len(vals) > 1 else 0.0}
    return out


def pretrain_critic(
    denoiser,
    images: torch.Tensor,
    sigma: float = 25.0,
    steps: int = 1000,
    batch_size: int = 128,
    hidden: int = 64,
    seed: int = 0,
    lr: float = 1e-3,
) -> tuple[MINE, tuple[torch.Tensor, torch.Tensor]]:
    """The unknown-task attack's critic as MIGA's Algorithm 1 starts it: a MINE critic for
    I(x; D(x_n)) trained for `steps` steps on clean pairs of a training split (`images`,
    noised at `sigma` on the 0-255 scale, seeded, through the frozen denoiser, clamped into
    [0, 1] as the pipeline's image). Returns (the MINE estimator, the pairs), the pairs for
    MIGA's `critic_pool` (replayed beside each attacked batch so the critic keeps the
    population in view rather than memorising one batch)."""
    from .data import add_gaussian_noise

    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] < 2:
        raise ValueError("`images` must be a [N >= 2, C, H, W] tensor of training images")
    check_int(steps, "steps", 0)
    check_int(batch_size, "batch_size", 2)
    device = next(denoiser.parameters(), images).device
    x = images.to(device)
    with torch.no_grad():
        y = torch.cat([denoiser(add_gaussian_noise(xb, sigma, generator=seed + i)).clamp(0, 1)
                       for i, xb in enumerate(x.split(256))])  # fmt: skip
    return _train_critic(x, y, steps, batch_size, seed, lr=lr, hidden=hidden), (x, y)
