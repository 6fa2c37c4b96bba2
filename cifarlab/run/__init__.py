"""One training run: the loop (``loop``) and the pieces it calls, each owning its part and its cadence: the
accelerator, optimizer, schedule and evaluation (``engine``), one epoch of training (``epoch``), every metric to W&B,
metrics.jsonl and the console (``recorder``, ``tracking``), where training is (``state``), checkpoints
(``checkpoint``), stop signals and requeue (``preemption``), the run directory's names and lock (``rundir``,
``runlock``), the run record (``environment``), Accelerate bypasses (``workarounds``), a trained model read back
(``loading``), a search's trial reporting to its study (``pruning``) and what loads a checkpoint's pickles
(``pickles``). Imports report, data, models and the ground floor, never analysis, experiments or the commands."""
