"""DeepSpeed on CPU processes (DS_ACCELERATOR=cpu: the gloo backend), started by the launch scripts in
recipes/launch/: 2-process ZeRO-0/1/2/3 data2vec runs reproduce the single-process engine with the same
global batch (losses, student and EMA teacher), resume continues the trajectory, a 2-"node" job on loopback
completes, and a killed rank makes the others exit with a clear error.

Every child runs in its own session with a timeout; a hang fails the test and the whole process group is killed.
The first run on a machine compiles DeepSpeed's small shared-memory op (ninja + g++; about a minute).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_overrides
from unimim.app.experiment import load_recipe
from unimim.app.pretrain import pretrain
from unimim.train.checkpoint import load_checkpoint
from unimim.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes/image/data2vec_fmnist_cpu.yaml"
LAUNCH = ROOT / "recipes/launch"
STEPS = 4
RUN_TIMEOUT_S = 240  # per launcher invocation (the first one on a fresh machine includes compiling the shm op)
# tiny model; fp32 so that the comparison with one process is exact up to the order of float additions;
# no drop path (its per-process RNG would differ from one process's); 2 processes x 8 = 16 examples per step
COMMON = tiny_overrides("image", "data2vec") + [
    "encoder.drop_path=0.0", "train.precision=fp32", f"train.steps={STEPS}", "train.threads=1",
    "train.checkpoint_every=2",
]
LOSS_RTOL = 1e-5     # fp32 losses: 2-process mean of per-rank means vs one process over the same 16 examples
WEIGHT_ATOL = 1e-5   # fp32 student and teacher weights after 4 AdamW steps (observed: equal to float rounding)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHON=sys.executable, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's ninja (shm op)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


class Job:
    """A launcher invocation in its own process group, output to a log file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen([str(a) for a in args], cwd=ROOT, env=child_env(), stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.log.name} did not finish within {timeout} s:\n{self.output()[-3000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text()

    def close(self) -> None:
        self.kill()
        self._out.close()


@pytest.fixture
def jobs():
    started: list[Job] = []

    def start(args: list[str], log: Path) -> Job:
        started.append(Job(args, log))
        return started[-1]

    yield start
    for job in started:  # whatever happened, no child outlives the test
        job.close()


def run_ok(job: Job) -> None:
    rc = job.wait(RUN_TIMEOUT_S)
    assert rc == 0, f"{job.log.name} exited with {rc}:\n{job.output()[-4000:]}"


def single_node(n: int, out_dir: Path, *extra: str, ds_config: Path | None = None) -> list[str]:
    opts = ["-c", ds_config] if ds_config else []
    return ["bash", LAUNCH / "single_node.sh", "-n", str(n), "-p", str(free_port()), *opts, RECIPE, *COMMON,
            f"train.out_dir={out_dir}", *extra]


def zero3_config(tmp_path: Path) -> Path:
    """ZeRO-3 that partitions every parameter: DeepSpeed keeps parameters under 1e5 elements whole by default,
    which would be all of the tiny model's."""
    path = tmp_path / "zero3_all.json"
    path.write_text('{"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}')
    return path


def two_nodes(hostfile: Path, port: int, rank: int, out_dir: Path, *extra: str) -> list[str]:
    return ["bash", LAUNCH / "multi_node.sh", "-H", hostfile, "-a", "127.0.0.1", "-p", str(port), "-r", str(rank),
            RECIPE, *COMMON, f"train.out_dir={out_dir}", *extra]


def single_process(out: Path, *extra: str):
    """The single-process engine on the same global batch (16 = 2 x 8): per-step losses and final weights."""
    result = pretrain(load_recipe(RECIPE, COMMON + ["train.batch_size=16", f"train.out_dir={out}", *extra]),
                      progress=False)
    return result.losses, load_checkpoint(result.run_dir / "model.safetensors")["model"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return single_process(tmp_path_factory.mktemp("single"))


def assert_matches_reference(run_dir: Path, reference, loss_rtol: float = LOSS_RTOL,
                             student_atol: float = WEIGHT_ATOL, teacher_atol: float = WEIGHT_ATOL) -> None:
    losses, ref_model = reference
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in rows] == pytest.approx(losses, rel=loss_rtol)
    ckpt = load_checkpoint(run_dir / "model.safetensors")  # the consolidated fp32 export, in the project's format
    assert ckpt["step"] == STEPS
    model = ckpt["model"]
    assert model.keys() == ref_model.keys()
    for k, ref in ref_model.items():
        if k.endswith("_extra_state"):  # the EMA teacher
            assert model[k]["num_updates"] == ref["num_updates"] == STEPS
            for tk, tv in ref["teacher"].items():
                got = model[k]["teacher"][tk]
                assert got.dtype == torch.float32, tk  # the shadow stays fp32 under DeepSpeed
                torch.testing.assert_close(got, tv, atol=teacher_atol, rtol=0, msg=f"teacher {tk}")
        else:
            torch.testing.assert_close(model[k], ref, atol=student_atol, rtol=0, msg=f"student {k}")


def test_zero2_two_node_job_on_loopback_matches_one_process(tmp_path, jobs, reference):
    """Two launcher invocations (node ranks 0 and 1, one process each, no ssh) form one ZeRO-2 job."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    port = free_port()
    nodes = [jobs(two_nodes(hostfile, port, r, tmp_path, "deepspeed.zero_stage=2"), tmp_path / f"node{r}.log")
             for r in (0, 1)]
    for job in nodes:
        run_ok(job)
    run_dir = tmp_path / "d2v_fmnist"
    assert_matches_reference(run_dir, reference)
    assert '"stage": 2' in (run_dir / "deepspeed_config.json").read_text()
    assert (run_dir / "deepspeed/step4/zero_pp_rank_1_mp_rank_00_optim_states.pt").is_file()  # sharded per rank
    assert not (run_dir / "deepspeed/step2").exists()  # older tags pruned once the newer one is complete


def test_zero3_stop_and_resume_matches_one_process(tmp_path, jobs, reference):
    """ZeRO-3 on one node with 2 processes, stopped after step 2 (DeepSpeed checkpoint on every rank) and resumed:
    the 4 logged losses, the student and the teacher equal the uninterrupted single-process run's."""
    zero3 = zero3_config(tmp_path)
    first = jobs(single_node(2, tmp_path, "train.stop_after=2", ds_config=zero3), tmp_path / "first.log")
    run_ok(first)
    assert [r["step"] for r in read_metrics(tmp_path / "d2v_fmnist")] == [1, 2]
    second = jobs(single_node(2, tmp_path, ds_config=zero3), tmp_path / "second.log")
    run_ok(second)
    assert "resumed from" in second.output() and "at step 2" in second.output()
    assert_matches_reference(tmp_path / "d2v_fmnist", reference)

    # evaluation reads the export like any single-process run
    from unimim.app.probe import load_pretrained, load_run_config

    run_dir = tmp_path / "d2v_fmnist"
    model = load_pretrained(run_dir, load_run_config(run_dir), torch.device("cpu"))
    assert model.encode(torch.zeros(2, 1, 16, 16)).shape == (2, 17, 32)  # cls + 4 x 4 patches


@pytest.mark.parametrize("stage", [0, 1])
def test_zero0_and_zero1_match_one_process(tmp_path, jobs, reference, stage):
    run_ok(jobs(single_node(2, tmp_path, f"deepspeed.zero_stage={stage}"), tmp_path / f"zero{stage}.log"))
    assert_matches_reference(tmp_path / "d2v_fmnist", reference)


def test_zero3_bf16_matches_one_process_within_bf16_rounding(tmp_path, jobs):
    """bf16: DeepSpeed holds the student in bf16 (fp32 master weights in the optimizer), the single-process engine
    keeps fp32 weights under autocast; the two agree to bf16 rounding. The fp32 teacher averages the bf16 student
    and stays within 1e-4 of the single-process teacher."""
    ref = single_process(tmp_path / "single", "train.precision=bf16")
    run_ok(jobs(single_node(2, tmp_path, "train.precision=bf16", ds_config=zero3_config(tmp_path)),
                tmp_path / "bf16.log"))
    assert_matches_reference(tmp_path / "d2v_fmnist", ref, loss_rtol=1e-2, student_atol=5e-3, teacher_atol=1e-4)


def test_killed_rank_makes_the_other_exit_with_a_clear_error(tmp_path, jobs):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    port = free_port()
    endless = ["train.steps=100000", "train.checkpoint_every=100000", "deepspeed.timeout_s=30"]
    node0 = jobs(two_nodes(hostfile, port, 0, tmp_path, *endless), tmp_path / "node0.log")
    node1 = jobs(two_nodes(hostfile, port, 1, tmp_path, *endless), tmp_path / "node1.log")
    metrics = tmp_path / "d2v_fmnist" / "metrics.jsonl"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (metrics.is_file() and metrics.read_text().strip()):  # training is under way
        assert node0.proc.poll() is None and node1.proc.poll() is None, node0.output()[-3000:]
        assert time.monotonic() < deadline, "training did not start:\n" + node0.output()[-3000:]
        time.sleep(0.2)
    node1.kill()  # SIGKILL to node 1's launcher and its rank
    t0 = time.monotonic()
    rc = node0.wait(timeout=90)
    waited = time.monotonic() - t0
    out = node0.output()
    assert rc != 0, out[-3000:]
    assert "rank 0/2: lost contact with another process during training" in out, out[-3000:]
    assert waited < 60, f"rank 0 took {waited:.0f} s to notice"


def test_hung_rank_makes_the_other_exit_within_the_timeout(tmp_path, jobs):
    """A rank stopped with SIGSTOP keeps its connections open, so the collective waiting for it does not fail by
    itself on gloo (rank 0 was seen blocked for over 200 s against deepspeed.timeout_s=30): the watchdog ends rank 0
    with the clear error once it has made no progress for deepspeed.timeout_s."""
    timeout_s = 15
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    port = free_port()
    endless = ["train.steps=100000", "train.checkpoint_every=100000", f"deepspeed.timeout_s={timeout_s}"]
    node0 = jobs(two_nodes(hostfile, port, 0, tmp_path, *endless), tmp_path / "node0.log")
    node1 = jobs(two_nodes(hostfile, port, 1, tmp_path, *endless), tmp_path / "node1.log")
    metrics = tmp_path / "d2v_fmnist" / "metrics.jsonl"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (metrics.is_file() and metrics.read_text().strip()):  # training is under way
        assert node0.proc.poll() is None and node1.proc.poll() is None, node0.output()[-3000:]
        assert time.monotonic() < deadline, "training did not start:\n" + node0.output()[-3000:]
        time.sleep(0.2)
    os.killpg(node1.proc.pid, signal.SIGSTOP)  # node 1's launcher and rank hang (the fixture SIGKILLs them after)
    t0 = time.monotonic()
    rc = node0.wait(timeout=timeout_s + 60)
    waited = time.monotonic() - t0
    out = node0.output()
    assert rc != 0, out[-3000:]
    assert "rank 0/2: lost contact with another process during training" in out, out[-3000:]
    assert waited < timeout_s + 20, f"rank 0 took {waited:.0f} s to notice"
