"""DeepSpeed on a real GPU through launch/fit.py, as a user runs it: fit, SIGKILL + `--resume auto`,
SIGUSR1 preemption + resume, then compare the final checkpoints with an uninterrupted run.

    python bench/deepspeed/check.py suite --root /tmp/dsb --out OUT_DIR [--cases a,b] [--max-steps 200] [--every 20]
                                          [--timing] [--cpu-selftest]
    python bench/deepspeed/check.py compare CKPT_A CKPT_B      # two checkpoints (DeepSpeed dirs or .ckpt files)

Everything that happens is recorded in OUT_DIR/deepspeed_gpu.json (one entry per case); nothing raises past a
case, so a failure of one preset is recorded and the others still run. Logs go to OUT_DIR/logs.tar.gz.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
DEMO = REPO / "configs" / "demo" / "regression.yaml"
FIT = REPO / "launch" / "fit.py"

_ZERO_COMMON = "contiguous_gradients: true, overlap_comm: true"
_ZERO2 = f"stage: 2, {_ZERO_COMMON}, reduce_scatter: true, reduce_bucket_size: 200000000, allgather_bucket_size: 200000000"
_OFF_OPT = "offload_optimizer: {device: cpu, pin_memory: true}"
_OFF_PARAM = "offload_param: {device: cpu, pin_memory: true}"
_DS_ADAMW = "optimizer: {type: AdamW, params: {lr: 0.003, weight_decay: 0.0}}"  # = the module's AdamW settings

# case -> the overrides that choose its strategy. The *_offload presets are run as shipped; the variants below
# are DeepSpeed config mappings (trainer.strategy={...}) that work around what the presets do with a torch
# optimizer: `torch_adamw` lets DeepSpeed step the module's torch AdamW on the CPU (zero_force_ds_cpu_optimizer
# false), `ds_cpu_adam` has DeepSpeed build its own optimizer, which is DeepSpeedCPUAdam (a JIT-built C++ op).
CASES: dict[str, list[str]] = {
    "deepspeed_stage_1": ["trainer.strategy=deepspeed_stage_1"],
    "deepspeed_stage_2": ["trainer.strategy=deepspeed_stage_2"],
    "deepspeed_stage_3": ["trainer.strategy=deepspeed_stage_3"],
    "deepspeed_stage_2_offload": ["trainer.strategy=deepspeed_stage_2_offload"],
    "deepspeed_stage_3_offload": ["trainer.strategy=deepspeed_stage_3_offload"],
    "stage_2_offload_torch_adamw": [
        "trainer.strategy={zero_allow_untested_optimizer: true, zero_force_ds_cpu_optimizer: false, "
        f"zero_optimization: {{{_ZERO2}, {_OFF_OPT}}}}}"],
    "stage_2_offload_ds_cpu_adam": [
        f"trainer.strategy={{{_DS_ADAMW}, zero_optimization: {{{_ZERO2}, {_OFF_OPT}}}}}"],
    "stage_3_offload_torch_adamw": [
        "trainer.strategy={zero_allow_untested_optimizer: true, zero_force_ds_cpu_optimizer: false, "
        f"zero_optimization: {{stage: 3, {_ZERO_COMMON}, {_OFF_OPT}, {_OFF_PARAM}}}}}"],
    "stage_3_offload_ds_cpu_adam": [
        f"trainer.strategy={{{_DS_ADAMW}, zero_optimization: {{stage: 3, {_ZERO_COMMON}, {_OFF_OPT}, {_OFF_PARAM}}}}}"],
    # timing reference only: Lightning's default single-device strategy, no DeepSpeed
    "auto_no_deepspeed": ["trainer.strategy=auto"],
    # CPU self-test of this script (no DeepSpeed): checkpoints are .ckpt files
    "cpu_auto": ["trainer.strategy=auto"],
}
TIMING_ONLY = {"auto_no_deepspeed"}

_port = itertools.count(29400 + random.Random().randrange(0, 2000))
_port_lock = threading.Lock()


def next_port() -> int:
    with _port_lock:
        return next(_port)


# ----------------------------------------------------------------------------------------------- checkpoints

def _tensors(obj: Any, prefix: str = "") -> dict[str, Any]:
    import torch
    out: dict[str, Any] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}/{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}/{i}"))
    return out


def compare_maps(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Tensor-by-tensor: bitwise equality and max abs difference (in float64)."""
    import torch
    common = sorted(set(a) & set(b))
    result: dict[str, Any] = {"tensors": len(common), "only_in_a": sorted(set(a) - set(b))[:10],
                              "only_in_b": sorted(set(b) - set(a))[:10], "unequal": 0, "max_abs_diff": 0.0,
                              "numel": 0, "first_unequal": []}
    for k in common:
        x, y = a[k].detach().cpu(), b[k].detach().cpu()
        result["numel"] += x.numel()
        if x.shape != y.shape or x.dtype != y.dtype:
            result["unequal"] += 1
            result["first_unequal"].append(f"{k}: {tuple(x.shape)} {x.dtype} vs {tuple(y.shape)} {y.dtype}")
            result["max_abs_diff"] = float("inf")
            continue
        if not torch.equal(x, y):
            result["unequal"] += 1
            if len(result["first_unequal"]) < 5:
                result["first_unequal"].append(k)
            if x.numel() and (x.is_floating_point() or x.is_complex()):
                diff = (x.double() - y.double()).abs().max().item()
                result["max_abs_diff"] = max(result["max_abs_diff"], diff)
            elif x.numel():
                result["max_abs_diff"] = max(result["max_abs_diff"], float((x.long() - y.long()).abs().max().item()))
    result["bitwise_equal"] = (result["unequal"] == 0 and not result["only_in_a"] and not result["only_in_b"]
                               and result["tensors"] > 0)
    return result


