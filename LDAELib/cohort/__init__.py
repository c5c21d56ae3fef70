"""The synthetic longitudinal cohort: real brain templates, simulated ageing and disease-like atrophy.

``cohort`` writes subjects and their visits (``generate_cohort``), ``templates`` reads the installed
templates, ``deform`` and ``atrophy`` warp them, ``command`` is ``ldae cohort`` (docs/cohort.md).
"""
