"""``ldae batch``: many scans and operations from a CSV, resumable, on one or many processes.

``jobs`` parses and checks the jobs file (rows, outputs, fingerprints, sharding); ``run`` runs this
process's rows through ``LDAELib.inference`` and writes the report (docs/batch.md).
"""

from .run import run_batch

__all__ = ["run_batch"]
