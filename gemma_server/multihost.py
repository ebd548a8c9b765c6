"""Multi-host slices: joining the slice, and the processes other than 0.

Every process of a slice calls `join_slice` before anything else touches JAX; the mesh of
one model then spans every device of the slice. Process 0 goes on as a normal server (it
announces each device step, server.py / engine/lockstep.py); the others run `follow`: no HTTP,
the same model compiled the same way, replaying process 0's steps.
"""

from __future__ import annotations

import logging

from gemma_server.errors import ConfigurationError
from gemma_server.lora import LoraAdapter
from gemma_server.settings import ServerSettings

log = logging.getLogger("gemma_server")


def join_slice(settings: ServerSettings) -> None:
    """Multi-host: join the slice's processes (before anything else touches JAX); the mesh
    of one model then spans every device of the slice."""
    import jax

    from gemma_server.model import sharding

    assert settings.num_processes is not None and settings.process_id is not None
    assert settings.coordinator_address is not None
    sharding.initialize_processes(settings.coordinator_address, settings.num_processes,
                                  settings.process_id)
    devices = len(jax.devices())
    if settings.tensor_parallel != devices:
        raise ConfigurationError(
            f"a multi-host slice serves one model over all its {devices} devices: set "
            f"tensor_parallel to {devices} (it is {settings.tensor_parallel})")
    log.info("process %d of %d in the slice; %d devices in all, %d here",
             settings.process_id, settings.num_processes, devices, len(jax.local_devices()))


def follow(settings: ServerSettings, adapters: list[LoraAdapter]) -> int:
    """Processes 1..N-1 of a slice: no HTTP. The same model on the same mesh, compiled the
    same way, replaying each step process 0 announces (engine/lockstep.py) until it says
    stop (0) or goes away (1). `adapters` (from the preflight) size the LoRA stacks."""
    import jax

    from gemma_server.engine.executor import Executor
    from gemma_server.engine.lockstep import STOP, Follower, lockstep_address
    from gemma_server.loading import load_model
    from gemma_server.model import sharding

    assert settings.coordinator_address is not None
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        model = load_model(settings.checkpoint, settings.dtype, quantize=settings.quantize)
    executor = Executor(model.checkpoint.params, model.checkpoint.config,
                        settings.engine_config(settings.lora_capacity(len(adapters))),
                        vocab_limit=model.tokenizer.vocab_size,
                        mesh=sharding.make_mesh(settings.tensor_parallel))
    del model
    executor.warm_up()
    log.info("warm; following process 0 at %s", settings.coordinator_address)
    follower = Follower(*lockstep_address(settings.coordinator_address))
    templates = executor.step_templates()
    try:
        while True:
            op, key, args = follower.receive(templates)
            if op == STOP:
                log.info("process 0 stopped: exiting")
                return 0
            executor.replay(op, key, args)
    except ConnectionError as exc:
        log.error("lost process 0: %s", exc)
        return 1
    finally:
        follower.close()
