"""Running many trials: sweep files and their trials (``spec``) and the launcher options they may pass
(``launching``), a sweep's record of its trials and versions (``record``), running trials (``runner``), seeds until
decided (``sequential``) and searches (``space``, ``study``, ``searching``; what a search teaches: ``insight``).
Imports analysis where it needs a verdict (until decided, a search's confirmation), run (the run directory's names),
report and the ground floor; runs trainers only as subprocesses."""
