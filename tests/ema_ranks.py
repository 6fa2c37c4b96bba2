"""Run on 2 gloo processes (``accelerate launch --multi_gpu --num_processes 2 tests/ema_ranks.py``): each rank
trains convnet_bn on its own images, so each rank's EMA holds its own BatchNorm statistics; Learner.sync_average
makes them their mean over ranks, the same on both (tests/test_engine.py)."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import nn

from cifarlab.config import ModelConfig
from cifarlab.models import build_model
from cifarlab.run import engine


def statistics(ema: engine.WeightAverage) -> torch.Tensor:
    return torch.cat([b.reshape(-1) for b in ema.module.buffers() if b.dtype.is_floating_point])


def main() -> None:
    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="convnet_bn"), 10)
    ema = engine.build_ema(model, 0.5, accelerator.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    learner = engine.Learner(accelerator, model, optimizer, scheduler, nn.CrossEntropyLoss(), ema)
    torch.manual_seed(1 + accelerator.process_index)  # each rank its own images
    for _ in range(2):
        learner.step(torch.randn(4, 3, 16, 16) * (1 + accelerator.process_index), torch.randint(10, (4,)))
    before = accelerator.gather(statistics(ema)[None])
    assert not torch.allclose(before[0], before[1]), "each rank's EMA statistics are its own"
    learner.sync_average()
    after = accelerator.gather(statistics(ema)[None])
    torch.testing.assert_close(after[0], before.mean(dim=0))
    assert torch.equal(after[0], after[1])
    accelerator.print("EMA statistics averaged over ranks")
    engine.leave(accelerator)


if __name__ == "__main__":
    main()
