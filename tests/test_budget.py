"""The memory and device budget: params that cannot fit this machine are refused in one line with
the estimate, before any work; the defaults fit a small machine."""

from __future__ import annotations

import re

import pytest
import torch
import yaml

from appliedtorch.classify.nets import budget as classify_budget
from appliedtorch.core.errors import AppliedTorchError
from appliedtorch.demos import budget as demos_budget
from appliedtorch.machine import budget
from appliedtorch.params import parse_params
from appliedtorch.pinn import budget as pinn_budget
from helpers import REPO, merge


def params(**over):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    return parse_params(merge(raw, {"device": "cpu", **over}))


@pytest.fixture
def machine(monkeypatch):
    """Pretend the machine has `gb` GB free, and the process no limit of its own."""

    def set_free(gb: float) -> None:
        monkeypatch.setattr(budget, "_ram_available", lambda: gb * 1e9)
        monkeypatch.setattr(budget, "process_limits", lambda proc, root: [])

    return set_free


def test_the_defaults_fit_a_machine_with_2_gb_free(machine):
    machine(2)
    p = params()
    for section in ("mlp", "cnn"):
        classify_budget.check_budget(p, section)
    pinn_budget.check_budget(p)
    demos_budget.check_budget(p)


def test_a_resnet_of_width_1024_is_refused_with_its_estimate(machine):
    machine(23)
    p = params(cnn={"arch": "resnet", "width": 1024})
    with pytest.raises(AppliedTorchError) as info:
        classify_budget.check_budget(p, "cnn")
    assert re.fullmatch(
        r"cnn\.width 1024 with cnn\.arch resnet \(500 M weights\), cnn\.batch_size 128 needs "
        r"~2\d GB for weights, gradients and Adam state, activations of a batch of 128 and an "
        r"evaluation batch of 1024; this machine has 23 GB memory available; use a smaller net "
        r"or cnn\.batch_size / cnn\.eval_batch_size",
        str(info.value),
    ), info.value


def test_train_limit_shrinks_the_batches_it_counts(machine):
    wide = params(cnn={"arch": "resnet", "width": 256, "batch_size": 4096})
    small = params(cnn={"arch": "resnet", "width": 256, "batch_size": 4096, "train_limit": 32})
    big, tiny = (classify_budget.estimate("cnn", p.cnn) for p in (wide, small))
    assert (
        "activations of a batch of 4096" in big.parts
        and "activations of a batch of 32" in tiny.parts
    )
    assert tiny.total < big.total / 20


def test_sgd_without_momentum_keeps_no_optimizer_state():
    adam = classify_budget.estimate("mlp", params().mlp)
    sgd = classify_budget.estimate("mlp", params(mlp={"optimizer": "sgd", "momentum": 0.0}).mlp)
    assert (
        adam.parts["weights, gradients and Adam state"]
        == 2 * sgd.parts["weights, gradients and SGD state"]
    )


@pytest.mark.parametrize(
    ("pinn", "message"),
    [
        ({"hidden_sizes": [65536] * 3}, r"pinn\.hidden_sizes \[65536, 65536, 65536\] \(8,590 M "
         r"weights\) needs ~[\d,]+ TB for Levenberg-Marquardt's Jacobian and normal matrix; this "
         r"machine has 23 GB memory available; use fewer or narrower layers, or pinn\.lm_steps: 0$"),
        ({"hidden_sizes": [65536] * 3, "lm_steps": 0}, r".* needs ~7 TB for L-BFGS's history of 50; "),
        ({"hidden_sizes": [65536] * 3, "lm_steps": 0, "lbfgs_steps": 0}, r".* needs ~2\d\d GB for "
         r"weights, gradients and Adam state; .*; use fewer or narrower layers or fewer points$"),
        ({"hidden_sizes": [100, 100], "collocation_points": 10**6}, r"pinn\.hidden_sizes \[100, 100\] "
         r"with 1000000 points needs ~\d+ GB for Levenberg-Marquardt's"),
    ],
)  # fmt: skip
def test_a_pinn_too_big_names_its_largest_phase(machine, pinn, message):
    machine(23)
    with pytest.raises(AppliedTorchError, match=message):
        pinn_budget.check_budget(params(pinn=pinn))


def test_the_estimate_counts_the_weights_the_net_has():
    from appliedtorch.pinn.problem import PINNNet

    net = PINNNet([7, 5, 3])
    assert pinn_budget.weight_count([7, 5, 3]) == sum(p.numel() for p in net.parameters())
    cfg = params(mlp={"hidden_size": 32, "hidden_layers": 3}).mlp
    net = classify_budget.meta_net("mlp", cfg, (1, 28, 28), 10)
    assert all(p.device.type == "meta" for p in net.parameters())  # nothing allocated
    assert sum(p.numel() for p in net.parameters()) == 784 * 32 + 32 + 2 * (32 * 32 + 32) + 330


