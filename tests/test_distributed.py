"""Dataset runs over processes (miga_fast.distributed): `miga-fast attack` under torchrun
with 2 gloo processes on CPU gives the same records and summary as one process; a run
killed mid-way resumes per shard to the same results, nothing lost or repeated; two
"nodes" (torchrun agents on this machine) give the same results too; the
per-batch seeding does not depend on which rank runs a batch."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from miga_fast import distributed
from miga_fast.attacks import MIGA, run_folder
from miga_fast.models.classifiers import SmallCNN
from miga_fast.models.denoisers import DnCNN

BIN = Path(sys.executable).parent
TORCHRUN = shutil.which("torchrun", path=str(BIN)) or shutil.which("torchrun")
CLI = shutil.which("miga-fast", path=str(BIN))
pytestmark = pytest.mark.skipif(TORCHRUN is None or CLI is None, reason="needs torchrun and the miga-fast script")

ARGS = [
    "attack", "--denoiser", "dncnn_digits", "--classifier", "cnn_digits", "--data", "digits",
    "--batch-size", "4", "--attack", "miga",
]  # fmt: skip


def _env():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _one_process(out, n, steps=2):
    cmd = [CLI, *ARGS, "--steps", str(steps), "--n", str(n), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]


def _torchrun(out, n, steps=2, **popen):
    cmd = [TORCHRUN, "--standalone", "--nproc-per-node", "2", CLI, *ARGS, "--steps", str(steps)]
    cmd += ["--n-images", str(n), "--out", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), **popen)


def _records(out):
    """Per-batch records without their timings, and the summary without its speed."""
    recs = {b: {k: v for k, v in r.items() if k != "seconds"} for b, r in run_folder.read_logs(out).items()}
    summary = json.loads((out / "summary.json").read_text())
    for k in ("images_per_s", "processes"):
        summary.pop(k, None)
    return recs, summary


def _lines_per_batch(out):
    seen = {}
    for log in run_folder.logs_of(out):
        for line in log.read_text().splitlines():
            if line.strip():
                b = json.loads(line)["batch"]
                seen[b] = seen.get(b, 0) + 1
    return seen


def test_two_processes_give_the_one_process_results(tmp_path):
    _one_process(tmp_path / "one", 20)
    p = _torchrun(tmp_path / "two", 20)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert sorted(f.name for f in (tmp_path / "two").glob("results*.jsonl")) == [
        "results.rank0.jsonl",
        "results.rank1.jsonl",
    ]
    one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert sorted(one[0]) == list(range(5))
    assert two == one
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2
    assert out.count('"asr"') == 1  # rank 0 alone prints the summary
    # rank 0's progress bar counts every rank's images, to the whole run's end
    assert "(2 processes)" in err and "20/20" in err and err.count("img/s") >= 1


def _rank_pid(root: int, rank: int) -> int:
    """The pid of torchrun's worker of `rank` among the descendants of `root` (/proc)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, found = [root], []
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            todo.append(child)
            try:
                if f"RANK={rank}".encode() in (Path("/proc") / str(child) / "environ").read_bytes().split(b"\0"):
                    found.append(child)
            except OSError:
                pass
    assert found, "no worker of that rank"
    return found[0]


