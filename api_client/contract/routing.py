"""Queue names: which queue a job goes to and which queues a worker consumes.

Every name starts with the farm's id (made with its database,
api_client/infra/db/models.Farm), so clients and workers configured against another
database, even on the same Redis, never take this farm's jobs. Then:

- `qfarm.<farm>`: every worker consumes it;
- `.sm89`: a method that needs a newer GPU (FP8 needs compute capability 8.9:
  Ada or Hopper) goes to a queue named for that capability, which only
  workers whose GPU has it consume, so no worker has to refuse such a job;
- `.gpu`: a job that asks for a GPU (`--weights gpu`, `--max-vram`) goes to a
  queue only GPU workers consume, instead of running on a CPU worker that
  would ignore what it asked;
- `.code`: a job that may run the model's own code (--allow-remote-code) goes
  to a queue only workers started with --allow-remote-code consume.
"""

from __future__ import annotations

from collections.abc import Iterable

PREFIX = "qfarm"


def base_queue(farm: str) -> str:
    return f"{PREFIX}.{farm}"


def queue_for(farm: str, min_capability: tuple[int, int] | None, remote_code: bool, gpu: bool = False) -> str:
    name = base_queue(farm)
    if min_capability is not None:
        name += f".sm{min_capability[0]}{min_capability[1]}"
    elif gpu:
        name += ".gpu"
    if remote_code:
        name += ".code"
    return name


def queues_for_worker(farm: str, capability: tuple[int, int] | None, method_capabilities: Iterable[tuple[int, int]],
                      remote_code: bool) -> list[str]:
    """The queues a worker on a GPU of `capability` (None: a CPU) consumes."""
    caps: list[tuple[int, int] | None] = [None]
    caps += sorted({c for c in method_capabilities if capability is not None and capability >= c})
    queues = []
    for code in (False, True) if remote_code else (False,):
        queues.append(queue_for(farm, None, code))
        if capability is not None:
            queues.append(queue_for(farm, None, code, gpu=True))
        queues += [queue_for(farm, c, code) for c in caps[1:]]
    return queues


def is_default(queue: str, farm: str) -> bool:
    """Whether every live worker consumes `queue`."""
    return queue == base_queue(farm)