def test_a_device_the_machine_lacks_is_one_line():
    if not torch.backends.mps.is_available():
        with pytest.raises(AppliedTorchError, match=r"^device 'mps' \(Apple's GPU\) was asked for"):
            budget.check_device("mps")
    n = torch.cuda.device_count()
    name = f"cuda:{n}" if n else "cuda"
    with pytest.raises(AppliedTorchError, match=rf"^device '{name}' "):
        budget.check_device(name)
    assert budget.check_device("cpu") == torch.device("cpu")


def test_compile_needs_a_compiler(monkeypatch, tmp_path):
    assert budget.cxx_compiler() is not None  # g++ is installed here (the test would mean little)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert budget.cxx_compiler() is None
    with pytest.raises(AppliedTorchError, match=r"^mlp\.compile: true needs a C\+\+ compiler"):
        budget.check_compile("mlp.compile", torch.device("cpu"))


def test_sizes_read_well():
    assert [budget.gigabytes(n) for n in (3e5, 1.2e8, 1.54e9, 41.2e9, 7.1e12, 2.4e15)] == [
        "1 MB", "120 MB", "1.5 GB", "41 GB", "7 TB", "2,400 TB"
    ]  # fmt: skip


# ---- the process's own limits: RLIMIT_AS and the cgroup's (issue 37) ---------------------------


def fake_cgroups(tmp_path, proc_cgroup: str, files: dict[str, str], v2: bool = True):
    """A /proc/self/cgroup saying `proc_cgroup` and a cgroup tree holding `files` (relative
    path: content); returns (proc, root) for budget.cgroup_limits."""
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(proc_cgroup)
    root.mkdir()
    if v2:
        (root / "cgroup.controllers").write_text("cpu memory pids\n")
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content)
    return proc, root


def test_cgroup_v2_limit_of_a_parent_bounds_the_estimate(tmp_path):
    proc, root = fake_cgroups(
        tmp_path,
        "0::/job/step\n",
        {
            "job/memory.max": "4000000000\n",
            "job/memory.current": "1000000000\n",
            "job/step/memory.max": "max\n",
            "job/step/memory.current": "900000000\n",
        },
    )
    (limit,) = budget.cgroup_limits(proc, root)
    assert limit.free == 3e9 and limit.name == f"the cgroup's memory.max (4.0 GB) at {root}/job"


def test_cgroup_v1_memory_controller_is_read(tmp_path):
    proc, root = fake_cgroups(
        tmp_path,
        "5:cpu,cpuacct:/slurm/job1\n4:memory:/slurm/job1\n0::/\n",
        {
            "memory/slurm/job1/memory.limit_in_bytes": "2000000000\n",
            "memory/slurm/job1/memory.usage_in_bytes": "500000000\n",
            "memory/memory.limit_in_bytes": "9223372036854771712\n",  # v1's "no limit"
        },
        v2=False,
    )
    (limit,) = budget.cgroup_limits(proc, root)
    assert limit.free == 1.5e9 and "memory.limit_in_bytes (2.0 GB)" in limit.name


def test_a_container_without_its_own_cgroup_namespace_reads_the_mount(tmp_path):
    """/proc/self/cgroup names the host's path, which is not mounted here: the mount is the
    process's cgroup."""
    proc, root = fake_cgroups(
        tmp_path, "0::/kubepods/pod1/abc\n", {"memory.max": "1000000000", "memory.current": "0"}
    )
    (limit,) = budget.cgroup_limits(proc, root)
    assert limit.free == 1e9


def test_no_limit_anywhere_is_no_limit(tmp_path):
    proc, root = fake_cgroups(tmp_path, "0::/a\n", {"a/memory.max": "max\n"})
    assert budget.cgroup_limits(proc, root) == []
    assert budget.cgroup_limits(tmp_path / "nowhere", root) == []  # no /proc: no limit read


def test_a_run_past_the_cgroup_limit_is_refused_naming_it(tmp_path, monkeypatch):
    proc, root = fake_cgroups(
        tmp_path, "0::/ci\n", {"ci/memory.max": "1000000000", "ci/memory.current": "0"}
    )
    monkeypatch.setattr(budget, "PROC", proc)
    monkeypatch.setattr(budget, "CGROUP_ROOT", root)
    monkeypatch.setattr(budget, "_ram_available", lambda: 64e9)  # a big machine, a small job
    p = params(pinn={"hidden_sizes": [4096, 4096]})
    with pytest.raises(AppliedTorchError) as info:
        pinn_budget.check_budget(p)
    assert re.search(
        rf"this process has 1\.0 GB left under the cgroup's memory\.max \(1\.0 GB\) at {root}/ci; ",
        str(info.value),
    ), info.value


