"""Judging finished runs: reading run directories (``results``), what runs are judged by (``metric``), statistics
(``stats``), comparing groups of runs (``comparison``, with ``repeats``: copies of one measurement, and
``confounds``: environment differences), how many seeds a difference needs (``planning``), tables, JSON and pictures
of a comparison (``rendering``), a search folder as compare shows it (``searchview``) and the map of a sweep or
search folder (``sweepdir``). Imports run (the run directory's names), report and the ground floor; never
experiments, the runner or Optuna, so ``compare`` works without the ``[search]`` extra."""
