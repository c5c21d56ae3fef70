"""Files shipped inside the package: the demo model and two example scans."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE / "examples"


def default_model_path() -> Path | None:
    """The bundled demo model folder, or None when no trained model ships with this install."""
    p = HERE / "demo_model"
    return p if (p / "ldae_bundle.json").is_file() else None


@dataclass(frozen=True)
class ExampleScan:
    """One shipped example visit: a synthetic subject of ``ldae cohort`` (seed 0), held out from the
    demo model's training (a test subject of its split), in MNI space at 2 mm."""

    path: Path
    subject: str
    visit: int
    months: float
    age: float
    group: str
    ventricles_ml: float
    hippocampus_ml: float

    @property
    def label(self) -> str:
        return f"{self.subject} visit {self.visit} (month {self.months:g})"


def example_scans() -> list[ExampleScan]:
    """The two shipped visits of one subject (first and last), oldest first (see examples/examples.csv)."""
    with open(EXAMPLES / "examples.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    scans = [ExampleScan(path=EXAMPLES / r["path"], subject=r["subject"], visit=int(r["visit"]), months=float(r["months"]),
                         age=float(r["age"]), group=r["group"], ventricles_ml=float(r["ventricles_ml"]),
                         hippocampus_ml=float(r["hippocampus_l_ml"]) + float(r["hippocampus_r_ml"])) for r in rows]
    return sorted(scans, key=lambda s: s.months)