def _load(path: Path) -> Any:
    import torch
    return torch.load(path, map_location="cpu", weights_only=False)


def fp32_weights(ckpt: Path) -> dict[str, Any]:
    """Consolidated fp32 weights: zero_to_fp32 for a DeepSpeed directory, the state_dict of a .ckpt file."""
    if ckpt.is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        with contextlib.redirect_stdout(sys.stderr):  # it prints what it reads
            return dict(get_fp32_state_dict_from_zero_checkpoint(str(ckpt)))
    return dict(_load(ckpt)["state_dict"])


def raw_tensors(ckpt: Path) -> dict[str, dict[str, Any]]:
    """What each file of a checkpoint holds that is training state (module weights, optimizer state); the
    Lightning client state (paths of the run, timings) is left out."""
    if not ckpt.is_dir():
        obj = _load(ckpt)
        return {"state_dict": _tensors(obj["state_dict"]), "optimizer_states": _tensors(obj.get("optimizer_states"))}
    tag = (ckpt / "latest").read_text().strip()
    files: dict[str, dict[str, Any]] = {}
    for f in sorted((ckpt / tag).glob("*.pt")):
        obj = _load(f)
        if "module" in obj:  # *model_states.pt: module weights (+ the client state, skipped)
            files[f"{f.name}:module"] = _tensors(obj["module"])
        else:  # *optim_states.pt: DeepSpeed's optimizer state (fp32 master partitions, Adam moments)
            files[f.name] = _tensors(obj)
    return files


def compare_checkpoints(a: Path, b: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"a": str(a), "b": str(b)}
    try:
        out["fp32_weights"] = compare_maps(fp32_weights(a), fp32_weights(b))
    except Exception as e:  # noqa: BLE001 - recorded, not raised
        out["fp32_weights"] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
    try:
        ra, rb = raw_tensors(a), raw_tensors(b)
        out["files"] = {name: compare_maps(ra[name], rb.get(name, {})) for name in ra}
        out["files_only_in_b"] = sorted(set(rb) - set(ra))
        out["all_files_bitwise_equal"] = (bool(out["files"]) and not out["files_only_in_b"]
                                          and all(v["bitwise_equal"] or v["tensors"] == 0 and not v["only_in_a"]
                                                  and not v["only_in_b"] for v in out["files"].values()))
    except Exception as e:  # noqa: BLE001
        out["files"] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
        out["all_files_bitwise_equal"] = False
    fp = out["fp32_weights"]
    out["max_abs_diff"] = fp.get("max_abs_diff")
    out["bitwise_equal"] = bool(fp.get("bitwise_equal")) and bool(out["all_files_bitwise_equal"])
    return out


