"""Streamed data in dataset runs (miga_fast/attacks/run_data.py): a Dataset read by a
DataLoader with worker processes gives the records of the in-memory run; a resumed run
loads only the batches it still has to attack; the short tail is merged the same way
for every kind of data; a shuffling loader is refused; the progress count reads every
rank's log, each batch once."""

import json

import pytest
import torch

from miga_fast.attacks import MIGA, run_folder
from miga_fast.attacks.run_data import RunData, _ranges, merged_tail
from miga_fast.models.classifiers import SmallCNN
from miga_fast.models.denoisers import DnCNN


class Counted(torch.utils.data.Dataset):
    """A map-style dataset of (image, label) that counts the items it hands out."""

    def __init__(self, x, y):
        self.x, self.y, self.loaded = x, y, 0

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        self.loaded += 1
        return self.x[i], int(self.y[i])


class Stream(torch.utils.data.IterableDataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y.tolist()))


def _attack():
    torch.manual_seed(0)
    return MIGA(DnCNN(1, 3, 8).eval(), SmallCNN(1, 10, 8).eval(), steps=2, compile=False)


def _data(rng, n=10):
    return torch.rand(n, 1, 16, 16, generator=rng), torch.randint(0, 10, (n,), generator=rng)


def _records(out):
    return {b: {k: v for k, v in r.items() if k != "seconds"} for b, r in run_folder.read_logs(out).items()}


def test_a_dataset_with_workers_and_an_iterable_give_the_in_memory_records(tmp_path, rng):
    x, y = _data(rng)
    attack = _attack()
    attack.run((x, y), tmp_path / "tensors", batch_size=4, progress=False)
    attack.run(Counted(x, y), tmp_path / "workers", batch_size=4, progress=False, num_workers=2)
    attack.run(Stream(x, y), tmp_path / "iterable", batch_size=4, progress=False)
    loader = torch.utils.data.DataLoader(Counted(x, y), batch_size=4, num_workers=2)
    attack.run(loader, tmp_path / "loader", batch_size=4, progress=False)
    expected = _records(tmp_path / "tensors")
    assert sorted(expected) == [0, 1, 2]
    config = json.loads((tmp_path / "tensors" / "config.json").read_text())
    for name in ("workers", "iterable", "loader"):
        assert _records(tmp_path / name) == expected, name
        assert json.loads((tmp_path / name / "config.json").read_text())["data"] == config["data"], name


def test_a_resumed_run_loads_only_what_it_still_has_to_attack(tmp_path, rng):
    """One pass for the fingerprint, then only the missing batch: the run never reads
    (or holds) the batches it has records of."""
    x, y = _data(rng, 12)
    attack = _attack()
    full = attack.run(Counted(x, y), tmp_path / "run", batch_size=4, progress=False, num_workers=0)
    log = tmp_path / "run" / "results.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:2]) + "\n")  # the last batch's record is lost
    (tmp_path / "run" / "summary.json").unlink()
    data = Counted(x, y)
    again = attack.run(data, tmp_path / "run", batch_size=4, progress=False, num_workers=0)
    assert data.loaded == 12 + 4  # the fingerprint pass, then batch 2 alone
    assert {k: v for k, v in again.items() if k != "images_per_s"} == {
        k: v for k, v in full.items() if k != "images_per_s"
    }
    assert len(log.read_text().splitlines()) == 3


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9])
@pytest.mark.parametrize("min_batch", [1, 2, 3])
def test_the_short_tail_is_merged_alike_for_every_kind_of_data(n, min_batch):
    ranges = _ranges(n, 4, min_batch)
    streamed = [
        b[0].tolist() for b in merged_tail(((torch.arange(a, min(a + 4, n)), None) for a in range(0, n, 4)), min_batch)
    ]
    assert streamed == [list(range(a, b)) for a, b in ranges]
    assert ranges[0][0] == 0 and ranges[-1][1] == n and all(r[1] == s[0] for r, s in zip(ranges, ranges[1:]))
    if len(ranges) > 1:
        assert ranges[-1][1] - ranges[-1][0] >= min(min_batch, 4)


def test_bad_data_is_a_clear_error(tmp_path, rng):
    x, y = _data(rng)
    shuffled = torch.utils.data.DataLoader(Counted(x, y), batch_size=4, shuffle=True)
    with pytest.raises(ValueError, match="shuffle"):
        _attack().run(shuffled, tmp_path / "a", batch_size=4, progress=False)
    with pytest.raises(TypeError, match="`data` must be"):
        _attack().run(42, tmp_path / "b", batch_size=4, progress=False)
    with pytest.raises(ValueError, match="`num_workers`"):
        _attack().run(Counted(x, y), tmp_path / "c", batch_size=4, progress=False, num_workers=-1)
    with pytest.raises(ValueError, match="labels"):
        _attack().run((x, y[:3]), tmp_path / "d", batch_size=4, progress=False)
    with pytest.raises(ValueError, match="empty"):
        _attack().run(Counted(x[:0], y[:0]), tmp_path / "e", batch_size=4, progress=False)


def test_pinned_memory_only_for_a_gpu_run(rng):
    x, y = _data(rng)
    assert not RunData(Counted(x, y), 4).pin_memory
    assert RunData(Counted(x, y), 4, pin_memory=True).pin_memory
    assert RunData((x, y), 4).num_workers == 0 and RunData(Counted(x, y), 4).num_workers >= 1


def test_progress_counts_every_ranks_records_once(tmp_path):
    rec = {"psnr": [1.0], "seconds": 0.1}
    (tmp_path / "results.rank0.jsonl").write_text(
        "".join(json.dumps({"batch": b, "n": 4, **rec}) + "\n" for b in (0, 2)) + '{"batch": 4, "n'
    )
    (tmp_path / "results.rank1.jsonl").write_text(
        "".join(json.dumps({"batch": b, "n": n, **rec}) + "\n" for b, n in ((1, 4), (3, 3), (2, 4)))
    )
    assert run_folder.images_recorded(tmp_path) == 4 + 4 + 4 + 3  # batch 2 once, the cut line not at all

    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    run_folder.wait_for_records(tmp_path, 15, bar, poll_s=0.01)
    assert bar.n == 15
    bar = Bar()
    run_folder.wait_for_records(tmp_path, 16, bar, poll_s=0.01, stall_s=0.1)  # never reached: gives up
    assert bar.n == 15


class Broken(Counted):
    """mixed=False: item 6 cannot be read; mixed=True: items from 2 on have another size."""

    def __init__(self, x, y, mixed):
        super().__init__(x, y)
        self.mixed = mixed

    def __getitem__(self, i):
        if i == 6 and not self.mixed:
            raise ValueError("cannot read image 6.png: truncated file")
        x, y = super().__getitem__(i)
        return (x[:, :8] if self.mixed and i >= 2 else x), y


@pytest.mark.parametrize("workers", [0, 2])
def test_loading_errors_name_the_problem_not_a_worker_traceback(tmp_path, rng, workers):
    x, y = _data(rng, 12)
    with pytest.raises(ValueError, match="cannot read image 6.png: truncated file") as err:
        _attack().run(Broken(x, y, False), tmp_path / "a", batch_size=4, progress=False, num_workers=workers)
    assert "Traceback" not in str(err.value) and "worker" not in str(err.value)
    with pytest.raises(ValueError, match="differ in size.*--size"):
        _attack().run(Broken(x, y, True), tmp_path / "b", batch_size=4, progress=False, num_workers=workers)
