"""How idle OpenMP threads wait (core/openmp.py): spin when the run queue leaves a core for each
of torch's threads, sleep (PASSIVE) beside runnable processes, the user's setting kept; decided
before torch loads."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliedtorch.core import openmp
from helpers import REPO


def _decide(env: dict[str, str], others: int | None, cpus: int = 2) -> openmp.Decision:
    return openmp.decide(env, runnable=lambda: others, available=cpus)


def test_a_quiet_machine_spins_and_a_busy_one_sleeps():
    env: dict[str, str] = {}
    decision = _decide(env, others=0)
    assert decision.policy == "spin" and openmp.POLICY not in env
    assert env[openmp.MARK] == "spin"
    assert decision.tag() == "spin (no other runnable process; 2 threads on 2 CPUs)"

    env = {}
    decision = _decide(env, others=1)
    assert decision.policy == "passive" and env[openmp.POLICY] == "PASSIVE"
    assert decision.tag() == "passive (1 other runnable task; 2 threads on 2 CPUs)"


@pytest.mark.parametrize(
    ("others", "cpus", "threads", "policy"),
    [
        (3, 16, "4", "spin"),  # 3 others + 4 threads fit in 16 CPUs
        (13, 16, "4", "passive"),
        (0, 16, None, "spin"),  # one thread a CPU
        (1, 16, None, "passive"),
        (0, 8, "1", "passive"),  # one thread: nothing waits
        (0, 8, "nonsense", "spin"),  # torch ignores it too: one a CPU
        (0, 8, "64,2", "spin"),  # nested levels: the first, at most one a CPU
        (None, 2, None, "passive"),  # no /proc/stat
    ],
)
def test_cores_left_for_the_threads_decide(others, cpus, threads, policy):
    env = {} if threads is None else {"OMP_NUM_THREADS": threads}
    decision = _decide(env, others, cpus)
    assert decision.policy == policy
    assert env.get(openmp.POLICY) == ("PASSIVE" if policy == "passive" else None)


@pytest.mark.parametrize("setting", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "1000"}])
def test_the_users_setting_is_kept(setting):
    env = dict(setting)
    decision = openmp.decide(env, runnable=lambda: pytest.fail("the run queue was read"))
    assert decision.policy == "yours" and env == setting
    assert decision.why == ", ".join(f"{k}={v}" for k, v in setting.items())


def test_a_parents_decision_is_made_again():
    # A stage's subprocess inherits the PASSIVE its parent set: this machine decides afresh.
    env = {openmp.POLICY: "PASSIVE", openmp.MARK: "passive"}
    assert _decide(env, others=0).policy == "spin" and openmp.POLICY not in env
    env = {openmp.MARK: "spin"}
    assert _decide(env, others=1).policy == "passive" and env[openmp.POLICY] == "PASSIVE"
    # ... but a policy the user set since is theirs
    env = {openmp.POLICY: "ACTIVE", openmp.MARK: "passive"}
    assert openmp.decide(env).policy == "yours" and env == {openmp.POLICY: "ACTIVE"}


def test_the_run_queue_is_read_from_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3\nprocs_running 4\nprocs_blocked 0\n")
    assert openmp.others_runnable(samples=3, interval=0, stat=str(stat)) == 3
    stat.write_text("cpu  1 2 3\n")
    assert openmp.others_runnable(samples=1, stat=str(stat)) is None
    assert openmp.others_runnable(samples=1, stat=str(tmp_path / "missing")) is None


def _fresh_process(env: dict[str, str]) -> list[str]:
    code = (
        "import os, sys\n"
        "from appliedtorch.core import openmp\n"
        "openmp.settle()  # as every entry point's first statement\n"
        "print('torch' in sys.modules)\n"
        "print(openmp.decision().tag())\n"
        "print(os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux's /proc/stat")
def test_beside_a_busy_process_a_stage_sleeps_before_torch_loads():
    # Every CPU gets a busy process, so at least one other task is runnable whatever else runs.
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(openmp.cpus())
    ]
    try:
        time.sleep(0.5)
        env = {k: v for k, v in os.environ.items() if k not in (openmp.POLICY, openmp.MARK)}
        env.pop(openmp.SPIN_COUNT, None)
        loaded, tag, policy = _fresh_process(env)
        assert loaded == "False"  # appliedtorch decides before anything loads torch
        assert tag.startswith("passive (") and "other runnable task" in tag
        assert policy == "PASSIVE"
        # a parent's PASSIVE is not taken for the user's: the child reads the run queue itself
        env |= {openmp.POLICY: "PASSIVE", openmp.MARK: "passive"}
        assert _fresh_process(env)[1].startswith("passive (")
        env[openmp.MARK] = "spin"  # the user set PASSIVE after a parent decided to spin
        assert _fresh_process(env)[1:] == ["yours (OMP_WAIT_POLICY=PASSIVE)", "PASSIVE"]
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def test_torch_loaded_first_is_reported_as_it_was():
    code = (
        "import torch, appliedtorch\n"
        "from appliedtorch.core import openmp\n"
        "openmp.settle()\n"
        "print(openmp.decision().tag())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in (openmp.POLICY, openmp.SPIN_COUNT)}
    env[openmp.SPIN_COUNT] = "500"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "preset (torch was imported first, with GOMP_SPINCOUNT=500)"


def test_importing_appliedtorch_decides_nothing():
    """A notebook's `import appliedtorch` reads no run queue and sets no variable; the
    decision belongs to the entry point that calls `settle()`."""
    code = (
        "import os, appliedtorch, appliedtorch.params\n"
        "from appliedtorch.core import openmp\n"
        "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get(openmp.MARK))\n"
        "print(openmp.decision().policy)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in (openmp.POLICY, openmp.MARK)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.splitlines() == ["None None", "unset"], out.stderr[-2000:]


def test_every_stage_decides_before_anything_imports_torch():
    """The first statements of each stage script: import openmp, then `openmp.settle()`."""
    for script in sorted((REPO / "stages").glob("*.py")):
        tree = ast.parse(script.read_text())
        body = [n for n in tree.body if not isinstance(n, ast.Expr) or n is not tree.body[0]]
        body = [n for n in body if not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
        first, second = ast.unparse(body[0]), ast.unparse(body[1])
        assert first == "from appliedtorch.core import openmp", script.name
        assert second == "openmp.settle()", script.name