# ------------------------------------------------------------------------------------------------ run dirs

def status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except Exception:  # noqa: BLE001
        return {}


def checkpoint_listing(run_dir: Path) -> dict[str, Any]:
    from launch.runs import checkpoint_step
    ckpts = run_dir / "checkpoints"
    if not ckpts.is_dir():
        return {}
    return {p.name: {"dir": p.is_dir(), "step": checkpoint_step(p)} for p in sorted(ckpts.iterdir())}


def newest_complete(run_dir: Path) -> tuple[str, int] | None:
    from launch.runs import RunDir
    found = RunDir(run_dir).newest_complete_checkpoint()
    return (found[0].name, found[1]) if found else None


def metric_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "logs" / "csv" / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def loss_by_step(run_dir: Path, key: str = "train/loss") -> dict[int, float]:
    return {int(float(r["step"])): float(r[key]) for r in metric_rows(run_dir) if r.get(key)}


def check_metrics(run_dir: Path, ref_dir: Path, preempted_at: int | None) -> dict[str, Any]:
    """metrics.csv spans both runs: steps strictly increasing, every logged step of the reference present,
    nothing extra except the row Lightning flushes at a preemption (global step s is logged as s - 1)."""
    steps = [int(float(r["step"])) for r in metric_rows(run_dir) if r.get("train/loss")]
    ref_steps = [int(float(r["step"])) for r in metric_rows(ref_dir) if r.get("train/loss")]
    extra = set(steps) - set(ref_steps)
    allowed_extra = {preempted_at - 1} if preempted_at is not None else set()
    mine, ref = loss_by_step(run_dir), loss_by_step(ref_dir)
    common = sorted(set(mine) & set(ref))
    loss_diff = max((abs(mine[s] - ref[s]) for s in common), default=None)
    val_mine, val_ref = loss_by_step(run_dir, "val/loss"), loss_by_step(ref_dir, "val/loss")
    val_common = sorted(set(val_mine) & set(val_ref))
    return {
        "train_loss_steps": steps, "ref_train_loss_steps": ref_steps,
        "strictly_increasing": steps == sorted(set(steps)),
        "covers_reference": set(ref_steps) <= set(steps) and bool(ref_steps),
        "extra_steps": sorted(extra), "extra_ok": extra <= allowed_extra,
        "train_loss_max_abs_diff_vs_ref": loss_diff,
        "train_loss_equal_vs_ref": loss_diff == 0.0 if loss_diff is not None else None,
        "val_loss_steps": sorted(val_mine), "val_loss_max_abs_diff_vs_ref":
            max((abs(val_mine[s] - val_ref[s]) for s in val_common), default=None),
        "continuous": steps == sorted(set(steps)) and set(ref_steps) <= set(steps) and extra <= allowed_extra
                      and bool(ref_steps),
    }


# ----------------------------------------------------------------------------------------------- processes

