"""The library notices known to be harmless are silenced exactly (message, category, module or logger), by both entry
points; the same message from elsewhere, or another warning from the same place, still shows. A whole fit's stderr:
tests/launch/test_fit.py."""

import logging
import warnings

from lightning.fabric.utilities.warnings import PossibleUserWarning

from launch import evaluate
from launch.known_warnings import DropLogLine, silence_harmless_warnings

SRUN_HINT = ("The `srun` command is available on your system but is not used. HINT: If your intention is to run Lightning"
             " on SLURM, prepend your python command with `srun` like so: srun python launch/fit.py ...")
SLURM_ENVIRONMENT = "lightning.fabric.plugins.environments.slurm"
LEAFSPEC = ("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and "
            "treespec.is_leaf()` instead.")
PYTREE = "lightning.pytorch.utilities._pytree"
RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"
LITLOGGER_TIP = ("💡 Tip: For seamless cloud logging and experiment tracking, try installing "
                 "[litlogger](https://pypi.org/project/litlogger/) to enable LitLogger, which logs metrics and artifacts "
                 "automatically to the Lightning Experiments platform.")


def shown(silence, message: str, category: type[Warning], module: str) -> bool:
    """Whether a warning raised in `module` shows once `silence()` has run (everything shows otherwise)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence()
        warnings.warn_explicit(message, category, f"{module.replace('.', '/')}.py", 1, module=module)
    return message in [str(w.message) for w in caught]


def test_each_harmless_warning_is_silenced_only_where_it_comes_from():
    assert not shown(silence_harmless_warnings, SRUN_HINT, PossibleUserWarning, SLURM_ENVIRONMENT)
    assert not shown(silence_harmless_warnings, LEAFSPEC, FutureWarning, PYTREE)
    assert shown(silence_harmless_warnings, SRUN_HINT, PossibleUserWarning, "lightning.fabric.connector")
    assert shown(silence_harmless_warnings, "srun: error: Unable to allocate resources", PossibleUserWarning,
                 SLURM_ENVIRONMENT)
    assert shown(silence_harmless_warnings, LEAFSPEC, DeprecationWarning, PYTREE)
    assert shown(silence_harmless_warnings, "Something else is deprecated", FutureWarning, PYTREE)


def test_the_litlogger_tip_is_dropped_and_that_logger_keeps_its_other_lines():
    silence_harmless_warnings()
    silence_harmless_warnings()  # applying it twice adds nothing
    logger = logging.getLogger(RANK_ZERO_LOGGER)
    assert sum(isinstance(f, DropLogLine) for f in logger.filters) == 1
    assert not logger.filter(logging.makeLogRecord({"name": RANK_ZERO_LOGGER, "msg": LITLOGGER_TIP}))
    assert logger.filter(logging.makeLogRecord({"name": RANK_ZERO_LOGGER, "msg": "GPU available: False, used: False"}))


def test_evaluate_silences_them_too():
    logger = logging.getLogger(RANK_ZERO_LOGGER)
    for known in [f for f in logger.filters if isinstance(f, DropLogLine)]:
        logger.removeFilter(known)
    assert not shown(lambda: evaluate.main(["score"]), SRUN_HINT, PossibleUserWarning, SLURM_ENVIRONMENT)
    assert not logger.filter(logging.makeLogRecord({"name": RANK_ZERO_LOGGER, "msg": LITLOGGER_TIP}))
