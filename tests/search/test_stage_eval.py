"""StageSearch.evaluate: split B scored in batches of at least EVAL_PIXELS
pixels gives the mIoU of scoring it at the training batch (eval-mode BN, no
graph: every image's scores are its own)."""
import pytest
import torch

from rspnet import data
from rspnet.architecture import Genotype
from rspnet.search import SearchConfig, StageSearch
from rspnet.search.stage import EVAL_PIXELS


@pytest.mark.parametrize("stage", [1, 2])
def test_evaluation_batch_does_not_change_the_score(tmp_path, stage):
    config = SearchConfig(size=(16, 32), batch_size=2, epochs=1, channels=4, layers=2, seed=0)
    dataset = data.SyntheticScenes("train", size=(16, 32), length=24, seed=0)
    cell = None
    if stage == 2:
        cell = Genotype(normal=(("skip_connect", 0, 1), ("sep_conv_3x3", 0, 2), ("max_pool_3x3", 1, 2),
                                ("skip_connect", 1, 3), ("dil_conv_3x3", 2, 3), ("skip_connect", 0, 4),
                                ("avg_pool_3x3", 3, 4)), normal_concat=(1, 2, 3, 4))
    search = StageSearch(stage, config, dataset, data.NUM_CLASSES, tmp_path / f"s{stage}", cell=cell,
                         log=lambda m: None, progress=False)
    assert search.eval_batch == max(2, EVAL_PIXELS // (16 * 32)) > search.local_batch
    # move the BN running statistics off their initial values
    search.model.train()
    with torch.no_grad():
        for i in range(3):
            images = torch.stack([dataset[j][0] for j in range(4 * i, 4 * i + 4)])
            search.model(images)
    big = search.evaluate()
    search.eval_batch = search.local_batch
    small = search.evaluate()
    assert 0 < big == pytest.approx(small, abs=1e-6)


def test_path_norm_evaluates_at_the_training_batch(tmp_path):
    """--path-norm divides each path by an RMS over the batch, in eval mode
    too: its scores depend on the batch, so evaluation keeps the training one."""
    config = SearchConfig(size=(16, 32), batch_size=2, epochs=1, channels=4, layers=2, seed=0, path_norm=True)
    dataset = data.SyntheticScenes("train", size=(16, 32), length=8, seed=0)
    cell = Genotype(normal=(("skip_connect", 0, 1), ("sep_conv_3x3", 0, 2), ("max_pool_3x3", 1, 2),
                            ("skip_connect", 1, 3), ("dil_conv_3x3", 2, 3), ("skip_connect", 0, 4),
                            ("avg_pool_3x3", 3, 4)), normal_concat=(1, 2, 3, 4))
    search = StageSearch(2, config, dataset, data.NUM_CLASSES, tmp_path, cell=cell, log=lambda m: None,
                         progress=False)
    assert search.eval_batch == search.local_batch == 2
