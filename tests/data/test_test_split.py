"""The test split of ShardDataModule: every sample exactly once over all ranks, in order, whatever the counts."""

from __future__ import annotations

import pytest

from datamodules.shard_datamodule import TEST_SPLIT, ShardDataModule
from datamodules.shard_plan import PlanSettings, rank_order, rank_span
from datamodules.shards import DatasetError
from tests.data.test_shard_loading import numbered, shapes, write_plain_tar


class FakeTrainer:
    def __init__(self, rank: int, world: int):
        self.global_rank, self.world_size, self.current_epoch = rank, world, 0


def read_keys(dm: ShardDataModule) -> list[str]:
    return [k for batch in dm.test_dataloader() for k in batch["__key__"]]


@pytest.mark.parametrize("total,world", [(10, 3), (7, 2), (2, 3), (3, 3), (12, 4), (1, 1)])
def test_rank_spans_cover_every_sample_once(total, world):
    spans = [rank_span(total, r, world, every_sample=True) for r in range(world)]
    assert spans[0][0] == 0 and spans[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no gap, no overlap
    lengths = [end - start for start, end in spans]
    assert max(lengths) - min(lengths) <= 1
    # the training plan still cuts every rank to the same length
    assert {rank_span(total, r, world)[1] - rank_span(total, r, world)[0] for r in range(world)} == {total // world}


def test_rank_order_every_sample_keeps_the_remainder():
    settings = PlanSettings(batch_size=4, seed=0, shuffle=False, shuffle_buffer=1, drop_last=False, every_sample=True)
    orders = [rank_order([5, 6], r, 3, 0, settings).tolist() for r in range(3)]
    assert sorted(x for o in orders for x in o) == list(range(11))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_test_loader_reads_every_sample_exactly_once(tmp_path, world):
    data = shapes(tmp_path, num=23, per_shard=5)  # 5 shards, uneven split over ranks and batches
    seen = []
    for rank in range(world):
        dm = ShardDataModule(test=str(data), batch_size=4, num_workers=0, verify="size")
        dm.trainer = FakeTrainer(rank, world)
        dm.setup("test")
        keys = read_keys(dm)
        assert keys == sorted(keys)  # in dataset order, unshuffled
        seen += keys
    assert len(seen) == 23 and len(set(seen)) == 23


def test_a_validation_set_named_test_is_not_the_test_split(tmp_path):
    data = shapes(tmp_path, num=8, per_shard=8)
    dm = ShardDataModule(val={"test": str(data)}, batch_size=4, num_workers=0, verify="size")
    dm.setup("validate")
    assert "test" in dm.sources and TEST_SPLIT not in dm.sources
    with pytest.raises(DatasetError, match="no test data: set data.params.test"):
        dm.test_dataloader()


def test_test_split_needs_local_indexed_shards(tmp_path):
    tar = write_plain_tar(tmp_path / "a.tar", numbered(0, 4))
    dm = ShardDataModule(test=f"pipe:cat {tar}", test_index=None, batch_size=2, num_workers=0)
    with pytest.raises(DatasetError):
        dm.setup("test")
        dm.test_dataloader()


def test_fewer_test_samples_than_ranks_is_an_error_naming_the_fix(tmp_path):
    data = shapes(tmp_path, num=2, per_shard=2)
    dm = ShardDataModule(test=str(data), batch_size=4, num_workers=0, verify="size")
    dm.trainer = FakeTrainer(0, 3)
    dm.setup("test")
    with pytest.raises(DatasetError, match="2 test sample\\(s\\) cannot give each of 3 rank\\(s\\) one; run the test on at "
                                           "most 2 rank"):
        dm.test_dataloader()
