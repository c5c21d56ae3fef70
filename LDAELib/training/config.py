"""Training settings as dataclasses, and the recipe that bundles them with the model config (its file
is read and written by ``recipe_file``).

A recipe is one JSON or YAML file::

    name: LDAE demo model
    model: {vae_args: …, unet_args: …, enc_args: …, space: …}   # an LDAEConfig (default small_config())
    data: {split_seed: 0, val_fraction: 0.15, test_fraction: 0.15, …}
    autoencoder: {steps: …, batch_size: …, lr: …, kl_weight: …, …}
    ddpm: {steps: …, …}
    representation: {steps: …, …}
    probes: {l2: …, …}

Every section round-trips (``to_dict`` / ``from_dict``); an unknown key is an error, so a typo in a
recipe does not pass silently. ``batch_size`` is the *global* batch: with N processes each takes
batch_size / N, so a recipe trains the same model on one GPU or on eight.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import LDAEError
from ..model import LDAEConfig, small_config

STAGES = ("autoencoder", "decoder", "ddpm", "representation")
"""The stages trained by gradient descent, in order (the probes and the bundle follow). ``decoder``
is optional (``steps: 0``, the default, leaves it out) and nothing after it depends on it."""


def _from_dict(cls, d: dict | None, what: str):
    d = dict(d or {})
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise LDAEError(f"unknown {what} settings {sorted(unknown)}; known: {', '.join(sorted(names))}")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    try:
        return cls(**kw)
    except (TypeError, ValueError) as err:
        raise LDAEError(f"bad {what} settings: {err}") from None


def _to_dict(obj) -> dict:
    return json.loads(json.dumps(asdict(obj)))  # tuples → lists


@dataclass
class StageConfig:
    """What every gradient-descent stage needs.

    Attributes:
        steps: optimizer steps (ignored when ``epochs`` is set).
        epochs: passes over the training volumes; steps = ceil(epochs × steps per epoch).
        batch_size: global batch (all processes together); must be divisible by the process count.
        lr: AdamW learning rate (peak, after warm-up).
        lr_schedule: "constant" or "cosine" (cosine decay to ``lr_min_factor`` × lr at the last step).
        warmup_steps: linear warm-up of the learning rate from 0.
        weight_decay: AdamW weight decay.
        grad_clip: clip the global gradient norm to this (0 = no clipping).
        ema_decay: decay of the exponential moving average of the weights, updated every optimizer
            step (the authors: 0.999). The EMA weights are the ones shipped.
        ema_warmup: use min(ema_decay, (1+n)/(10+n)) after n updates, so short runs are not
            dominated by the random initial weights.
        seed: seeds the initial weights, the data order and every noise draw.
        log_interval: steps between log lines (losses averaged over the interval and the processes).
        checkpoint_interval: steps between checkpoints (0 = only at the end).
        keep_checkpoints: how many step checkpoints to keep (the final one is always kept).
        val_interval: steps between losses of the EMA weights on fixed validation batches
            (0 = only at checkpoints); also measured before the first step.
        val_volumes: how many volumes (and noise draws) the fixed validation batches hold.
        precision: "float32", or "bfloat16" autocast (GPUs; CPUs with AVX-512 bf16 too).
        channels_last: run the 3-D convolutions in channels-last layout (faster with bfloat16 on CPUs).
    """

    steps: int = 1000
    epochs: float | None = None
    batch_size: int = 4
    lr: float = 1e-4
    lr_schedule: str = "constant"
    lr_min_factor: float = 0.1
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    seed: int = 0
    log_interval: int = 10
    checkpoint_interval: int = 200
    keep_checkpoints: int = 2
    val_interval: int = 0
    val_volumes: int = 4
    precision: str = "float32"
    channels_last: bool = False

    _MIN_STEPS = 1  # class constant, not a setting: an optional stage allows 0 (= off)

    def __post_init__(self) -> None:
        if self.epochs is None and self.steps < self._MIN_STEPS:
            raise LDAEError(f"steps must be at least {self._MIN_STEPS}, got {self.steps}")
        if self.epochs is not None and not self.epochs > 0:
            raise LDAEError(f"epochs must be positive, got {self.epochs}")
        if self.batch_size < 1:
            raise LDAEError(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise LDAEError(f"lr must be positive, got {self.lr}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise LDAEError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise LDAEError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.precision not in ("float32", "bfloat16"):
            raise LDAEError(f"precision must be 'float32' or 'bfloat16', got {self.precision!r}")
        if self.log_interval < 1:
            raise LDAEError("log_interval must be at least 1")

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the stage, given how many steps make one pass over the training data."""
        if self.epochs is None:
            return int(self.steps)
        return max(1, math.ceil(self.epochs * steps_per_epoch))

    def lr_at(self, step: int, total: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based) out of ``total``."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_schedule == "cosine":
            span = max(1, total - self.warmup_steps - 1)
            p = min(1.0, (step - self.warmup_steps) / span)
            lo = self.lr * self.lr_min_factor
            return lo + 0.5 * (self.lr - lo) * (1.0 + math.cos(math.pi * p))
        return self.lr

    def to_dict(self) -> dict:
        return _to_dict(self)