def test_a_killed_run_resumes_per_shard_to_the_same_results(tmp_path):
    n, steps = 48, 30  # 12 batches, 6 per rank, long enough to be interrupted
    _one_process(tmp_path / "one", n, steps)
    run = tmp_path / "two"
    p = _torchrun(run, n, steps)
    deadline = time.time() + 300
    log = run / "results.rank1.jsonl"
    while time.time() < deadline and p.poll() is None:
        if log.exists() and log.read_text().count("\n") >= 1:
            break
        time.sleep(0.2)
    assert p.poll() is None, "the run ended before it could be interrupted"
    os.kill(_rank_pid(p.pid, 1), signal.SIGKILL)  # rank 1 dies mid-run; torchrun then stops rank 0
    p.communicate(timeout=300)
    assert p.returncode != 0
    partial = _lines_per_batch(run)
    assert 0 < len(partial) < n // 4 and not (run / "summary.json").exists()
    p = _torchrun(run, n, steps)  # the same command resumes
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert _lines_per_batch(run) == dict.fromkeys(range(n // 4), 1)  # nothing lost, nothing repeated
    assert _records(run) == _records(tmp_path / "one")
    # and one process finishes nothing more: everything is done
    _one_process(run, n, steps)
    assert _lines_per_batch(run) == dict.fromkeys(range(n // 4), 1)


def test_a_batch_gives_the_same_result_whatever_ran_before_it(tmp_path, rng):
    """The per-batch seeding at the API: attacking batches {0, 1, 2} or only {2} (as a
    rank of a sharded run would) gives batch 2 the same record, with a random start and
    a generator of the caller's."""
    torch.manual_seed(0)
    denoiser, classifier = DnCNN(1, 3, 8).eval(), SmallCNN(1, 10, 8).eval()
    x = torch.rand(12, 1, 16, 16, generator=rng)
    y = torch.randint(0, 10, (12,), generator=rng)

    def attack():
        g = torch.Generator().manual_seed(5)
        return MIGA(denoiser, classifier, steps=2, random_start=True, compile=False, generator=g)

    attack().run((x, y), tmp_path / "all", batch_size=4, progress=False)
    torch.rand(100)  # the global generator moves: it must not matter
    (tmp_path / "last").mkdir()
    shutil.copy(tmp_path / "all" / "config.json", tmp_path / "last" / "config.json")
    first_two = [line for line in (tmp_path / "all" / "results.jsonl").read_text().splitlines()[:2]]
    (tmp_path / "last" / "results.jsonl").write_text("\n".join(first_two) + "\n")  # batches 0, 1 done
    attack().run((x, y), tmp_path / "last", batch_size=4, progress=False)
    a = run_folder.read_logs(tmp_path / "all")[2]
    b = run_folder.read_logs(tmp_path / "last")[2]
    for key in ("psnr", "ssim", "linf", "l2", "success"):
        assert a[key] == b[key]


def test_stateful_attacks_refuse_to_be_sharded(monkeypatch, tmp_path):
    from miga_fast.mine import MINE, MINECritic

    denoiser = DnCNN(1, 3, 8).eval()
    critic = MINECritic((1, 16, 16), (1, 16, 16), hidden=8)
    attack = MIGA(denoiser, None, steps=1, mine=MINE(critic), compile=False)
    assert attack.carries_state and not MIGA(denoiser, None, steps=1, compile=False).carries_state
    monkeypatch.setattr(distributed, "rank_world", lambda: (0, 2))
    with pytest.raises(ValueError, match="carries state from batch to batch"):
        attack.run((torch.rand(4, 1, 16, 16), None), tmp_path, batch_size=2, progress=False)


def test_batch_seed_and_device_for_rank(monkeypatch):
    assert distributed.batch_seed(0, 3) == 3 and distributed.batch_seed(1, 0) != distributed.batch_seed(0, 1)
    assert distributed.rank_world() == (0, 1) and not distributed.launched_by_torchrun()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.device_for_rank("cuda") == torch.device("cuda", 1)
    assert distributed.device_for_rank("cpu") == torch.device("cpu")


PURIFY = ["purify-eval", "--data", "digits", "--quick", "--n-images", "4", "--votes", "1", "--pgd-steps", "1",
          "--eot", "1", "--stride", "50"]  # fmt: skip
TIMINGS = ("seconds", "purify_s_per_image", "purify_peak_mib_per_image")


def _purify_rows(out):
    rows = json.loads((out / "results.json").read_text())["rows"]
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def test_purify_eval_over_two_processes_gives_the_one_process_rows(tmp_path):
    r = subprocess.run([CLI, *PURIFY, "--out", str(tmp_path / "one")], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    cmd = [TORCHRUN, "--standalone", "--nproc-per-node", "2", CLI, *PURIFY, "--out", str(tmp_path / "two")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = _purify_rows(tmp_path / "one"), _purify_rows(tmp_path / "two")
    assert len(one) == 18 and two == one  # the same rows, in the same order
    assert json.loads((tmp_path / "two" / "results.json").read_text())["processes"] == 2
    assert not list((tmp_path / "two").glob("results.rank*.json"))  # merged into results.json
    assert (tmp_path / "two" / "report.md").read_text().count("| digits |") == 18
    assert r.stdout.count("wrote ") == 1  # rank 0 alone reports


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_of_one_process_give_the_one_process_results(tmp_path):
    """The multi-node recipe of docs/scaling.md, both "nodes" on this machine: two torchrun
    agents (--nnodes 2, --node-rank 0 and 1, one process each, LOCAL_RANK 0 on both) meet
    at one rendezvous address and run one sharded attack."""
    _one_process(tmp_path / "one", 16)
    port = str(_free_port())
    nodes = []
    for node in (0, 1):
        cmd = [TORCHRUN, "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1"]
        cmd += ["--master-addr", "127.0.0.1", "--master-port", port, CLI, *ARGS, "--steps", "2"]
        cmd += ["--n-images", "16", "--out", str(tmp_path / "two")]
        nodes.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()))
    outs = [p.communicate(timeout=600) for p in nodes]
    for p, (_, err) in zip(nodes, outs):
        assert p.returncode == 0, err[-3000:]
    assert sorted(f.name for f in (tmp_path / "two").glob("results*.jsonl")) == [
        "results.rank0.jsonl",
        "results.rank1.jsonl",
    ]
    assert _records(tmp_path / "two") == _records(tmp_path / "one")
    assert outs[0][0].count('"asr"') == 1 and outs[1][0].count('"asr"') == 0  # the node of rank 0 reports
