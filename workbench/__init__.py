"""workbench: a research workbench for adversarial robustness and representation analysis.

Library entry points (all callable from a notebook):

- ``workbench.study.load_study(path)``: read and validate a study file;
- ``workbench.runner.run_study(study, out)``: train | attack | probe | report;
- ``workbench.attacks.fgsm / pgd``: attacks on any model taking inputs in [0, 1];
- ``workbench.probes.*``: representation probes returning tidy DataFrames;
- ``workbench.results.load(run_dir)``: the tables of a finished run.
"""

__version__ = "0.1.0"
