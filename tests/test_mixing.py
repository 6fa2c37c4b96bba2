"""MixUp and CutMix (cifarlab.data.mixing): the pair rule, the laws of the draws, the same mixing on both data paths,
and the one-line refusal of a batch share without whole pairs."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from cifarlab.config import load_config
from cifarlab.data import build_data
from cifarlab.data.mixing import beta_sample, mix, pair_keys
from cifarlab.errors import UsageError
from cifarlab.run import engine

from conftest import CONFIGS

pytestmark = pytest.mark.unit


def _constant(values: list[float], side: int = 4) -> torch.Tensor:
    """Images (N, 3, side, side), image i filled with values[i]."""
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 3, side, side).clone()


def test_mixup_blends_positions_2k_and_2k1_with_one_weight_per_pair_drawn_from_their_indices() -> None:
    images, labels, indices = _constant([0.0, 1.0, 2.0, 3.0]), torch.tensor([0, 1, 2, 0]), torch.tensor([5, 9, 2, 7])
    mixed, targets = mix(images, labels, indices, 3, 1, 0.4, 0.0, 3)
    keys = pair_keys(indices)
    assert keys.tolist() == [6 * 2**31 + 9, 3 * 2**31 + 7]
    a, b = beta_sample(3, 1, keys, 1, 0.4).float().tolist()
    # By hand: pair (0, 1) weighs image 0 by a and image 1 by 1 - a; pair (2, 3) likewise with b; labels too.
    expected = [a * 0 + (1 - a) * 1, a * 1 + (1 - a) * 0, b * 2 + (1 - b) * 3, b * 3 + (1 - b) * 2]
    torch.testing.assert_close(mixed, _constant(expected))
    torch.testing.assert_close(targets, torch.tensor([[a, 1 - a, 0], [1 - a, a, 0], [1 - b, 0, b], [b, 0, 1 - b]]))
    # A pair's draws follow its indices, not its place in the batch (so not the process count either)...
    swapped, swapped_targets = mix(images[[2, 3, 0, 1]], labels[[2, 3, 0, 1]], indices[[2, 3, 0, 1]], 3, 1, 0.4, 0.0, 3)
    assert torch.equal(swapped, mixed[[2, 3, 0, 1]]) and torch.equal(swapped_targets, targets[[2, 3, 0, 1]])
    # ... and change with the epoch and the seed.
    assert not torch.equal(mix(images, labels, indices, 3, 2, 0.4, 0.0, 3)[0], mixed)
    assert not torch.equal(mix(images, labels, indices, 4, 1, 0.4, 0.0, 3)[0], mixed)


def test_cutmix_swaps_one_box_between_the_pair_and_weighs_the_labels_by_its_area() -> None:
    images, labels = _constant([0.0, 1.0] * 50, side=32), torch.tensor([0, 1] * 50)
    mixed, targets = mix(images, labels, torch.arange(100), 0, 0, 0.0, 1.0, 2)
    first, second = mixed[0::2, 0], mixed[1::2, 0]
    assert torch.equal(first + second, torch.ones_like(first))  # each pixel from one image, the other one's swapped
    pasted = first.mean(dim=(1, 2))  # the share of image 0's pixels that came from image 1
    torch.testing.assert_close(targets[0::2, 1], pasted)
    torch.testing.assert_close(targets[1::2, 0], pasted)
    assert float(pasted.max()) < 1 and len(set(pasted.tolist())) > 20


def test_the_weights_follow_beta_and_a_fair_coin_picks_mixup_or_cutmix() -> None:
    keys = pair_keys(torch.arange(8000))
    for alpha in (0.2, 1.0, 2.0):
        assert stats.kstest(beta_sample(0, 0, keys, 1, alpha).numpy(), stats.beta(alpha, alpha).cdf).pvalue > 1e-3
    images, labels = _constant([0.0, 1.0] * 1000), torch.tensor([0, 1] * 1000)
    mixed = mix(images, labels, torch.arange(2000), 0, 0, 1.0, 1.0, 2)[0][0::2, 0]
    blended = (mixed.amin(dim=(1, 2)) > 0) & (mixed.amax(dim=(1, 2)) < 1)  # MixUp: no pixel of either image left
    assert 0.45 < float(blended.float().mean()) < 0.55


def test_both_data_paths_mix_the_same_images_the_same_way() -> None:
    overrides = ["data.augment=none", "data.train_size=16", "data.test_size=4", "train.batch_size=8",
                 "data.mixup=0.4", "data.cutmix=1.0", "data.num_workers=0", "logging.wandb.mode=disabled"]
    config = load_config(str(CONFIGS / "smoke.yaml"), overrides)
    accelerator = engine.build_accelerator(config)
    batches = []
    for loader in ("tensor", "torchvision"):
        data = build_data(load_config(str(CONFIGS / "smoke.yaml"), [*overrides, f"data.loader={loader}"]).data, 0)
        data.prepare(accelerator, 8, 4)
        batches.append(list(data.train_batches(1)))
    for (images_a, targets_a), (images_b, targets_b) in zip(*batches, strict=True):
        assert targets_a.shape == (8, 10) and not torch.equal(targets_a, targets_a.round())  # soft
        torch.testing.assert_close(images_a, images_b, atol=1e-5, rtol=0)
        torch.testing.assert_close(targets_a, targets_b)


def test_a_process_share_without_whole_pairs_is_refused_in_one_line() -> None:
    engine.check_pairs(0.0, 12, 4)  # off: any share
    engine.check_pairs(1.0, 16, 4)
    with pytest.raises(UsageError, match=r"train\.batch_size=12 \(3\) must be even; use a multiple of 8$"):
        engine.check_pairs(1.0, 12, 4)
