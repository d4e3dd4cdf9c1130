"""Thread count and OpenMP wait policy of the command-line programs (issue 19, item 8): a busy core costs its
share. The numbers behind the choice are benchmarks/threads.py's; no timing here."""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from denoisekit import _threads
from denoisekit._threads import busy_cpus, default_threads, openmp_env
from denoisekit.cli import common


@pytest.mark.parametrize("cpus, busy, expected", [
    (2, 0.0, 2),   # idle: every core
    (2, 0.3, 2),   # a little background work does not cost a core
    (2, 0.6, 1),   # from half a core, that core is taken
    (2, 1.0, 1),   # beside one busy process: the free core only
    (2, 4.0, 1),   # fully loaded: still one thread
    (1, 0.0, 1),
    (8, 2.2, 6),
    (8, 0.0, 8),
])
def test_default_threads_is_one_per_core_not_kept_busy(cpus, busy, expected):
    assert default_threads(cpus=cpus, busy=busy) == expected


def test_default_threads_stays_within_torchs_count():
    """8 logical CPUs on 4 cores: torch's own count (the limit) stands when the machine is idle."""
    assert default_threads(cpus=8, busy=0.0, limit=4) == 4
    assert default_threads(cpus=8, busy=6.0, limit=4) == 2


def test_default_threads_measures_the_machine_when_not_told(monkeypatch):
    monkeypatch.setattr(_threads, "usable_cpus", lambda: 4)
    monkeypatch.setattr(_threads, "busy_cpus", lambda: 1.2)
    assert default_threads() == 3


def test_busy_cpus_counts_other_processes_not_this_one(monkeypatch):
    """Two CPUs, 0.2 s: 30 of 40 jiffies busy is 1.5 CPUs, of which this process used 0.1 s (0.5 CPU)."""
    stats = iter([(1000, 4000), (1030, 4040)])
    clock = iter([5.0, 5.1])
    monkeypatch.setattr(_threads, "_cpu_jiffies", lambda: next(stats))
    monkeypatch.setattr(_threads.time, "process_time", lambda: next(clock))
    monkeypatch.setattr(_threads.time, "sleep", lambda s: None)
    monkeypatch.setattr(_threads.os, "cpu_count", lambda: 2)
    assert busy_cpus(window=0.2) == pytest.approx(1.0)


def test_busy_cpus_reads_this_machine():
    assert 0.0 <= busy_cpus(window=0.05) <= (os.cpu_count() or 1)


def test_openmp_env_sets_a_passive_wait_unless_the_user_chose():
    assert openmp_env({}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert openmp_env({"OMP_WAIT_POLICY": "active"}) == {}
    assert openmp_env({"GOMP_SPINCOUNT": "10000"}) == {}


def test_program_threads_honours_the_flag_then_omp_num_threads(monkeypatch):
    monkeypatch.setattr(common, "default_threads", lambda limit: 1)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert common.program_threads(argparse.Namespace(threads=3)) == 3
    assert common.program_threads(argparse.Namespace(threads=None)) == 1
    assert common.program_threads(argparse.Namespace()) == 1  # eval, report: no --threads, the same default
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(common.torch, "get_num_threads", lambda: 2)
    assert common.program_threads(argparse.Namespace(threads=None)) == 2


def test_reexec_only_for_several_threads_and_no_policy_of_the_users(monkeypatch):
    calls = []
    monkeypatch.setattr(common.os, "execv", lambda exe, argv: calls.append((exe, argv, os.environ.get("OMP_WAIT_POLICY"))))
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setattr(sys, "argv", ["/usr/lib/python3/site-packages/x/my_script.py"])
    common.reexec_for_openmp(2)  # a script of the user's calling main(): never started again behind its back
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["/venv/bin/denoisekit", "train"])
    common.reexec_for_openmp(1)  # one thread: no parallel region, nothing to wait for
    assert calls == []
    common.reexec_for_openmp(2)
    assert calls == [(sys.executable, [sys.executable, *sys.orig_argv[1:]], "PASSIVE")]
    calls.clear()
    common.reexec_for_openmp(2)  # now set: the started-again program goes on
    assert calls == []


def _probe(*args: str) -> subprocess.CompletedProcess:
    """The program in a fresh interpreter; the code prints the wait policy before anything imports torch."""
    code = ("import os, sys; print('policy', os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules, flush=True); "
            f"sys.argv = ['denoisekit', *{list(args)!r}]; from denoisekit.cli import main; sys.exit(main())")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, check=False)


def test_make_demo_needs_no_threads_flag():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    demo = re.search(r"^demo:.*?(?=^\S)", makefile, re.M | re.S)
    assert demo is not None and "--threads" not in demo.group(0)


@pytest.mark.slow  # two fresh interpreters (~6 s)
def test_program_sets_a_passive_wait_before_torch_loads(tmp_path):
    """The policy is in the environment of the process that runs the command before torch is imported, so the
    OpenMP runtime reads it; the command's own error still comes back as one line and code 2."""
    proc = _probe("sample", str(tmp_path / "missing-run"), "--out", str(tmp_path / "x.png"), "--threads", "2")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("policy")]
    assert lines == ["policy None False", "policy PASSIVE False"], proc.stdout + proc.stderr
    assert proc.returncode == 2 and proc.stderr.startswith("denoisekit: error:") and "Traceback" not in proc.stderr


@pytest.mark.slow  # a fresh interpreter (~3 s)
def test_program_leaves_a_users_policy_and_one_thread_alone(tmp_path):
    proc = _probe("sample2d", str(tmp_path / "missing-run"))  # sample2d: 1 thread by default
    assert [line for line in proc.stdout.splitlines() if line.startswith("policy")] == ["policy None False"]
    assert proc.returncode == 2