class Runner:
    def __init__(self, root: Path, logs: Path, max_steps: int, every: int, cpu: bool, slots: int, deadline: float):
        self.root, self.logs, self.max_steps, self.every, self.cpu = root, logs, max_steps, every, cpu
        self.slots = threading.Semaphore(slots)
        self.deadline = deadline  # time.time() after which every fit still running is killed

    def timeout(self, timeout: float) -> float:
        return max(1.0, min(timeout, self.deadline - time.time()))

    def args(self, case: str, name: str, extra: list[str]) -> list[str]:
        device = (["trainer.accelerator=cpu", "trainer.precision=32-true"] if self.cpu else
                  ["trainer.accelerator=gpu", "trainer.devices=1", "trainer.precision=bf16-mixed"])
        return ["--config", str(DEMO), f"run.root={self.root / case}", f"run.name={name}",
                f"trainer.max_steps={self.max_steps}", f"run.every_n_train_steps={self.every}", "run.keep_last_k=2",
                *device, *CASES[case], *extra]

    def start(self, case: str, name: str, label: str, extra: list[str] | None = None,
              resume: str | None = None) -> tuple[subprocess.Popen, Path, float]:
        log = self.logs / case / f"{label}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(FIT), *self.args(case, name, extra or [])]
        if resume:
            cmd += ["--resume", resume]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(next_port()),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        with open(log, "w") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=False)
        return proc, log, time.time()

    def run(self, case: str, name: str, label: str, extra: list[str] | None = None, timeout: float = 540,
            resume: str | None = None) -> dict[str, Any]:
        with self.slots:
            if time.time() > self.deadline:
                return {"rc": "not started: suite deadline passed"}
            proc, log, t0 = self.start(case, name, label, extra, resume)
            try:
                rc = proc.wait(timeout=self.timeout(timeout))
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = f"timeout after {timeout}s"
        return {"rc": rc, "wall_s": round(time.time() - t0, 2), "log": str(log.relative_to(self.logs)),
                "error_tail": _error_tail(log) if rc != 0 else None}

    def run_and_signal(self, case: str, name: str, label: str, min_step: int, sig: int, delay_max_s: float,
                       timeout: float = 540) -> dict[str, Any]:
        """Start a fit; once a complete step checkpoint >= min_step exists (plus a random delay), send `sig`."""
        run_dir = self.root / case / name
        rng = random.Random()
        delay = round(rng.uniform(0, delay_max_s), 3)
        info: dict[str, Any] = {"signal": signal.Signals(sig).name, "after_checkpoint_step": min_step, "delay_s": delay}
        with self.slots:
            if time.time() > self.deadline:
                return {**info, "rc": "not started: suite deadline passed"}
            proc, log, t0 = self.start(case, name, label)
            deadline = t0 + self.timeout(timeout)
            sent = False
            while time.time() < deadline and proc.poll() is None:
                found = newest_complete(run_dir) if (run_dir / "checkpoints").is_dir() else None
                if found and found[1] >= min_step:
                    time.sleep(delay)
                    info["newest_checkpoint_before_signal"] = list(newest_complete(run_dir) or [])
                    if proc.poll() is None:
                        proc.send_signal(sig)
                        sent = True
                        info["sent_at_s"] = round(time.time() - t0, 2)
                    break
                time.sleep(0.005)
            info["sent"] = sent
            try:
                rc = proc.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = "timeout"
        info.update(rc=rc, wall_s=round(time.time() - t0, 2), log=str(log.relative_to(self.logs)))
        if rc not in (0, -signal.SIGKILL):
            info["error_tail"] = _error_tail(log)
        return info


def _error_tail(log: Path, n: int = 3000) -> str:
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    # the traceback, if any, else the end of the log
    i = text.rfind("Traceback (most recent call last)")
    return text[i:][-n:] if i >= 0 else text[-n:]


# ---------------------------------------------------------------------------------------------------- cases

