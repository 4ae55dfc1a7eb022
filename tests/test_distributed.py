"""DDP under torchrun on the CPU (gloo): 2 processes, a tiny model, synthetic 8x8 data.

One torchrun launch covers most of it: rank 1 exits abruptly mid-epoch (tests/crash_worker.py, which torchrun starts in
place of `-m reslab`), torchrun (--max-restarts 1) restarts both workers, they resume from the step-4 checkpoint and
finish.
"""

import copy
import csv
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reslab.checkpoint import model_from_checkpoint, read_checkpoint
from reslab.config import TrainConfig, make_config
from reslab.data import input_pipeline, load_dataset, make_loaders, make_splits
from reslab.device import resolve_amp
from reslab.distributed import backend_for
from reslab.evaluate import evaluate_checkpoint
from reslab.precise_bn import update_bn_stats
from reslab.train import fit

# 512 training images / (32 per process x 2 processes) = 8 steps per epoch
CRASH_WORKER = str(Path(__file__).with_name("crash_worker.py"))
ARGS = "--dataset synthetic --model resnet20 --resize 8 --train-subset 512 --val-size 100 -b 32 --epochs 2"


def torchrun(tmp_path, name, *, crash_at=None, extra=""):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if crash_at is not None:
        env["RESLAB_TEST_CRASH_AT_STEP"] = str(crash_at)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "1",
    ]
    cmd += [CRASH_WORKER] if crash_at is not None else ["-m", "reslab"]
    cmd += ["train", *ARGS.split(), "--output", str(tmp_path), "--name", name]
    cmd += ["--ckpt-interval", "4", *extra.split()]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    return out.returncode, out.stdout + out.stderr


try:  # TensorBoard events too where the optional extra is installed: written by rank 0 alone, across the restart
    import tensorboard  # noqa: F401

    TENSORBOARD = "--logger tensorboard"  # torchrun's parser refuses --log (an abbreviation of its --log-dir)
except ImportError:
    TENSORBOARD = ""


@pytest.fixture(scope="module")
def restarted_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    rc, log = torchrun(tmp, "restarted", crash_at=6, extra=TENSORBOARD)
    assert rc == 0, log[-3000:]
    return tmp / "restarted", log


def test_a_killed_worker_is_restarted_and_the_run_resumes_and_finishes(restarted_run):
    run, log = restarted_run
    assert "[crash_worker] rank 1 exits at step 6" in log
    # the checkpoint of step 4 (--ckpt-interval 4) is where the new workers pick up
    assert "at epoch 1, step 4 (step 4 of the epoch)" in log
    assert read_checkpoint(run / "last.pt")["step"] == 16


def test_only_rank_0_writes_and_prints_and_ranks_end_identical(restarted_run):
    run, log = restarted_run
    # one epoch line per epoch: the other rank printed nothing (the crashed first attempt never finished an epoch)
    assert log.count("epoch 1, loss") == 1 and log.count("epoch 2, loss") == 1
    assert "parameters and buffers are identical on all 2 ranks" in log
    files = {p.name for p in run.iterdir()}
    events = {name for name in files if name.startswith("events.out.tfevents.")}
    assert files - events == {
        "config.json",
        "metrics.csv",
        "curves.png",
        "confusion_matrix.png",
        "last.pt",
        "best.pt",
        "report.html",
        "report.json",
        "mistakes.png",
        "gradcam.png",
    }
    if TENSORBOARD:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        assert len(events) == 2  # one event file per attempt, rank 0's: rank 1 writes none
        reader = EventAccumulator(str(run), size_guidance={"scalars": 0})
        reader.Reload()
        # the restart resumed from step 4: whatever the killed attempt logged after it is hidden, nothing repeats
        assert [e.step for e in reader.Scalars("train/loss")] == list(range(1, 17))


