"""Command line: ``xlstm-train --config <preset or file.yaml> [key=value ...]`` (also ``python -m xlstm_jax.train``).

Distributed runs: on TPU pods ``--distributed auto`` lets JAX find its peers; on GPU
or CPU clusters give ``--coordinator host:port --num-processes N --process-id i``
(or set them through the usual JAX environment variables) on every process.
``--cpu-devices N`` splits a CPU host into N devices (tests, laptops); ``--cpu-devices auto`` makes one
per usable core, so that the default data axis runs one replica per core (on a 2-core CPU the
benchmark step takes about 0.7x the time of one device using both cores: ``benchmarks/RESULTS.md``).
On the CPU the process maps its buffers with transparent huge pages where the system has them, and
keeps freed host memory for reuse elsewhere (``--host-memory``, ``host_memory.py``): XLA's CPU runtime
maps each step's buffers afresh, a page fault per 4 KiB page otherwise. Huge pages are a glibc tunable
read at start-up, so ``xlstm-train`` then starts itself again with ``GLIBC_TUNABLES`` set.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="xlstm-train", description="Train an xLSTM language model.")
    p.add_argument("--config", help="a preset name (see --list-configs) or a YAML file (may list 'defaults' to layer)")
    p.add_argument("--list-configs", action="store_true", help="list the presets shipped with the package and exit")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=100 optim.lr=3e-4")
    p.add_argument("--distributed", choices=("none", "auto"), default="none",
                   help="auto: jax.distributed.initialize() with cluster auto-detection (TPU pods, SLURM)")  # fmt: skip
    p.add_argument("--coordinator", help="host:port of process 0, for an explicit multi-process run")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    p.add_argument("--cpu-devices", help="number of CPU devices to expose (CPU only): an integer, or 'auto' for one "
                   "per usable core (the data axis then runs one replica per core)")  # fmt: skip
    p.add_argument("--host-memory", default="auto", help="huge-pages: glibc maps large blocks with transparent "
                   "huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1; the process starts itself again to set it): "
                   "a CPU step faults once per 2 MiB of its buffers instead of per 4 KiB; keep: glibc's malloc keeps "
                   "freed memory for reuse (the process keeps its peak memory; one malloc lock); release: malloc as "
                   "it is; auto (default): on a CPU run, huge-pages where the system has them, else keep")  # fmt: skip
    p.add_argument("--resume", choices=("auto", "never", "must"), default="auto",
                   help="auto: continue from the newest checkpoint in train.out_dir if any; never: refuse a folder "
                   "with checkpoints; must: refuse one without")  # fmt: skip
    p.add_argument("--progress", choices=("auto", "bar", "lines", "off"), default="auto",
                   help="a progress bar (auto: when stdout is a terminal), plain lines, or nothing")  # fmt: skip
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def cpu_device_count(value: str | int | None) -> int | None:
    """``--cpu-devices``: None, a positive integer, or ``"auto"`` (one device per usable core)."""
    if value is None or isinstance(value, int):
        count = value
    elif value == "auto":
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    else:
        try:
            count = int(value)
        except ValueError:
            count = value
    if count is not None and not (isinstance(count, int) and not isinstance(count, bool) and count >= 1):
        raise ValueError(f"--cpu-devices must be an integer >= 1 or 'auto', got {value!r}")
    return count


def init_distributed(args) -> None:
    import jax

    if args.cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    if args.coordinator:
        if args.num_processes is None or args.process_id is None:
            raise SystemExit("--coordinator needs --num-processes and --process-id")
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    elif args.distributed == "auto":
        jax.distributed.initialize()


def main(argv=None) -> int:
    """The ``xlstm-train`` command; ``argv`` None reads the process's own command line, which also
    lets ``--host-memory huge-pages`` start the process again (``host_memory.apply``)."""
    command_line = argv is None
    args = parse_args(argv)
    if args.list_configs:
        from xlstm_jax.configs import list_presets

        print("\n".join(list_presets()))
        return 0
    if not args.config:
        print("error: --config is required: a preset name (xlstm-train --list-configs) or a YAML file", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    from xlstm_jax._validation import check_int

    from . import host_memory

    try:
        args.cpu_devices = cpu_device_count(args.cpu_devices)
        check_int("--num-processes", args.num_processes, 1, optional=True)
        check_int("--process-id", args.process_id, 0, optional=True)
        memory_mode = host_memory.resolve(args.host_memory, args.cpu_devices)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from .config import ConfigError, apply_overrides, load_yaml, to_json

    try:
        raw = apply_overrides(load_yaml(args.config), args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_json(raw))
        return 0
    host_memory.apply(memory_mode, may_restart=command_line)  # before JAX starts its threads
    init_distributed(args)
    from .api import fit
    from .errors import TrainingError

    try:
        result = fit(raw, resume=args.resume, progress=None if args.progress == "auto" else args.progress)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    import jax

    if jax.process_index() == 0:
        print(json.dumps({k: v for k, v in result.summary.items() if k != "config"}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