ULIMIT_KB = 6_000_000  # ~3.5 GB of it mapped once torch and mlflow are imported


def pinn_under_ulimit(tmp_path, ulimit=f"-v {ULIMIT_KB}", **pinn):
    """stages/pinn.py in a shell with `ulimit <ulimit>`, in a scratch workspace."""
    import subprocess

    from helpers import PYTHON

    raw = merge(yaml.safe_load((REPO / "params.yaml").read_text()), {"pinn": pinn})
    raw["tracking"]["uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    script = REPO / "stages" / "pinn.py"
    cmd = f"ulimit {ulimit} && exec {PYTHON} {script} --params params.yaml"
    env = {k: v for k, v in __import__("os").environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        ["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


def test_a_pinn_past_ulimit_v_is_refused_up_front_in_one_line(tmp_path):
    # ~4.3 GB: fits the machine (2 GB free would have refused it too, so no test runs there)
    proc = pinn_under_ulimit(tmp_path, hidden_sizes=[8192, 8192, 8192], lbfgs_steps=0, lm_steps=0)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert re.match(
        r"error: pinn\.hidden_sizes \[8192, 8192, 8192\] \(134 M weights\) needs ~4\.\d GB .*; "
        rf"this process has [\d.]+ [GM]B left under the virtual-memory limit RLIMIT_AS "
        rf"\(ulimit -v {ULIMIT_KB}, 6\.1 GB\)(, and needs ~[\d.]+ GB of it)?; use fewer",
        lines[-1],
    ), lines[-1]
    assert not (tmp_path / "reports").exists() and not (tmp_path / "models").exists()


@pytest.mark.slow
def test_a_pinn_that_fits_under_ulimit_v_trains(tmp_path):
    proc = pinn_under_ulimit(tmp_path, adam_steps=50, lbfgs_steps=10, lm_steps=10)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "reports" / "pinn" / "metrics.json").is_file()


def test_a_pinn_past_ulimit_d_is_refused_up_front_in_one_line(tmp_path):
    """RLIMIT_DATA counts malloc and anonymous mmap: without it the run died in the allocator."""
    proc = pinn_under_ulimit(
        tmp_path, "-d 1000000", hidden_sizes=[4096, 4096], lbfgs_steps=0, lm_steps=0
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert re.search(
        r"needs ~\d+ MB .*; this process has \d+ MB left under the data-segment limit "
        r"RLIMIT_DATA \(ulimit -d 1000000, 1\.0 GB\)(, and needs ~[\d.]+ [GM]B of it)?; use fewer",
        lines[-1],
    ), lines[-1]


# What a process has mapped once it has imported what the CNN stage imports (torch, MLflow, ...).
MAPPED = """
import runpy, sys
runpy.run_path(sys.argv[1], run_name="imported")
print(next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmSize:")))
"""


def test_the_default_cnn_past_its_address_space_is_refused_before_any_data(tmp_path):
    """Under `ulimit -v` leaving ~1.1 GB past what the stage maps at its start, the default CNN
    (~0.6 GB of tensors) ran out of address space after minutes of training; its budget counts
    address space as the allocator spends it, so it is refused up front in one line."""
    import subprocess

    from helpers import PYTHON

    script = REPO / "stages" / "train.py"
    mapped = subprocess.run(
        [PYTHON, "-c", MAPPED, str(script)], capture_output=True, text=True, timeout=300
    )
    limit_kb = int(mapped.stdout.split()[-1]) + 1_100_000
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["device"], raw["tracking"]["uri"] = "cpu", f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    cmd = (
        f"ulimit -v {limit_kb} && exec {PYTHON} {script} --params params.yaml --section cnn "
        "--model models/cnn.pt --reports reports/cnn"
    )  # no data: the budget is checked before any is read
    proc = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert re.match(
        r"error: cnn\.width 32 with cnn\.arch tutorial .* needs ~\d+ MB .*; this process has "
        r"[\d.]+ [GM]B left under the virtual-memory limit RLIMIT_AS .*, and needs ~[\d.]+ GB",
        lines[-1],
    ), lines[-1]
    assert not (tmp_path / "reports").exists() and not (tmp_path / "models").exists()