def _check_image_loss(cfg) -> None:
    """The settings of the stages that train a decoder on images (autoencoder, decoder)."""
    if not cfg.ssim_weight >= 0:
        raise LDAEError(f"ssim_weight must be 0 or positive, got {cfg.ssim_weight}")
    if not cfg.edge_weight >= 0:
        raise LDAEError(f"edge_weight must be 0 or positive, got {cfg.edge_weight}")
    if not 0.0 <= cfg.augment <= 1.0:
        raise LDAEError(f"augment is a probability in [0, 1], got {cfg.augment}")


@dataclass
class AutoencoderStageConfig(StageConfig):
    """Stage (a), the AutoencoderKL: L1 reconstruction + ``kl_weight`` × KL (per volume, summed over the latent).

    ``crop``: train on random crops of this size (voxels per axis, multiples of the autoencoder's
    downsampling) instead of whole volumes; the network is convolutional, so it applies to whole
    volumes unchanged, and a step costs crop/volume of a whole-volume step. None = whole volumes.
    ``ssim_weight``: adds weight × (1 − SSIM) of the reconstruction (3-D, Gaussian window σ 1.5
    voxels, the evaluation's SSIM) to the loss: a structural term beside the L1.
    ``edge_weight``: adds weight × mean |∇rec − ∇x| (forward differences along the three axes), a
    term for the sharpness of edges that L1 and SSIM let a decoder soften (0 = off).
    ``augment``: probability that a training volume is changed in contrast, bias, noise and
    resolution first (``training.augment``), so that real scans are in distribution (0 = off).
    """

    steps: int = 3000
    batch_size: int = 2
    lr: float = 1e-4
    kl_weight: float = 1e-6
    crop: tuple[int, int, int] | None = None
    ssim_weight: float = 0.0
    edge_weight: float = 0.0
    augment: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_image_loss(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "AutoencoderStageConfig":
        return _from_dict(cls, d, "autoencoder stage")


@dataclass
class DecoderStageConfig(StageConfig):
    """Stage (a′), optional: the decoder refined on the posterior means μ, the encoder frozen
    (``training.decoder``). ``steps: 0`` (the default) leaves the stage out and the bundle keeps the
    autoencoder stage's decoder. ``ssim_weight``, ``edge_weight`` and ``augment`` as in the
    autoencoder stage.

    Patch-adversarial term (``nets.discriminator``), off while ``adversarial_weight`` is 0: from
    step ``adversarial_start`` a discriminator (``discriminator_width``, its own AdamW at
    ``discriminator_lr``, betas 0.5/0.9) trains one hinge step after every decoder step, on the
    batch against the decoder's output; ``adversarial_warmup`` steps later the decoder's loss
    gains ``adversarial_weight`` × (−mean D(decode(μ))). The discriminator and its optimizer are
    checkpointed with the stage and resume with it; the bundle never carries them.
    """

    steps: int = 0
    batch_size: int = 2
    lr: float = 1e-4
    ssim_weight: float = 0.5
    edge_weight: float = 0.0
    augment: float = 0.5
    adversarial_weight: float = 0.0
    adversarial_start: int = 0
    adversarial_warmup: int = 100
    discriminator_lr: float = 2e-4
    discriminator_width: int = 16
    _MIN_STEPS = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_image_loss(self)
        if not self.adversarial_weight >= 0:
            raise LDAEError(f"adversarial_weight must be 0 or positive, got {self.adversarial_weight}")
        if self.adversarial_start < 0 or self.adversarial_warmup < 0:
            raise LDAEError("adversarial_start and adversarial_warmup are step counts, 0 or more; got "
                            f"{self.adversarial_start} and {self.adversarial_warmup}")
        if not self.discriminator_lr > 0:
            raise LDAEError(f"discriminator_lr must be positive, got {self.discriminator_lr}")
        if self.discriminator_width < 8 or self.discriminator_width % 8:
            raise LDAEError(f"discriminator_width must be a positive multiple of 8 (its GroupNorm has 8 groups), got {self.discriminator_width}")

    @property
    def adversarial(self) -> bool:
        """Whether the stage trains a discriminator."""
        return self.adversarial_weight > 0

    @property
    def enabled(self) -> bool:
        return self.epochs is not None or self.steps > 0

    @classmethod
    def from_dict(cls, d: dict | None) -> "DecoderStageConfig":
        return _from_dict(cls, d, "decoder stage")


@dataclass
class DDPMStageConfig(StageConfig):
    """Stage (b), the latent DDPM UNet (the ε-branch): plain MSE on ε over the 1000-step schedule.

    ``latent``: "sample" draws z = μ + σ·ε afresh every step (the authors train on sampled latents),
    "mean" uses μ (what the pipeline encodes by default).
    """

    steps: int = 5000
    batch_size: int = 8
    lr: float = 1e-4
    latent: str = "sample"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.latent not in ("sample", "mean"):
            raise LDAEError(f"latent must be 'sample' or 'mean', got {self.latent!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "DDPMStageConfig":
        return _from_dict(cls, d, "ddpm stage")


@dataclass
class RepresentationStageConfig(StageConfig):
    """Stage (c), the semantic encoder and the gradient estimator.

    ε-loss on ε_θ + c_t·g (ε_θ frozen), weighted per sample by snr^snr_exponent / (1 + snr).

    ``code_regression_weight`` (0 = the authors' objective alone) adds an auxiliary loss that is not
    in the paper: a linear head, discarded after training, predicts the scan's autoencoder latent,
    average-pooled to the ``code_regression_grid`` and standardised over the training scans, from y_sem.
    It keeps the codes from collapsing to one vector when the cohort varies little and the stage is
    short (docs/training.md, "Why the demo recipe adds a code regression").
    ``code_regression_columns``: numeric columns of the cohort table (``ventricles_ml``, …) the head
    predicts as well, standardised; their mean squared error is added to the latent part's, so the
    code must carry them however small a part of the image they are. ``code_regression_latent``
    false leaves the pooled latent out (columns only).

    ``code_augment`` (0 = off; not in the paper): the probability that the encoder sees a training
    scan changed in contrast, bias field, noise and resolution (the autoencoder's augmentation),
    while the latent it must explain stays as stored, so the code does not rest on one cohort's
    contrast (real scans differ in all of these). On the demo cohort it left the edits as they were
    (handover/demo_model/README.md, sixth run); the codes there hardly see a bias field anyway.

    ``code_shift`` (0 = off; not in the paper): on training steps the encoder's input is also moved
    by a random whole number of voxels, from −code_shift to +code_shift along each axis (wrapping
    round: the model grid's margin is background), while its targets stay as stored. Real scans
    reach the model with some misregistration, and a code that must not depend on where the brain
    sits by a voxel or two has less to memorise a training subject by. (On the demo cohort it did not
    stop the memorising: docs/training.md.)

    ``shift_init``: how the gradient estimator's blocks start. ``zero`` (the guided-diffusion
    initialisation, residual branches at zero) or ``eps_branch`` (not in the paper): the shift
    middle and output blocks start as copies of the trained ε-branch's, their semantic modulation
    at zero. Either way ``shift_out`` starts at zero, so training starts from the plain DDPM.

    ``coarse_loss_weight`` (0 = the authors' objective; not in the paper) adds the same weighted
    ε-error after average-pooling it over ``coarse_loss_pool``³ latent voxels, times the number of
    voxels pooled: an error that is white in space counts the same there as in the plain loss, an
    error as smooth as the pooling (a ventricle too small, a shape too narrow) ``pool³`` times more.
    The plain loss is dominated by fine detail that a short code cannot hold; this term rewards the
    gradient estimator for what the code can carry.

    ``pair_probability`` (0 = the authors' objective; not in the paper): the share of items whose
    noisy latent z_t is built from another scan A (``pair_with``: ``subject``, another visit of the
    same subject; ``any``, any training scan) while y_sem comes from the item's own scan B. The
    target keeps A's fine detail and takes B's coarse anatomy: x̂0* = z0_A − L(z0_A − z0_B), L the
    mean over ``pair_pool``³ latent voxels, spread back by trilinear interpolation; in ε terms
    ε* = noise + √snr_t · L(z0_A − z0_B). With y_sem and z_t from one scan the target is the plain
    one. Only items drawn at t ≥ ``pair_min_t`` are paired: below it the coarse anatomy is set and
    the target's √snr_t factor would ask the gradient estimator for corrections far larger than the
    noise. An edit is exactly that disagreement (an edited code, a source's inverted noise); the plain
    objective never shows it, and a frozen ε-branch reads coarse anatomy from z_t, so the gradient
    estimator learns nothing that depends on the code there (handover/demo_model/README.md).

    ``contrast_free_targets`` (false = as above; not in the paper): the paired items' coarse
    difference L(z0_A − z0_B) and the code regression's pooled latent are taken from the latents of
    the scans brought to one intensity reference (``training/matching.py``: each scan's brain
    histogram mapped onto the training scans' median), so neither target asks the code to carry a
    scan's contrast or gain; z_t and the plain items keep the latents as stored. The matched latents
    are encoded once by the EMA autoencoder (``WORKDIR/latents_matched``).
    """

    steps: int = 5000
    batch_size: int = 4
    lr: float = 1e-4
    latent: str = "sample"
    snr_exponent: float = 0.1
    code_regression_weight: float = 0.0
    code_regression_grid: tuple[int, int, int] = (4, 5, 4)
    code_regression_latent: bool = True
    code_regression_columns: tuple[str, ...] = ()
    code_augment: float = 0.0
    code_shift: int = 0
    shift_init: str = "zero"
    coarse_loss_weight: float = 0.0
    coarse_loss_pool: int = 4
    pair_probability: float = 0.0
    pair_with: str = "subject"
    pair_pool: int = 2
    pair_min_t: int = 0
    contrast_free_targets: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.contrast_free_targets, bool):
            raise LDAEError(f"contrast_free_targets must be true or false, got {self.contrast_free_targets!r}")
        if self.contrast_free_targets and not (self.pair_probability > 0 or (self.code_regression_weight > 0 and self.code_regression_latent)):
            raise LDAEError("contrast_free_targets changes only the paired items and the code regression's latent part; "
                            "set pair_probability or code_regression_weight as well, or leave it out")
        if not 0.0 <= self.pair_probability <= 1.0:
            raise LDAEError(f"pair_probability must be between 0 and 1, got {self.pair_probability!r}")
        if self.pair_with not in ("subject", "any"):
            raise LDAEError(f"pair_with must be 'subject' or 'any', got {self.pair_with!r}")
        if int(self.pair_pool) != self.pair_pool or self.pair_pool < 1:
            raise LDAEError(f"pair_pool must be a positive integer, got {self.pair_pool!r}")
        if int(self.pair_min_t) != self.pair_min_t or self.pair_min_t < 0:
            raise LDAEError(f"pair_min_t must be a whole number of diffusion steps, 0 or more, got {self.pair_min_t!r}")
        if self.shift_init not in ("zero", "eps_branch"):
            raise LDAEError(f"shift_init must be 'zero' or 'eps_branch', got {self.shift_init!r}")
        if self.latent not in ("sample", "mean"):
            raise LDAEError(f"latent must be 'sample' or 'mean', got {self.latent!r}")
        if not 0.0 <= self.code_augment <= 1.0:
            raise LDAEError(f"code_augment is a probability in [0, 1], got {self.code_augment!r}")
        if int(self.code_shift) != self.code_shift or not 0 <= self.code_shift <= 8:
            raise LDAEError(f"code_shift is a whole number of voxels from 0 to 8, got {self.code_shift!r}")
        if not self.code_regression_weight >= 0:
            raise LDAEError(f"code_regression_weight must be 0 or positive, got {self.code_regression_weight}")
        if not self.coarse_loss_weight >= 0:
            raise LDAEError(f"coarse_loss_weight must be 0 or positive, got {self.coarse_loss_weight}")
        if int(self.coarse_loss_pool) != self.coarse_loss_pool or self.coarse_loss_pool < 1:
            raise LDAEError(f"coarse_loss_pool must be a positive integer, got {self.coarse_loss_pool!r}")
        grid = tuple(self.code_regression_grid)
        if len(grid) != 3 or any(int(k) != k or k < 1 for k in grid):
            raise LDAEError(f"code_regression_grid must be three positive integers, got {self.code_regression_grid!r}")
        if isinstance(self.code_regression_columns, str):  # --set …code_regression_columns=ventricles_ml,age
            self.code_regression_columns = tuple(c.strip() for c in self.code_regression_columns.split(",") if c.strip())
        if not all(isinstance(c, str) and c for c in self.code_regression_columns):
            raise LDAEError(f"code_regression_columns must be a list of cohort table column names, got {self.code_regression_columns!r}")
        self.code_regression_columns = tuple(self.code_regression_columns)
        if self.code_regression_weight > 0 and not self.code_regression_latent and not self.code_regression_columns:
            raise LDAEError("code_regression_latent is false and code_regression_columns is empty: the code regression would have no target")

    @classmethod
    def from_dict(cls, d: dict | None) -> "RepresentationStageConfig":
        return _from_dict(cls, d, "representation stage")


@dataclass
class ProbeConfig:
    """Stage (d), the linear probes on EMA-encoder codes of the training subjects.

    Attributes:
        l2: ridge / logistic L2 penalty (on normalised codes).
        batch_size: volumes per encoder call.
        group_column, disease_value: the CSV column and the value that mark the atrophy group
            (``disease`` direction: +alpha towards it).
        age_column: the CSV column of the age in years (``age`` direction: +alpha older).
        years_per_alpha: calibrate the ``age`` direction so that one unit of alpha is this many
            years (0 = the authors' step, whatever it means in years).
        calibration: how a unit of alpha is measured. ``probe``: the authors' step for ``disease``,
            and for ``age`` the years its own probe reads in the edit. ``cohort`` (not in the
            paper): on the training codes' own spread along each direction, ``disease`` one unit =
            the mean difference between the groups, ``age`` one unit = the mean difference between
            visits ``years_per_alpha`` years apart (the slope of the codes' position on age).
            A probe's predicted ages spread less than the true ones, so its own reading asks for a
            larger move than the codes of older visits make, and the authors' ``disease`` step can
            be many times the codes' spread along it (handover/demo_model/README.md).
        age_axis: ``probe`` (the authors' way: a ridge probe of age on the codes) or
            ``longitudinal`` (not in the paper): along how each training subject's own code changes
            with age, one unit = ``years_per_alpha`` years of that change (needs it > 0 and
            subjects with several visits; ``calibration`` then applies to ``disease`` only).
        age_axis_group: with ``longitudinal``, take the within-subject change from this group's
            subjects only (e.g. the healthy one, whose ageing is not mixed with the disease's
            atrophy); "" = all training subjects.
    """

    l2: float = 1e-2
    batch_size: int = 8
    group_column: str = "group"
    disease_value: str = "disease"
    age_column: str = "age"
    years_per_alpha: float = 0.0
    calibration: str = "probe"
    age_axis: str = "probe"
    age_axis_group: str = ""

    def __post_init__(self) -> None:
        if self.calibration not in ("probe", "cohort"):
            raise LDAEError(f"probes.calibration must be 'probe' or 'cohort', got {self.calibration!r}")
        if self.age_axis not in ("probe", "longitudinal"):
            raise LDAEError(f"probes.age_axis must be 'probe' or 'longitudinal', got {self.age_axis!r}")
        if self.age_axis == "longitudinal" and not self.years_per_alpha > 0:
            raise LDAEError("probes.age_axis 'longitudinal' needs years_per_alpha (how many years of within-subject ageing one unit is)")
        if self.calibration == "cohort" and not self.years_per_alpha > 0:
            raise LDAEError("probes.calibration 'cohort' needs years_per_alpha (how many years one unit of age alpha is)")
        if not self.years_per_alpha >= 0:
            raise LDAEError(f"years_per_alpha must be 0 (no calibration) or positive, got {self.years_per_alpha}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "ProbeConfig":
        return _from_dict(cls, d, "probes")

    def to_dict(self) -> dict:
        return _to_dict(self)


@dataclass
class DataConfig:
    """Which volumes train, validate and test, and how they are cached.

    Attributes:
        split_seed: seeds the subject-level split (the same seed and cohort give the same split).
        val_fraction, test_fraction: shares of *subjects* held out (rounded; all visits of a
            subject stay together).
        stratify: CSV column whose values are split separately (so every split has every group),
            or "" for none.
        disk_cache: keep model-space copies of the volumes as .npy files in the work folder.
        memory_cache: keep the model-space volumes in memory (fastest; needs
            volumes × 4 bytes × voxels of RAM per process).
    """

    split_seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    stratify: str = "group"
    disk_cache: bool = True
    memory_cache: bool = True

    def __post_init__(self) -> None:
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise LDAEError("val_fraction and test_fraction must be in [0, 1) and leave subjects for training")

    @classmethod
    def from_dict(cls, d: dict | None) -> "DataConfig":
        return _from_dict(cls, d, "data")

    def to_dict(self) -> dict:
        return _to_dict(self)


DEMO_RECIPE = Path(__file__).parent / "recipes" / "demo.yaml"  # the shipped demo model's recipe

DEMO_LICENCE = """\
LDAE for 3D Slicer: demonstration weights
==========================================

These weights were trained with `ldae train` on a SYNTHETIC cohort written by `ldae cohort`
(smooth deformations, intensity changes, bias fields and noise applied to the ICBM 2009a and
Colin27 templates with the AAL labels). No patient data was used.

They are released under the MIT licence of the LDAE for 3D Slicer project (see LICENSE in the
repository). The templates they derive from come with their own notices, reproduced below when the
cohort folder held them (NOTICE.txt written by `ldae cohort`).

Intended use: demonstration and testing of the software. NOT for clinical use, diagnosis or
research conclusions about real brains: the groups and ages are simulated labels.
"""


@dataclass
class Recipe:
    """Everything that decides a training run, besides the cohort: one file.

    ``model.latent_scale`` is not used: the autoencoder stage measures the scale on the training
    latents and the bundle's config stores that value.
    """

    name: str = "LDAE demo model"
    model: LDAEConfig = field(default_factory=small_config)
    data: DataConfig = field(default_factory=DataConfig)
    autoencoder: AutoencoderStageConfig = field(default_factory=AutoencoderStageConfig)
    decoder: DecoderStageConfig = field(default_factory=DecoderStageConfig)
    ddpm: DDPMStageConfig = field(default_factory=DDPMStageConfig)
    representation: RepresentationStageConfig = field(default_factory=RepresentationStageConfig)
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    licence: str = DEMO_LICENCE

    def stage(self, name: str) -> StageConfig:
        if name not in STAGES:
            raise LDAEError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
        return getattr(self, name)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "model": self.model.to_dict(),
            "data": self.data.to_dict(),
            "autoencoder": self.autoencoder.to_dict(),
            "decoder": self.decoder.to_dict(),
            "ddpm": self.ddpm.to_dict(),
            "representation": self.representation.to_dict(),
            "probes": self.probes.to_dict(),
            "licence": self.licence,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        if not isinstance(d, dict):
            raise LDAEError("a recipe must be a mapping of sections (name, model, data, autoencoder, decoder, ddpm, representation, probes)")
        known = {"name", "model", "data", "autoencoder", "decoder", "ddpm", "representation", "probes", "licence"}
        unknown = set(d) - known
        if unknown:
            raise LDAEError(f"unknown recipe sections {sorted(unknown)}; known: {', '.join(sorted(known))}")
        try:
            model = LDAEConfig.from_dict(d["model"]) if "model" in d else small_config()
        except (TypeError, ValueError) as err:
            raise LDAEError(f"bad model settings in the recipe: {err}") from None
        return cls(
            name=str(d.get("name", "LDAE demo model")),
            model=model,
            data=DataConfig.from_dict(d.get("data")),
            autoencoder=AutoencoderStageConfig.from_dict(d.get("autoencoder")),
            decoder=DecoderStageConfig.from_dict(d.get("decoder")),
            ddpm=DDPMStageConfig.from_dict(d.get("ddpm")),
            representation=RepresentationStageConfig.from_dict(d.get("representation")),
            probes=ProbeConfig.from_dict(d.get("probes")),
            licence=str(d.get("licence", DEMO_LICENCE)),
        )


def comparable(recipe_dict: dict) -> dict:
    """The parts of a recipe that must not change within one work folder (model and data)."""
    model = dict(recipe_dict.get("model", {}))
    model.pop("latent_scale", None)
    model.pop("x0_clip", None)  # used by DDIM at inference only, not in training
    model.pop("code_guidance", None)  # likewise
    model.pop("code_guidance_mean_free", None)  # likewise
    data = {k: v for k, v in recipe_dict.get("data", {}).items() if k not in ("disk_cache", "memory_cache")}
    return {"model": model, "data": data}


# The model settings a stage's weights do not depend on: those of the later stages.
_LATER_STAGE_SETTINGS = {
    "autoencoder": ("unet_args", "enc_args", "num_timesteps", "latent_shift", "slicing_plane"),
    "ddpm": ("enc_args", "slicing_plane"),
    "representation": (),
}


def comparable_for(stage: str, comparable_dict: dict) -> dict:
    """The part of ``comparable(...)`` that ``stage``'s weights were trained under: the data settings and
    the model settings of this stage and the earlier ones. A finished autoencoder serves a recipe with
    another diffusion UNet; a DDPM, one with another semantic encoder."""
    model = {k: v for k, v in comparable_dict.get("model", {}).items() if k not in _LATER_STAGE_SETTINGS[stage]}
    return {"model": model, "data": comparable_dict.get("data", {})}