def test_sharded_evaluation_equals_a_single_process_evaluation(restarted_run):
    run, _ = restarted_run
    with open(run / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    for split in ("test", "val"):
        single = evaluate_checkpoint(run / "last.pt", split=split, output=run.parent / "eval", quiet=True)
        assert single.accuracy == float(last[f"{split}_acc"])  # the same count of correct images


def test_precise_statistics_are_the_average_over_the_batches_of_both_ranks(restarted_run):
    # --precise-bn (default 2048 images, capped at one epoch: 8 batches per rank) after the last step: each rank
    # averages its own shard's batches and the two are all-reduced; here the same 16 batches in one process
    run, _ = restarted_run
    ckpt = read_checkpoint(run / "last.pt")
    config = TrainConfig.from_dict(ckpt["config"])
    model = model_from_checkpoint({**ckpt, "model": ckpt["model"] | ckpt["running_stats"]})  # the trained network
    data = load_dataset("synthetic")
    splits = make_splits(data, config)
    mean, std, crop = input_pipeline(config, data, None)
    batches = []
    for rank in (0, 1):
        loader = make_loaders(splits, config, mean=mean, std=std, device=torch.device("cpu"), rank=rank, world_size=2)
        loader["train"].set_epoch(ckpt["step"] // len(loader["train"]))
        batches += list(loader["train"])
    assert len(batches) == 16
    stats = [k for k in ckpt["running_stats"] if not k.endswith("num_batches_tracked")]

    def close_to_the_checkpoint(batches) -> bool:
        net = copy.deepcopy(model)
        update_bn_stats(net, batches, num_batches=16, amp_dtype=resolve_amp(config.amp, torch.device("cpu")))
        # bf16 autocast, another thread count and summation order: equal to about 2e-3 (means near 0 set the
        # tolerance); rank 0's shard alone is 0.07 and more away
        return all(torch.allclose(ckpt["model"][k], net.state_dict()[k], rtol=1e-2, atol=5e-3) for k in stats)

    assert close_to_the_checkpoint(batches)
    assert not close_to_the_checkpoint(batches[:8])  # rank 0's shard alone is another average
    assert not all(torch.equal(ckpt["model"][k], ckpt["running_stats"][k]) for k in stats)


def test_resume_at_another_world_size(restarted_run, tmp_path):
    run = shutil.copytree(restarted_run[0], tmp_path / "copy")
    # one more epoch in a single process: the global step is re-expressed in its own steps (16 per epoch)
    config = make_config(**read_checkpoint(run / "last.pt")["config"])
    config = make_config(**{**config.to_dict(), "epochs": 3, "resume": str(run), "progress": False, "threads": 1})
    result = fit(config)
    assert result.completed and result.step == 3 * 16
    assert [r["epoch"] for r in result.history] == [1, 2, 3]


@pytest.mark.slow
def test_the_restarted_run_ends_bitwise_equal_to_an_uninterrupted_one(restarted_run, tmp_path):
    run, _ = restarted_run
    rc, log = torchrun(tmp_path, "straight")
    assert rc == 0, log[-3000:]
    a, b = read_checkpoint(run / "last.pt"), read_checkpoint(tmp_path / "straight" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def wait_for_listener(port: int, process: subprocess.Popen, *, timeout: float = 120) -> None:
    """Return once something accepts TCP connections on 127.0.0.1:`port`; fail if `process` ends first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert process.poll() is None, process.communicate()[0][-2000:]
            assert time.monotonic() < deadline, f"nothing listened on port {port} within {timeout} s"
            time.sleep(0.05)


def test_two_nodes_meet_at_a_rendezvous_endpoint_and_train_one_model(tmp_path, unused_port):
    # two torchrun agents, one process each, as two machines would run them: --nnodes 2 and a c10d rendezvous
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{unused_port}", "--rdzv-id", "twonodes"]
    # stopped mid-epoch (8 steps per epoch), where no evaluation has given the ranks one copy of the BatchNorm
    # statistics: the ranks must still end identical. --whiten-stem: each rank whitens from its own shard, and DDP
    # must start both from rank 0's stem
    cmd += ["-m", "reslab", "train", *ARGS.split(), "--epochs", "1", "--max-steps", "5", "--output", str(tmp_path)]
    cmd += ["--whiten-stem"]
    nodes = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    try:
        # the first agent hosts the rendezvous store: the second starts once the store accepts connections
        wait_for_listener(unused_port, nodes[0])
        nodes.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    except BaseException:
        nodes[0].kill()
        raise
    try:
        logs = [node.communicate(timeout=180)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert all(node.returncode == 0 for node in nodes), "\n----\n".join(log[-2000:] for log in logs)
    log = "".join(logs)
    assert "DDP over 2 processes" in log and log.count("stopped at --max-steps") == 1  # printed by rank 0 only
    assert "parameters and buffers are identical on all 2 ranks" in log
    # --rdzv-id names the run folder that both nodes agree on
    assert read_checkpoint(tmp_path / "resnet20-twonodes" / "last.pt")["step"] == 5


def test_backend_follows_the_device():
    assert backend_for(torch.device("cuda", 0)) == "nccl"
    assert backend_for(torch.device("cpu")) == "gloo"
