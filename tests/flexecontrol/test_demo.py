"""The FlexEControl demo's fit processes run this checkout's code (the code that then evaluates them), one thread
unless told otherwise."""

from __future__ import annotations

import os
from pathlib import Path

from lightning_modules.flexecontrol import demo

REPO = Path(__file__).resolve().parents[2]


def test_a_fit_process_imports_this_checkout_first_and_keeps_the_rest_of_the_environment():
    env = demo.fit_environment({"PYTHONPATH": "/elsewhere", "HOME": "/home/x"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO), "/elsewhere"]
    assert env["OMP_NUM_THREADS"] == "1" and env["HOME"] == "/home/x"
    env = demo.fit_environment({"OMP_NUM_THREADS": "4"})
    assert env["PYTHONPATH"] == str(REPO) and env["OMP_NUM_THREADS"] == "4"
