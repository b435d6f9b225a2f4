"""Defenses against membership inference, each a way to train a model.

A defense is any object with ``name`` and
``train(model, features, labels, config, *, reference=None, num_classes=None) -> nn.Module``
(the :class:`Defense` protocol): give it your model and data, get the trained
(possibly pruned) model back. Provided:

* :class:`NoDefense` — plain training (the overfitting baseline);
* :class:`MinMax` — adversarial regularization (Nasr, Shokri & Houmansadr 2018);
  also usable as an ``extra_loss`` callable inside any training loop;
* :class:`Pruning` — a thin adapter over :mod:`sparsemia.prune` (magnitude or
  ADMM), optionally with a :class:`MinMax` adversary in the objective
  (pruning + Min-Max);
* :class:`DPSGD` — DP-SGD through Opacus (optional extra ``sparsemia[dp]``).

:data:`DEFENSES` is the registry every command uses (``sparsemia train``,
``attack``, ``reproduce`` and the experiment pipeline): each defense's name,
what it combines, and how models "trained like the target" are trained.
:data:`DEFAULTS` holds the one set of default options, and
:func:`build_defense` makes a defense from a name and options.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from sparsemia.prune.admm import DEFAULT_RHO, DEFAULT_ROUNDS
from sparsemia.seeds import derive_seed
from sparsemia.train.trainer import TrainConfig, fit

__all__ = [
    "Defense",
    "NoDefense",
    "MinMax",
    "InferenceModel",
    "Pruning",
    "DPSGD",
    "DefenseSpec",
    "DefenseOptions",
    "DEFENSES",
    "DEFAULTS",
    "canonical_defense",
    "build_defense",
]

logger = logging.getLogger(__name__)


@runtime_checkable
class Defense(Protocol):
    """Something that trains a model with a membership-inference defense."""

    name: str

    def train(
        self,
        model: nn.Module,
        features: torch.Tensor,
        labels: torch.Tensor,
        config: TrainConfig,
        *,
        reference: tuple[torch.Tensor, torch.Tensor] | None = None,
        num_classes: int | None = None,
    ) -> nn.Module: ...


class NoDefense:
    """Plain training with :func:`~sparsemia.train.fit`."""

    name = "none"

    def train(self, model, features, labels, config, *, reference=None, num_classes=None):  # noqa: D102
        fit(model, features, labels, config, num_classes=num_classes)
        return model


class InferenceModel(nn.Module):
    """Nasr et al.'s inference model ``h(f(x), y)``: the prediction vector and the one-hot label,
    each through its own fully connected stack, combined into a membership probability (a logit here)."""

    def __init__(self, num_classes: int, hidden: tuple[int, int, int] = (256, 128, 64)) -> None:
        super().__init__()
        h1, h2, h3 = hidden
        self.num_classes = num_classes
        self.prediction = nn.Sequential(nn.Linear(num_classes, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, h3))
        self.label = nn.Sequential(nn.Linear(num_classes, h2), nn.ReLU(), nn.Linear(h2, h3))
        self.combine = nn.Sequential(nn.ReLU(), nn.Linear(2 * h3, h3), nn.ReLU(), nn.Linear(h3, 1))

    def forward(self, probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(labels, self.num_classes).to(probabilities.dtype)
        return self.combine(torch.cat([self.prediction(probabilities), self.label(onehot)], dim=-1)).squeeze(-1)


class MinMax:
    """Adversarial regularization (Nasr et al. 2018, "Machine Learning with Membership Privacy
    using Adversarial Regularization").

    The classifier ``f`` minimises ``loss(f) + λ · G(f, h)`` where ``G`` is the gain of an
    inference model ``h`` trained to tell ``f``'s training data (members) from a
    reference set ``D'`` the defender holds. Before every classifier step, ``h``
    takes ``k`` steps maximising ``mean log h(f(x), y) over members +
    mean log(1 − h(f(x'), y')) over reference`` (with ``f`` fixed); the
    classifier's regulariser is ``λ · mean log h(f(x), y)`` on its member batch
    (the part of the gain that depends on members), as in the paper's Algorithm 1.

    An instance is an ``extra_loss(model, inputs, targets, outputs)`` callable, so it
    plugs into :func:`~sparsemia.train.fit` and into ``sparsemia.prune.admm``
    unchanged; :meth:`bind` gives it the reference set first.
    """

    name = "minmax"

    def __init__(
        self,
        lam: float = 1.0,
        k: int = 1,
        attack_lr: float = 1e-3,
        num_classes: int | None = None,
        seed: int = 0,
    ) -> None:
        if lam < 0:
            raise ValueError(f"lam: expected >= 0, got {lam}")
        if k < 1:
            raise ValueError(f"k: expected >= 1 inference-model steps per classifier step, got {k}")
        self.lam, self.k, self.attack_lr, self.seed = lam, k, attack_lr, seed
        self.num_classes = num_classes
        self.inference: InferenceModel | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._reference: tuple[torch.Tensor, torch.Tensor] | None = None
        self._generator = torch.Generator().manual_seed(seed)

    def bind(self, reference: tuple[torch.Tensor, torch.Tensor], num_classes: int) -> MinMax:
        """Set the defender's reference set ``(features, labels)`` (disjoint from the training set)."""
        ref_x, ref_y = reference
        if ref_x.shape[0] == 0 or ref_x.shape[0] != ref_y.shape[0]:
            raise ValueError("reference: expected a non-empty (features, labels) pair of equal length")
        self._reference = (ref_x, ref_y)
        self.num_classes = num_classes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.inference = InferenceModel(num_classes)
        self._optimizer = torch.optim.Adam(self.inference.parameters(), lr=self.attack_lr)
        return self

    def _train_inference(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        assert self.inference is not None and self._optimizer is not None and self._reference is not None
        ref_x, ref_y = self._reference
        device = inputs.device
        self.inference.to(device)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            member_p = F.softmax(model(inputs), dim=-1)
        for _ in range(self.k):
            pick = torch.randint(0, ref_x.shape[0], (inputs.shape[0],), generator=self._generator)
            rx, ry = ref_x[pick].to(device), ref_y[pick].to(device)
            with torch.no_grad():
                ref_p = F.softmax(model(rx), dim=-1)
            member_logit = self.inference(member_p, targets)
            ref_logit = self.inference(ref_p, ry)
            # −gain: BCE with members labelled 1 and reference 0
            attack_loss = F.binary_cross_entropy_with_logits(
                member_logit, torch.ones_like(member_logit)
            ) + F.binary_cross_entropy_with_logits(ref_logit, torch.zeros_like(ref_logit))
            self._optimizer.zero_grad(set_to_none=True)
            attack_loss.backward()
            self._optimizer.step()
        model.train(was_training)

    def __call__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        if self.inference is None:
            raise ValueError("MinMax: call bind(reference, num_classes) before training")
        self._train_inference(model, inputs, targets)
        for p in self.inference.parameters():
            p.requires_grad_(False)
        try:
            member_logit = self.inference(F.softmax(outputs, dim=-1), targets)
            gain = F.logsigmoid(member_logit).mean()  # mean log h(f(x), y)
        finally:
            for p in self.inference.parameters():
                p.requires_grad_(True)
        return self.lam * gain

    def train(self, model, features, labels, config, *, reference=None, num_classes=None):  # noqa: D102
        if reference is None:
            raise ValueError("reference: the Min-Max defense needs a reference set disjoint from the training set")
        classes = num_classes or int(labels.max()) + 1
        self.bind(reference, classes)
        fit(model, features, labels, config, extra_loss=self, num_classes=num_classes)
        return model


class Pruning:
    """Pruning as a defense: an adapter over :mod:`sparsemia.prune`.

    The model is first trained as ``base`` would train it (plain training, or
    Min-Max when ``minmax`` is given), then pruned to ``sparsity``:

    * ``method="magnitude"``: one-shot magnitude pruning, then ``finetune_epochs``
      of masked fine-tuning with the same config (and the adversary, if any);
    * ``method="admm"``: ``sparsemia.prune.admm`` with the adversary's gain as its
      ``extra_loss`` (pruning + Min-Max jointly, as the research proposes).
    """

    def __init__(
        self,
        method: str = "admm",
        sparsity: float = 0.9,
        *,
        minmax: MinMax | None = None,
        finetune_epochs: int = 20,
        scope: str = "layer",
        admm_rounds: int = DEFAULT_ROUNDS,
        admm_rho: float = DEFAULT_RHO,
        pretrain: bool = True,
    ) -> None:
        if method not in ("magnitude", "admm"):
            raise ValueError(f"method: expected 'magnitude' or 'admm', got {method!r}")
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity: expected a fraction in [0, 1), got {sparsity}")
        self.method, self.sparsity, self.minmax = method, sparsity, minmax
        self.finetune_epochs, self.scope = finetune_epochs, scope
        self.admm_rounds, self.admm_rho, self.pretrain = admm_rounds, admm_rho, pretrain
        self.name = f"{method}{'+minmax' if minmax is not None else ''}"

    def train(self, model, features, labels, config, *, reference=None, num_classes=None):  # noqa: D102
        from dataclasses import replace

        from sparsemia import prune

        extra = None
        if self.minmax is not None:
            if reference is None:
                raise ValueError("reference: pruning + Min-Max needs a reference set disjoint from the training set")
            self.minmax.bind(reference, num_classes or int(labels.max()) + 1)
            extra = self.minmax
        if self.pretrain:
            fit(model, features, labels, config, extra_loss=extra, num_classes=num_classes)
        if self.method == "magnitude":
            prune.magnitude(model, sparsity=self.sparsity, scope=self.scope)
            if self.finetune_epochs > 0:
                ft = replace(config, epochs=self.finetune_epochs, seed=derive_seed(config.seed, "finetune"))
                fit(model, features, labels, ft, extra_loss=extra, num_classes=num_classes)
        else:
            loader = _batches(features, labels, config)
            prune.admm(
                model,
                loader,
                sparsity=self.sparsity,
                rho=self.admm_rho,
                rounds=self.admm_rounds,
                retrain_epochs=self.finetune_epochs,
                scope=self.scope,
                extra_loss=extra,
                lr=config.lr,
            )
        return model


class _batches:
    """Re-iterable shuffled ``(inputs, targets)`` batches, a fresh deterministic order each pass."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, config: TrainConfig) -> None:
        self.features, self.labels, self.config = features, labels, config
        self._epoch = 0

    def __iter__(self):
        gen = torch.Generator().manual_seed(derive_seed(self.config.seed, "admm-batches", self._epoch))
        self._epoch += 1
        order = torch.randperm(self.features.shape[0], generator=gen)
        for s in range(0, order.numel(), self.config.batch_size):
            idx = order[s : s + self.config.batch_size]
            yield self.features[idx], self.labels[idx]


class DPSGD:
    """DP-SGD (Abadi et al. 2016) through Opacus's ``PrivacyEngine`` (optional extra ``sparsemia[dp]``).

    Either ``noise_multiplier`` or ``target_epsilon`` (with ``delta``) sets the noise;
    per-example gradients are clipped to ``max_grad_norm``. After training,
    ``epsilon`` holds the spent privacy budget at ``delta``.
    """

    name = "dpsgd"

    def __init__(
        self,
        max_grad_norm: float = 1.0,
        noise_multiplier: float | None = 1.0,
        target_epsilon: float | None = None,
        delta: float = 1e-5,
    ) -> None:
        if max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm: expected > 0, got {max_grad_norm}")
        if (noise_multiplier is None) == (target_epsilon is None):
            raise ValueError("noise_multiplier, target_epsilon: give exactly one of them")
        self.max_grad_norm, self.noise_multiplier = max_grad_norm, noise_multiplier
        self.target_epsilon, self.delta = target_epsilon, delta
        self.epsilon: float | None = None

    def train(self, model, features, labels, config, *, reference=None, num_classes=None):  # noqa: D102
        try:
            from opacus import PrivacyEngine
            from opacus.validators import ModuleValidator
        except ImportError as exc:
            raise ImportError(
                "the DP-SGD defense needs Opacus, which is not installed; "
                "install it with `pip install sparsemia[dp]` (opacus>=1.5)"
            ) from exc
        from torch.utils.data import DataLoader, TensorDataset

        from sparsemia.train.trainer import make_optimizer

        torch.manual_seed(config.seed)
        if not ModuleValidator.is_valid(model):
            raise ValueError("model: not compatible with Opacus (e.g. BatchNorm); fix it with opacus.validators.ModuleValidator.fix")
        loader = DataLoader(
            TensorDataset(features, labels),
            batch_size=config.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(config.seed),
        )
        optimizer = make_optimizer(model.parameters(), config)
        engine = PrivacyEngine()
        if self.target_epsilon is not None:
            model, optimizer, loader = engine.make_private_with_epsilon(
                module=model, optimizer=optimizer, data_loader=loader, epochs=config.epochs,
                target_epsilon=self.target_epsilon, target_delta=self.delta, max_grad_norm=self.max_grad_norm,
            )
        else:
            model, optimizer, loader = engine.make_private(
                module=model, optimizer=optimizer, data_loader=loader,
                noise_multiplier=self.noise_multiplier, max_grad_norm=self.max_grad_norm,
            )
        model.train()
        for epoch in range(config.epochs):
            for inputs, targets in loader:
                if len(targets) == 0:
                    continue
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(inputs), targets).backward()
                optimizer.step()
            logger.info("DP-SGD epoch %d/%d", epoch + 1, config.epochs)
        self.epsilon = float(engine.get_epsilon(self.delta))
        logger.info("DP-SGD: epsilon %.3f at delta %g", self.epsilon, self.delta)
        return getattr(model, "_module", model)


@dataclass(frozen=True)
class DefenseSpec:
    """A defense of the registry: what it combines, and how models trained like its target train.

    ``pruning``: ``"magnitude"``, ``"admm"`` or None; ``minmax``: a Min-Max adversary in the
    objective (needs the defender's reference set); ``shadow_training``: ``"stacked"`` when
    shadow / population models train together as one stacked model, ``"one_by_one"``
    when each is trained by the defense's own ``train`` in turn.
    """

    name: str
    summary: str
    pruning: str | None = None
    minmax: bool = False
    dpsgd: bool = False
    shadow_training: str = "one_by_one"

    @property
    def needs_reference(self) -> bool:
        return self.minmax


#: Every defense, by name (results files carry these names).
DEFENSES: dict[str, DefenseSpec] = {
    s.name: s
    for s in (
        DefenseSpec("none", "plain training (the overfitting baseline)", shadow_training="stacked"),
        DefenseSpec("minmax", "Min-Max game / adversarial regularization (Nasr et al. 2018)", minmax=True),
        DefenseSpec("magnitude", "magnitude pruning + masked fine-tuning", pruning="magnitude"),
        DefenseSpec("admm", "ADMM pruning + masked retraining (Zhang et al. 2018)", pruning="admm"),
        DefenseSpec("magnitude+minmax", "magnitude pruning with the Min-Max adversary", pruning="magnitude",
                    minmax=True),
        DefenseSpec("admm+minmax", "ADMM pruning with the Min-Max adversary in its objective", pruning="admm",
                    minmax=True),
        DefenseSpec("dpsgd", "DP-SGD through Opacus", dpsgd=True),
    )
}

_DEFENSE_ALIASES = {"min-max": "minmax", "nodefense": "none", "dp-sgd": "dpsgd"}


def canonical_defense(name: str, argument: str = "defense") -> str:
    """The :data:`DEFENSES` name of ``name`` (``_`` and ``-`` spellings accepted); a clear error otherwise."""
    key = str(name).strip().lower().replace("_", "-")
    key = _DEFENSE_ALIASES.get(key, key).replace("-minmax", "+minmax").replace("-min-max", "+minmax")
    if key not in DEFENSES:
        raise ValueError(f"{argument}: unknown defense {name!r}; expected one of {', '.join(DEFENSES)}")
    return key


@dataclass(frozen=True)
class DefenseOptions:
    """The options of the defenses, with the one set of defaults (:data:`DEFAULTS`).

    ``sparsity``, ``finetune_epochs`` (masked fine-tuning after magnitude pruning, retraining
    after ADMM), ``admm_rounds``, ``admm_rho``, ``scope``: the pruning defenses;
    ``lam``, ``k``: the Min-Max adversary (weight of its gain, its steps per classifier step).
    """

    sparsity: float = 0.9
    finetune_epochs: int = 20
    admm_rounds: int = DEFAULT_ROUNDS
    admm_rho: float = DEFAULT_RHO
    scope: str = "layer"
    lam: float = 1.0
    k: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DefenseOptions:
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"defense_options: unknown option(s) {unknown}; expected some of {sorted(known)}")
        return cls(**data)

    def relevant(self, name: str) -> dict[str, Any]:
        """The options the defense ``name`` uses (what a training record stores)."""
        spec = DEFENSES[canonical_defense(name)]
        keep: set[str] = set()
        if spec.pruning:
            keep |= {"sparsity", "finetune_epochs", "scope"}
        if spec.pruning == "admm":
            keep |= {"admm_rounds", "admm_rho"}
        if spec.minmax:
            keep |= {"lam", "k"}
        return {k: v for k, v in self.to_dict().items() if k in keep}


#: The default options of every defense.
DEFAULTS = DefenseOptions()


def build_defense(name: str, options: DefenseOptions | dict[str, Any] | None = None, *, seed: int = 0,
                  **kwargs: Any) -> Defense:
    """A defense by name (see :data:`DEFENSES`).

    ``options`` (a :class:`DefenseOptions` or a dict of its fields; default :data:`DEFAULTS`)
    sets the defense's parameters; ``seed`` seeds the Min-Max adversary (its
    initialisation and reference batches); ``kwargs`` go to the constructor as they are
    (``DPSGD``'s options, ``pretrain``, ``attack_lr``).
    """
    spec = DEFENSES[canonical_defense(name, "name")]
    opts = options if isinstance(options, DefenseOptions) else DefenseOptions.from_dict(options)
    known = {f.name for f in fields(DefenseOptions)}
    given = {k: kwargs.pop(k) for k in list(kwargs) if k in known}
    if given:
        opts = replace(opts, **given)
    adversary_seed = kwargs.pop("seed", seed)
    if spec.dpsgd:
        return DPSGD(**kwargs)
    adversary = None
    if spec.minmax:
        attack_lr = {"attack_lr": kwargs.pop("attack_lr")} if "attack_lr" in kwargs else {}
        adversary = MinMax(lam=opts.lam, k=opts.k, seed=adversary_seed, **attack_lr)
    if spec.pruning is None:
        if kwargs:
            raise ValueError(f"options: {spec.name} takes no option(s) {sorted(kwargs)}")
        return adversary if adversary is not None else NoDefense()
    return Pruning(spec.pruning, opts.sparsity, minmax=adversary, finetune_epochs=opts.finetune_epochs,
                   scope=opts.scope, admm_rounds=opts.admm_rounds, admm_rho=opts.admm_rho, **kwargs)
