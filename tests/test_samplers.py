"""The resumable sampler: DistributedSampler's order for each epoch, minus the batches a resumed run has done."""

from torch.utils.data import DistributedSampler

from frelon.train.samplers import ResumableSampler


def sampler(size: int, batch: int, rank: int = 0, replicas: int = 1, seed: int = 0) -> ResumableSampler:
    inner = DistributedSampler(range(size), num_replicas=replicas, rank=rank, shuffle=True, seed=seed)
    return ResumableSampler(inner, batch)


def test_each_epoch_is_a_new_shuffle_of_every_index_and_the_same_epoch_the_same_one():
    s = sampler(40, 8)
    orders = []
    for epoch in (0, 1, 2, 1):
        s.set_epoch(epoch)
        orders.append(list(s))
    assert all(sorted(order) == list(range(40)) for order in orders)
    assert orders[0] != orders[1] != orders[2] and orders[0] != orders[2]
    assert orders[3] == orders[1]
    assert orders[0] != list(range(40))  # shuffled


def test_a_resumed_epoch_skips_the_batches_done_and_gives_the_rest_in_the_same_order():
    s = sampler(37, 8)
    s.set_epoch(3)
    whole = list(s)
    assert len(s) == 37 and s.batches_per_epoch == 5  # 4 full batches and one of 5
    s.set_epoch(3, skip_batches=2)
    assert list(s) == whole[16:] and len(s) == 21
    s.set_epoch(3, skip_batches=5)
    assert list(s) == [] and len(s) == 0
    s.set_epoch(4)
    assert len(s) == 37  # a new epoch skips nothing


def test_ranks_share_each_epochs_order_and_split_it_without_overlap():
    ranks = [sampler(24, 4, rank, 3) for rank in range(3)]
    for epoch in (0, 1):
        shards = []
        for s in ranks:
            s.set_epoch(epoch)
            shards.append(list(s))
        assert all(len(shard) == 8 for shard in shards) and ranks[0].batches_per_epoch == 2
        assert sorted(i for shard in shards for i in shard) == list(range(24))
    assert sampler(24, 4, 0, 3, seed=1).inner.seed == 1


def test_before_any_set_epoch_it_gives_the_whole_first_epoch():
    s = sampler(20, 8)
    first = list(s)
    assert len(s) == 20 and sorted(first) == list(range(20))
    s.set_epoch(0)
    assert list(s) == first
