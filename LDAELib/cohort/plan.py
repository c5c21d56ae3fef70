"""What a cohort is made of before any image: its parameters and each subject's draws.

:class:`CohortConfig` holds every parameter (with the seed it determines every file);
:func:`plan_subject` draws one subject's template, group, ages, visit months, rate factors,
identity and contrast from that subject's own random stream (:func:`rng_for`), so subjects are
independent of each other and of how many there are. :mod:`.cohort` turns a plan into images and
writes the folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import LDAEError
from .atrophy import LOBES, AtrophyModel
from .templates import TEMPLATE_NAMES

GROUPS = ("healthy", "disease")
SCHEDULE_MONTHS = 6.0  # visits fall near multiples of 6 months, like ADNI's schedule


@dataclass
class CohortConfig:
    """Every parameter of a cohort; with the seed it determines every file (JSON round trip).

    Ranges are (low, high) of a uniform draw per subject unless said otherwise.
    """

    n_subjects: int = 10
    seed: int = 0
    visits_min: int = 3
    visits_max: int = 5
    max_months: float = 36.0
    spacing_mm: float = 2.0
    disease_fraction: float = 0.5
    labels: bool = False
    baseline_age: tuple[float, float] = (55.0, 85.0)
    onset_years: tuple[float, float] = (3.0, 10.0)  # disease group: years since onset at baseline
    templates: tuple[str, ...] = TEMPLATE_NAMES
    warp_mm: tuple[float, float] = (2.0, 4.0)  # RMS per axis of the identity velocity field
    warp_control_mm: float = 8.0  # control grid of the identity field; smoothed by 1.5 of its spacings
    scale_sd: float = 0.03  # log-sd of the global scaling (head size left after registration)
    anisotropy_sd: float = 0.02
    rotation_deg: float = 2.0  # sd per axis
    translation_mm: float = 2.0  # sd per axis
    visit_jitter_deg: float = 0.3  # each visit's own registration residual (sd)
    visit_jitter_mm: float = 0.5
    trait_sd: dict = field(default_factory=lambda: {"ventricles": 0.2, "hippocampus": 0.06, "cortex": 0.03})
    rate_factor_sd: float = 0.25  # log-sd of a subject's healthy and disease rate factors
    contrast: dict = field(default_factory=lambda: {"csf": (0.12, 0.30), "gm": (0.48, 0.60), "wm": (0.76, 0.88)})
    gain: tuple[float, float] = (600.0, 1400.0)  # arbitrary scanner units
    bias_rms: tuple[float, float] = (0.03, 0.10)  # log of the multiplicative bias field
    noise: tuple[float, float] = (0.01, 0.03)  # Rician noise sd, relative to white matter
    atrophy: AtrophyModel = field(default_factory=AtrophyModel)

    def __post_init__(self) -> None:
        if isinstance(self.atrophy, dict):
            self.atrophy = AtrophyModel.from_dict(self.atrophy)
        self.templates = tuple(self.templates)
        for name in ("baseline_age", "onset_years", "warp_mm", "gain", "bias_rms", "noise"):
            setattr(self, name, tuple(float(x) for x in getattr(self, name)))
        self.contrast = {k: tuple(float(x) for x in v) for k, v in self.contrast.items()}
        self.validate()

    def validate(self) -> None:
        if self.n_subjects < 1:
            raise LDAEError("the cohort needs at least one subject (--subjects N with N ≥ 1)")
        slots = int(self.max_months // SCHEDULE_MONTHS)
        if not 1 <= self.visits_min <= self.visits_max:
            raise LDAEError(f"visits: need 1 ≤ --visits-min ≤ --visits-max, got {self.visits_min} and {self.visits_max}")
        if self.visits_max > slots + 1:
            raise LDAEError(f"--visits-max {self.visits_max} does not fit {self.max_months:g} months at one visit per {SCHEDULE_MONTHS:g} months (at most {slots + 1})")
        if not 0.0 <= self.disease_fraction <= 1.0:
            raise LDAEError(f"--disease-fraction must lie between 0 and 1, got {self.disease_fraction}")
        if not 0.5 <= self.spacing_mm <= 4.0:
            raise LDAEError(f"--spacing must lie between 0.5 and 4 mm, got {self.spacing_mm:g}: on coarser grids the hippocampus "
                            "spans too few voxels to simulate its atrophy (default 2 mm; resample the written scans for coarser models)")
        unknown = set(self.templates) - set(TEMPLATE_NAMES)
        if unknown or not self.templates:
            raise LDAEError(f"unknown templates {sorted(unknown)}; choose from {', '.join(TEMPLATE_NAMES)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["atrophy"] = self.atrophy.to_dict()
        return json.loads(json.dumps(d))  # tuples → lists

    @classmethod
    def from_dict(cls, d: dict) -> "CohortConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise LDAEError(f"unknown cohort settings {sorted(unknown)}")
        return cls(**d)

@dataclass
class SubjectPlan:
    """Everything drawn for one subject (no arrays); JSON-able."""

    index: int
    subject: str
    template: str
    group: str
    baseline_age: float
    months: list[float]
    years_since_onset: float | None
    factors: dict
    identity: dict
    intensity: dict

    def ages(self) -> list[float]:
        return [self.baseline_age + m / 12.0 for m in self.months]

    def log_changes(self, model: AtrophyModel) -> list[np.ndarray]:
        """Designed log-volume changes (order of atrophy.COMPONENTS) at every visit."""
        out = []
        for age, m in zip(self.ages(), self.months):
            onset = None if self.years_since_onset is None else self.years_since_onset + m / 12.0
            out.append(model.log_change(age, onset, self.factors))
        return out


def subject_id(index: int) -> str:
    return f"sub-{index + 1:04d}"


def is_disease(index: int, fraction: float) -> bool:
    """Deterministic, evenly spread group assignment: exactly ⌊n·fraction⌋ of the first n subjects.

    With 0.5 the groups alternate (healthy, disease, …), and since templates go in pairs
    (:func:`template_for`), group and template are not confounded.
    """
    return math.floor((index + 1) * fraction + 1e-9) > math.floor(index * fraction + 1e-9)


def template_for(index: int, templates: tuple[str, ...]) -> str:
    return templates[(index // 2) % len(templates)]


def rng_for(seed: int, index: int, *part: int) -> np.random.Generator:
    """The generator of one subject (``part`` = ()), its identity field (1,) or its visit v (2, v).

    Derived from (seed, subject index, part) only, so subjects and visits are independent streams.
    """
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index), *part)))


def plan_subject(config: CohortConfig, index: int) -> SubjectPlan:
    rng = rng_for(config.seed, index)
    disease = is_disease(index, config.disease_fraction)
    age = float(rng.uniform(*config.baseline_age))
    n_visits = int(rng.integers(config.visits_min, config.visits_max + 1))
    slots = np.arange(1, int(config.max_months // SCHEDULE_MONTHS) + 1) * SCHEDULE_MONTHS
    chosen = np.sort(rng.choice(slots, size=n_visits - 1, replace=False)) if n_visits > 1 else np.zeros(0)
    jitter = rng.uniform(-1.0, 1.0, size=chosen.size)
    months = [0.0] + [round(float(min(max(m + j, 1.0), config.max_months)), 1) for m, j in zip(chosen, jitter)]
    onset = float(rng.uniform(*config.onset_years))
    sd = config.rate_factor_sd
    factors = {
        "healthy": float(rng.lognormal(0.0, sd)),
        "disease": float(rng.lognormal(0.0, sd)),
        "hippocampus_l": float(rng.lognormal(0.0, 0.1)),
        "hippocampus_r": float(rng.lognormal(0.0, 0.1)),
        "lobes_healthy": {lobe: float(rng.lognormal(0.0, 0.15)) for lobe in LOBES},
        "lobes_disease": {lobe: float(rng.lognormal(0.0, 0.15)) for lobe in LOBES},
    }
    t = config.trait_sd
    trait_sd = [t["ventricles"], t["hippocampus"], t["hippocampus"], *[t["cortex"]] * len(LOBES)]
    factors["trait"] = [float(x) for x in rng.normal(0.0, trait_sd)]
    identity = {
        "warp_mm": float(rng.uniform(*config.warp_mm)),
        "scale": float(np.exp(rng.normal(0.0, config.scale_sd))),
        "anisotropy": [float(x) for x in np.exp(rng.normal(0.0, config.anisotropy_sd, 3))],
        "rotation_deg": [float(x) for x in rng.normal(0.0, config.rotation_deg, 3)],
        "translation_mm": [float(x) for x in rng.normal(0.0, config.translation_mm, 3)],
    }
    c = config.contrast
    intensity = {
        "csf": float(rng.uniform(*c["csf"])),
        "gm": float(rng.uniform(*c["gm"])),
        "wm": float(rng.uniform(*c["wm"])),
        "gain": float(rng.uniform(*config.gain)),
        "bias_rms": float(rng.uniform(*config.bias_rms)),
        "noise": float(rng.uniform(*config.noise)),
    }
    return SubjectPlan(
        index=index, subject=subject_id(index), template=template_for(index, config.templates),
        group=GROUPS[int(disease)], baseline_age=round(age, 2), months=months,
        years_since_onset=round(onset, 2) if disease else None, factors=factors, identity=identity, intensity=intensity,
    )
