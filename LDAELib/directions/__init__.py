"""Named attribute directions in the semantic space: linear probes and the edits they define.

``probe`` holds ``Direction`` (a probe on normalised codes and how it moves a code) and
``fit_linear_probe`` / ``fit_longitudinal_direction``; ``files`` reads and writes direction files and fits a probe from CSVs.
"""

from .probe import Direction, fit_linear_probe, fit_longitudinal_direction

__all__ = ["Direction", "fit_linear_probe", "fit_longitudinal_direction"]
