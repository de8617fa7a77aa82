"""Every built-in component, registered: importing this module imports each component
package, and each of its modules registers what it defines (data sets, models, recipes,
attacks, stages and their study sections, probes, table steps, executors, the cluster's included). The study
schema, the table reference and ``workbench list`` are built from the registries after
this import; registration order is the order below, then each package's own."""

from __future__ import annotations

from . import attacks, data, executors, models, training  # noqa: F401  isort: skip
from . import cluster  # noqa: F401  isort: skip  (the slurm and local executors; submitit is imported only when used)
from . import evaluation  # noqa: F401  isort: skip  (the evaluation's stages first: table order)
from . import probes  # noqa: F401  isort: skip
from . import replicates, significance  # noqa: F401  isort: skip  (table steps)