def run_case(runner: Runner, case: str, seed_runs: bool = True) -> dict[str, Any]:
    root, n, every = runner.root / case, runner.max_steps, runner.every
    out: dict[str, Any] = {"case": case, "strategy_overrides": CASES[case], "max_steps": n,
                           "every_n_train_steps": every, "precision": "32-true" if runner.cpu else "bf16-mixed"}
    t0 = time.time()
    results: dict[str, Any] = {}

    def job(key, fn, *a, **kw):
        try:
            results[key] = fn(*a, **kw)
        except Exception as e:  # noqa: BLE001
            results[key] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}

    # reference first, alone: a case whose plain fit fails (e.g. an optimizer DeepSpeed refuses) stops here
    job("ref", runner.run, case, "ref", "ref")
    out["ref"] = results["ref"]
    ref_dir = root / "ref"
    out["ref"].update(status=status(ref_dir), checkpoints=checkpoint_listing(ref_dir))
    if results["ref"].get("rc") != 0:
        out["passed"] = False
        out["summary"] = "reference fit failed"
        out["wall_s"] = round(time.time() - t0, 1)
        return out

    kill_step, preempt_step = max(every, n // 4 // every * every), max(every, n // 2 // every * every)
    threads = [
        threading.Thread(target=job, args=("ref2", runner.run, case, "ref2", "ref2")),
        threading.Thread(target=job, args=("kill", runner.run_and_signal, case, "killed", "killed.1", kill_step,
                                           signal.SIGKILL, 0.25)),
        threading.Thread(target=job, args=("preempt", runner.run_and_signal, case, "preempted", "preempted.1",
                                           preempt_step, signal.SIGUSR1, 0.1)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # -- determinism baseline: a second uninterrupted run
    out["ref2"] = results["ref2"]
    if results["ref2"].get("rc") == 0:
        out["ref2"]["vs_ref"] = compare_checkpoints(ref_dir / "checkpoints" / "last.ckpt",
                                                    root / "ref2" / "checkpoints" / "last.ckpt")

    # -- the comparison can see a difference: last.ckpt against the reference's step checkpoint before it
    earlier = root / "ref" / "checkpoints" / f"step-{n - every:08d}.ckpt"
    if earlier.exists():
        c = compare_checkpoints(ref_dir / "checkpoints" / "last.ckpt", earlier)
        out["sanity_last_vs_step_before"] = {"bitwise_equal": c["bitwise_equal"], "max_abs_diff": c["max_abs_diff"]}

    # -- SIGKILL, then --resume auto
    kill = results["kill"]
    kdir = root / "killed"
    kill["status_after_kill"] = status(kdir)
    kill["checkpoints_after_kill"] = checkpoint_listing(kdir)
    kill["newest_complete_after_kill"] = list(newest_complete(kdir) or [])
    kill["landed_mid_run"] = bool(kill.get("sent")) and kill.get("rc") == -signal.SIGKILL and \
        bool(kill["newest_complete_after_kill"]) and kill["newest_complete_after_kill"][1] < n
    if kill.get("rc") in (0, -signal.SIGKILL):
        job("kill_resume", runner.run, case, "killed", "killed.2-resume")
        kill["resume"] = results["kill_resume"]
        if "log" in kill["resume"]:
            text = (runner.logs / kill["resume"]["log"]).read_text(errors="replace")
            kill["resume"]["resumed_from"] = [ln.split("resuming from", 1)[1].strip() for ln in text.splitlines()
                                              if "resuming from" in ln][:1]
        kill["resume"]["status"] = status(kdir)
        kill["resume"]["checkpoints"] = checkpoint_listing(kdir)
        if kill["resume"]["rc"] == 0:
            kill["vs_ref"] = compare_checkpoints(ref_dir / "checkpoints" / "last.ckpt", kdir / "checkpoints" / "last.ckpt")
            kill["metrics"] = check_metrics(kdir, ref_dir, None)
    out["kill"] = kill

    # -- SIGUSR1 preemption, then resume
    pre = results["preempt"]
    pdir = root / "preempted"
    pst = status(pdir)
    pre["status_after_signal"] = pst
    pre["checkpoints_after_signal"] = checkpoint_listing(pdir)
    log1 = (runner.logs / pre["log"]).read_text(errors="replace") if "log" in pre else ""
    pre["printed_preempted"] = "preempted at step" in log1
    from launch.runs import checkpoint_step
    pre["last_ckpt_step"] = checkpoint_step(pdir / "checkpoints" / "last.ckpt")
    pre["ok"] = (pre.get("rc") == 0 and pst.get("state") == "preempted" and isinstance(pst.get("global_step"), int)
                 and pst["global_step"] < n and pre["last_ckpt_step"] == pst.get("global_step") and pre["printed_preempted"])
    if pre.get("rc") == 0 and pst.get("state") == "preempted":
        job("preempt_resume", runner.run, case, "preempted", "preempted.2-resume")
        pre["resume"] = results["preempt_resume"]
        pre["resume"]["status"] = status(pdir)
        pre["resume"]["checkpoints"] = checkpoint_listing(pdir)
        if pre["resume"]["rc"] == 0:
            pre["vs_ref"] = compare_checkpoints(ref_dir / "checkpoints" / "last.ckpt", pdir / "checkpoints" / "last.ckpt")
            pre["metrics"] = check_metrics(pdir, ref_dir, pst.get("global_step"))
    out["preempt"] = pre

    # -- verdicts
    ref_status = out["ref"]["status"]
    checks = {
        "ref_finished_at_max_steps": ref_status.get("state") == "finished" and ref_status.get("global_step") == n
                                     and out["ref"]["checkpoints"].get("last.ckpt", {}).get("step") == n,
        "ref2_bitwise_equal_to_ref": bool(out["ref2"].get("vs_ref", {}).get("bitwise_equal")),
        "kill_landed_mid_run": kill["landed_mid_run"],
        "kill_resume_finished_at_max_steps": kill.get("resume", {}).get("status", {}).get("state") == "finished"
                                              and kill.get("resume", {}).get("status", {}).get("global_step") == n,
        "kill_resume_bitwise_equal_to_ref": bool(kill.get("vs_ref", {}).get("bitwise_equal")),
        "kill_resume_metrics_continuous": bool(kill.get("metrics", {}).get("continuous")),
        "preempt_status_preempted_exit_0": pre["ok"],
        "preempt_resume_finished_at_max_steps": pre.get("resume", {}).get("status", {}).get("state") == "finished"
                                                 and pre.get("resume", {}).get("status", {}).get("global_step") == n,
        "preempt_resume_bitwise_equal_to_ref": bool(pre.get("vs_ref", {}).get("bitwise_equal")),
        "preempt_resume_metrics_continuous": bool(pre.get("metrics", {}).get("continuous")),
    }
    out["checks"] = checks
    out["passed"] = all(checks.values())
    out["summary"] = {
        "kill_after_step": kill.get("newest_complete_after_kill"),
        "kill_vs_ref_max_abs_diff_fp32": kill.get("vs_ref", {}).get("max_abs_diff"),
        "preempted_at_step": pst.get("global_step"),
        "preempt_vs_ref_max_abs_diff_fp32": pre.get("vs_ref", {}).get("max_abs_diff"),
        "ref2_vs_ref_max_abs_diff_fp32": out["ref2"].get("vs_ref", {}).get("max_abs_diff"),
    }
    out["wall_s"] = round(time.time() - t0, 1)
    return out


def tb_steps_per_s(run_dir: Path) -> dict[str, Any]:
    """Steps/s between the first and the last logged train/loss, from TensorBoard's wall times."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    points = []
    for f in sorted((run_dir / "logs" / "tensorboard").glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(f)).Load():
            for v in event.summary.value:
                if v.tag == "train/loss":
                    points.append((event.step, event.wall_time))
    points.sort()
    if len(points) < 2:
        return {"error": f"{len(points)} train/loss points"}
    (s0, t0), (s1, t1) = points[0], points[-1]
    return {"steps": s1 - s0, "seconds": round(t1 - t0, 3), "steps_per_s": round((s1 - s0) / (t1 - t0), 1)}


def timing(runner: Runner, case: str, steps: int) -> dict[str, Any]:
    """One fit without validation or step checkpoints; steps/s over its logged steps (startup excluded)."""
    extra = [f"trainer.max_steps={steps}", f"run.every_n_train_steps={steps * 10}", "trainer.limit_val_batches=0"]
    r = runner.run(case, "timing", "timing", extra)
    if r["rc"] == 0:
        try:
            r.update(tb_steps_per_s(runner.root / case / "timing"))
        except Exception as e:  # noqa: BLE001
            r["error"] = f"{type(e).__name__}: {e}"
    return r


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": sys.version.split()[0]}
    try:
        import torch
        env.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            env.update(device=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)))
    except Exception as e:  # noqa: BLE001
        env["torch_error"] = repr(e)
    for name in ("lightning", "deepspeed", "omegaconf", "pydantic", "transformers"):
        try:
            env[name] = __import__(name).__version__
        except Exception as e:  # noqa: BLE001
            env[f"{name}_error"] = repr(e)
    try:
        env["nvcc"] = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    except Exception as e:  # noqa: BLE001
        env["nvcc"] = repr(e)
    try:
        env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                            "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except Exception as e:  # noqa: BLE001
        env["nvidia_smi"] = repr(e)
    return env


def suite(a: argparse.Namespace) -> int:
    out_dir, root = Path(a.out), Path(a.root)
    out_dir.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    logs = root / "_logs"
    runner = Runner(root, logs, a.max_steps, a.every, a.cpu_selftest, a.slots, time.time() + a.deadline_s)
    cases = [c for c in a.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; known: {list(CASES)}")
    report: dict[str, Any] = {"environment": environment(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "cases": {}, "timing": {}}
    result_file = out_dir / "deepspeed_gpu.json"

    def save() -> None:
        tmp = result_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1, default=str))
        tmp.replace(result_file)

    save()
    t0 = time.time()
    lock = threading.Lock()

    def one(case: str) -> None:
        try:
            r = run_case(runner, case)
        except Exception as e:  # noqa: BLE001
            r = {"case": case, "passed": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        with lock:
            report["cases"][case] = r
            save()
        print(f"[{time.time() - t0:7.1f}s] {case}: passed={r.get('passed')} {json.dumps(r.get('summary'), default=str)}",
              flush=True)

    threads = [threading.Thread(target=one, args=(c,)) for c in cases if c not in TIMING_ONLY]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report["correctness_wall_s"] = round(time.time() - t0, 1)
    save()

    if a.timing:
        t1 = time.time()
        runner.slots = threading.Semaphore(1)
        for case in [c for c in a.timing.split(",") if c]:
            if time.time() - t0 > a.time_budget_s:
                report["timing"][case] = {"skipped": "time budget"}
                continue
            r = timing(runner, case, a.timing_steps)
            report["timing"][case] = r
            save()
            print(f"[{time.time() - t0:7.1f}s] timing {case}: {json.dumps(r, default=str)[:300]}", flush=True)
        report["timing_wall_s"] = round(time.time() - t1, 1)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    save()

    with tarfile.open(out_dir / "logs.tar.gz", "w:gz") as tar:
        tar.add(logs, arcname="logs")
        for p in root.glob("*/*/"):
            for name in ("status.json", "config.yaml", "logs/csv/metrics.csv"):
                if (p / name).is_file():
                    tar.add(p / name, arcname=f"runs/{p.parent.name}/{p.name}/{name}")
    print(json.dumps({c: r.get("passed") for c, r in report["cases"].items()}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("suite")
    s.add_argument("--root", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--cases", default="deepspeed_stage_1,deepspeed_stage_2,deepspeed_stage_3")
    s.add_argument("--max-steps", type=int, default=200)
    s.add_argument("--every", type=int, default=20)
    s.add_argument("--slots", type=int, default=10, help="fits running at once")
    s.add_argument("--timing", default="", help="cases to time one after another, after the correctness runs")
    s.add_argument("--timing-steps", type=int, default=400)
    s.add_argument("--time-budget-s", type=float, default=480, help="no timing run starts after this")
    s.add_argument("--deadline-s", type=float, default=500, help="fits still running after this are killed")
    s.add_argument("--cpu-selftest", action="store_true", help="accelerator=cpu, precision 32 (for cases cpu_*)")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = parser.parse_args()
    if args.cmd == "compare":
        print(json.dumps(compare_checkpoints(Path(args.a), Path(args.b)), indent=1, default=str))
        return 0
    return suite(args)


if __name__ == "__main__":
    sys.exit(main())
