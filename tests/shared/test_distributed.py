"""The data-parallel bookkeeping: the rank's rows of a global draw are the rows of its clips,
and a run resumed on another number of processes keeps its global batch and stream position."""

from __future__ import annotations

import numpy as np

from shared.app.distributed import Distributed, regroup, shard, stream_start
from shared.config import DataConfig
from shared.data.dataset import BatchIterator, ClipDataset
from shared.data.toy import make_toy_dataset


def test_shard_pairs_each_clip_with_its_row_of_the_global_draw(tmp_path):
    make_toy_dataset(tmp_path, n=12, num_prompts=3, num_frames=4, height=36, width=64,
                     progress=False)
    data = ClipDataset(DataConfig(data_dir=str(tmp_path), num_frames=2, image_size=8,
                                  val_fraction=0.0), split="train", progress=False)
    one = BatchIterator(data, 4, seed=3, prefetch=1, epochs=1)
    global_batches = list(one.index_batches())
    for rank in range(2):
        world = Distributed(rank, 2)
        mine = BatchIterator(data, 2, seed=3, prefetch=1, epochs=1, rank=rank, world_size=2)
        for global_rows, rows in zip(global_batches, mine.index_batches(), strict=True):
            # the draw for global row j belongs to clip global_rows[j]
            np.testing.assert_array_equal(shard(global_rows, world), rows)


def test_regroup_keeps_the_global_batch_when_it_divides():
    assert regroup(2, 1, 2, Distributed(0, 1)) == (2, None)   # 2 ranks x 2 -> 1 x 2 x 2
    assert regroup(2, 4, 1, Distributed(0, 4)) == (1, None)   # 1 x 2 x 4 -> 4 ranks x 2
    assert regroup(2, 3, 3, Distributed(0, 3)) == (3, None)   # same world: unchanged
    accum, note = regroup(2, 1, 3, Distributed(0, 2))         # 6 clips on 2 ranks of 2: no
    assert accum == 1 and "6 clips" in note and "4 clips" in note


def test_stream_start_counts_clips_across_world_sizes():
    assert stream_start(5, 4, 2, Distributed(0, 1)) == 10   # one process: step x accumulation
    assert stream_start(5, 4, 2, Distributed(1, 2)) == 5    # two ranks: half the batches each
    assert stream_start(5, 4, 4, Distributed(0, 1)) == 5
