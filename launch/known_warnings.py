"""The library warnings and tips the entry points (fit.py, evaluate.py) silence, each known to be harmless here and
matched exactly (message, category and the module that warns, or the logger that logs it): any other warning shows.

- Lightning's hint to prepend `srun`, printed wherever srun is on PATH: our SLURM jobs (launch/submit.py) run every
  task under srun already, and a plain `python launch/fit.py` means to run without it.
- Lightning's tip to install litlogger: an advertisement, logged at every fit.
- torch's deprecation of `LeafSpec`, which Lightning's own _pytree.py still builds: nothing of ours to change.

Lightning's note that "`weights_only` was not set" is not silenced but avoided: our own saves (callbacks/preemption.py,
callbacks/last_checkpoint.py) say it. Lightning's PossibleUserWarning is matched as the UserWarning it subclasses,
so that silencing does not import Lightning into an entry point that does not use it (evaluate.py score).
"""

from __future__ import annotations

import logging
import re
import warnings

# (how the message starts, category, the module that warns)
HARMLESS_WARNINGS = (
    ("The `srun` command is available on your system but is not used.", UserWarning,
     "lightning.fabric.plugins.environments.slurm"),
    ("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, "lightning.pytorch.utilities._pytree"),
)
# (how the message starts, the logger that logs it)
HARMLESS_LOG_LINES = (
    ("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]",
     "lightning.pytorch.utilities.rank_zero"),
)


class DropLogLine(logging.Filter):
    """Drops the records of one logger whose message starts with `prefix`."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def silence_harmless_warnings() -> None:
    """Install the filters; calling it again adds nothing."""
    for message, category, module in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category,
                                module=re.escape(module) + r"\Z")
    for prefix, logger_name in HARMLESS_LOG_LINES:
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, DropLogLine) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(DropLogLine(prefix))
