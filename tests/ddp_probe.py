"""Test helper, not a test: training runs under ``torchrun`` that report what every rank saw.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_probe.py PROBE_DIR CONFIG_JSON RUN_DIR [CONFIG_JSON RUN_DIR ...]

For each (CONFIG_JSON, RUN_DIR) pair in turn (several runs share one launch, which is the slow
part), each rank calls :func:`heterolora_core.training.trainer.run_training` with the RunConfig in
CONFIG_JSON and RUN_DIR as ``--out``, exactly as ``python -m heterolora_core train`` does, and then
writes ``PROBE_DIR/run<i>-rank<r>.pt`` with:

* ``history``: every reallocation of this rank: step, enabled set, the scores after the
  cross-rank reduction, and the type of the model the Trainer was training at that moment
  (``DistributedDataParallel`` once the DDP wrapper is built);
* ``local_scores``: this rank's own scores before the reduction (one dict per reallocation);
* ``adapters``: every candidate's ``lora_A`` / ``lora_B`` at the end; ``head``: the head's weights;
* ``world_size`` and the distributed backend.

Nothing in the engine is changed: the probe substitutes a thin subclass of ``Reallocator`` that
remembers its instance (``methods.heterolora`` builds it when the run's method is prepared), a thin
subclass of ``Trainer`` (``training.trainer._train`` builds it) to reach the Trainer, and wraps
``training.trainer.mean_across_ranks`` (handed to the method as its score reduction) to see the
scores before and after the all-reduce.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(probe_dir: str, pairs: list[str]) -> None:
    import torch
    import torch.distributed as dist

    import heterolora_core.methods.heterolora as heterolora
    import heterolora_core.training.trainer as training
    from heterolora_core.adapters.modules import head_module
    from heterolora_core.training.run_config import RunConfig

    seen: dict = {}
    reduce = training.mean_across_ranks

    class ProbeTrainer(training.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen["trainer"] = self

    class ProbeReallocator(heterolora.Reallocator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen["reallocator"] = self

        def reallocate(self, step, batches=None):
            trainer = seen.get("trainer")
            wrapped = getattr(trainer, "model_wrapped", None) if trainer is not None else None
            seen["wrapped_types"].append(type(wrapped).__name__)
            return super().reallocate(step, batches)

    def probe_reduce(scores):
        seen["local_scores"].append(dict(scores))
        return reduce(scores)

    training.Trainer = ProbeTrainer
    heterolora.Reallocator = ProbeReallocator
    training.mean_across_ranks = probe_reduce

    for index in range(len(pairs) // 2):
        config_path, run_dir = pairs[2 * index], pairs[2 * index + 1]
        seen.clear()
        seen.update(trainer=None, reallocator=None, local_scores=[], wrapped_types=[])
        config = RunConfig.from_dict(json.loads(Path(config_path).read_text()))
        training.run_training(config, run_dir, progress=False)

        r = seen["reallocator"]
        model = seen["trainer"].model
        rank = dist.get_rank() if dist.is_initialized() else 0
        dump = {
            "rank": rank,
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "history": [{"step": h.step, "enabled": list(h.enabled), "scores": dict(h.scores), "model_type": t}
                        for h, t in zip(r.history, seen["wrapped_types"])],
            "local_scores": seen["local_scores"],
            "adapters": {m.name: {"A": m.lora_A.detach().cpu().clone(), "B": m.lora_B.detach().cpu().clone()}
                         for m in r.adapters.modules_in_order()},
            "head": {k: v.detach().cpu().clone() for k, v in head_module(model).state_dict().items()},
        }
        Path(probe_dir).mkdir(parents=True, exist_ok=True)
        torch.save(dump, Path(probe_dir) / f"run{index}-rank{rank}.pt")
        if dist.is_initialized():
            dist.barrier()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if len(sys.argv) < 4 or len(sys.argv) % 2:
        sys.exit("usage: ddp_probe.py PROBE_DIR CONFIG_JSON RUN_DIR [CONFIG_JSON RUN_DIR ...]")
    main(sys.argv[1], sys.argv[2:])
