"""Many runs: reading run directories (``results``), statistics (``stats``), sweep files and their trials
(``spec``) and the launcher options they may pass (``launching``), a sweep's record of its trials and versions
(``record``), running trials (``runner``), seeds until decided (``sequential``), searches (``space``, ``study``,
``searching``, ``searchview``) and comparing groups of runs (``analysis``, ``repeats``: copies of one measurement,
``confounds``: environment differences, ``rendering``, ``planning``). Imports run (the run directory's names), report
and the ground floor; runs trainers only as subprocesses."""
