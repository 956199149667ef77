"""Which queue a job goes to and which queues a worker consumes.

Every worker consumes `qfarm`. A method that needs a newer GPU (FP8 needs
compute capability 8.9: Ada or Hopper) goes to a queue named for that
capability, which only workers whose GPU has it consume, so such a job never
lands on a worker that would have to refuse it.
"""

from __future__ import annotations

DEFAULT_QUEUE = "qfarm"


def capability_queue(capability: tuple[int, int]) -> str:
    return f"{DEFAULT_QUEUE}.sm{capability[0]}{capability[1]}"


def queue_for(method) -> str:
    cap = method.min_capability
    return DEFAULT_QUEUE if cap is None else capability_queue(cap)


def queues_for_device(capability: tuple[int, int] | None) -> list[str]:
    from worker import methods

    needed = sorted({m.min_capability for m in map(methods.get, methods.names()) if m.min_capability})
    return [DEFAULT_QUEUE] + [capability_queue(c) for c in needed if capability is not None and capability >= c]
