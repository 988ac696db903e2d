"""Export a trained checkpoint for use without the training code: `python launch/export.py --checkpoint CKPT --out DIR
[--base DIR] [--model-target CLASS]`.

Which method's export runs is read from the checkpoint: `model_target`, the dotted path of the LightningModule class
that wrote it (callbacks/model_target.py stores it in every checkpoint a run saves). The convention a method keeps to
be exportable: its package has a module `inference` with

    export_checkpoint(checkpoint_path, out_dir, base=None) -> Path

that rebuilds the module from the checkpoint (`base`: where its base model lies on this machine, when not where the
checkpoint says; a directory), writes the export to `out_dir` atomically, and raises ValueError with one line for an
input the user can fix. For `lightning_modules.flexecontrol.module.FlexEControlModule` that is
`lightning_modules.flexecontrol.inference.export_checkpoint` (diffusers-format control weights beside the unchanged
base). A method without it is told so.

Bad inputs (a missing checkpoint, a file that is no checkpoint, a checkpoint that names no class, an `--out` that
exists and is not empty) end with one line and exit code 2, and nothing is written.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datamodules.errors import UsageError, first_line
from datamodules.files import new_directory_problem
from launch import cli
from launch.config import PROJECT_PACKAGES
from launch.known_warnings import silence_harmless_warnings

PROG = "export.py"
INFERENCE_MODULE = "inference"  # the module of a method's package that offers export_checkpoint (and sampling)


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True,
                        help="a Lightning checkpoint (e.g. a run's checkpoints/last.ckpt)")
    parser.add_argument("--out", required=True, help="the export directory to write (must not exist, or be empty)")
    parser.add_argument("--base", help="where the checkpoint's base model lies on this machine, when not where the "
                                       "checkpoint says (a diffusers pipeline directory)")
    parser.add_argument("--model-target",
                        help="the LightningModule class that wrote the checkpoint (dotted path), for a checkpoint "
                             "that does not name it")
    return parser.parse_args(argv)


def read_checkpoint_header(checkpoint_path: Path, prog: str = PROG) -> dict[str, Any]:
    """A Lightning checkpoint as a dict, memory-mapped: its pickled metadata (model_target, hyper-parameters) is read,
    not its tensors; UsageError when the file is no checkpoint."""
    import torch

    if not checkpoint_path.is_file():
        what = "a directory, not a checkpoint file" if checkpoint_path.is_dir() else "no such file"
        raise UsageError(f"{prog}: {checkpoint_path}: {what}")
    try:
        # weights_only=False: Lightning checkpoints carry hyper-parameters and loop state beside the tensors
        checkpoint = torch.load(checkpoint_path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as error:  # a foreign or truncated file: pickle, zip and EOF errors alike
        raise UsageError(f"{prog}: {checkpoint_path}: not a readable checkpoint ({first_line(error)})") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UsageError(f"{prog}: {checkpoint_path}: not a Lightning checkpoint (no state_dict)")
    return checkpoint


def model_target_of(checkpoint: dict[str, Any]) -> str | None:
    """The `model_target` a checkpoint names (callbacks/model_target.py), or None."""
    target = checkpoint.get("model_target")
    return target if isinstance(target, str) and target else None


def read_model_target(checkpoint_path: Path, prog: str = PROG) -> str | None:
    """The checkpoint's `model_target`, or None when it names none; UsageError when the file is no checkpoint."""
    return model_target_of(read_checkpoint_header(checkpoint_path, prog))


def method_inference(model_target: str, functions: Sequence[str], prog: str = PROG) -> Any:
    """The `inference` module of the package that holds `model_target`'s class, which must define `functions`;
    UsageError (one line) when the target is not a class of this project or the module lacks one of them."""
    if not any(model_target.startswith(f"{package}.") for package in PROJECT_PACKAGES):
        raise UsageError(f"{prog}: model_target '{model_target}' is not a class of this project "
                         f"({', '.join(PROJECT_PACKAGES)})")
    module_name, _, class_name = model_target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        getattr(module, class_name)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"{prog}: cannot import model_target '{model_target}': {first_line(error)}") from error
    inference_name = f"{module.__package__ or module_name.rpartition('.')[0]}.{INFERENCE_MODULE}"
    try:
        inference = importlib.import_module(inference_name)
    except ModuleNotFoundError as error:
        if error.name != inference_name:
            raise
        inference = None
    missing = [name for name in functions if not callable(getattr(inference, name, None))]
    if missing:
        raise UsageError(f"{prog}: {class_name} offers no {', '.join(missing)}: {inference_name} does not define "
                         f"{' or '.join(missing)} (launch/export.py's docstring gives the convention)")
    return inference


def hide_loading_progress_bars() -> None:
    """The libraries' per-file loading bars: noise around an entry point's own one-line report."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def run(args) -> int:
    checkpoint, out = Path(args.checkpoint), Path(args.out)
    problem = new_directory_problem(out)
    if problem:
        raise UsageError(f"{PROG}: --out {problem}")
    target = read_model_target(checkpoint) or args.model_target
    if target is None:
        raise UsageError(f"{PROG}: {checkpoint}: names no model_target: which LightningModule class wrote it? (give "
                         f"--model-target, e.g. lightning_modules.flexecontrol.module.FlexEControlModule)")
    inference = method_inference(target, ["export_checkpoint"])
    hide_loading_progress_bars()
    try:
        written = inference.export_checkpoint(checkpoint, out, base=args.base)
    except ValueError as error:  # the convention: an input the user can fix
        raise UsageError(f"{PROG}: {first_line(error)}") from error
    print(f"exported {checkpoint} to {written}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    silence_harmless_warnings()
    return cli.main(lambda: run(parse_args(argv)), PROG)


if __name__ == "__main__":
    sys.exit(main())
