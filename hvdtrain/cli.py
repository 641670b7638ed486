"""The ``hvdtrain`` command: ``run`` a training script on N workers, ``doctor`` the install, ``new`` project.

    hvdtrain run -np 4 train.py --epochs 10
    hvdtrain run --config run.yaml -H node1:4,node2:4 train.py
    hvdtrain doctor --require torch,mpi
    hvdtrain new vision-team --framework pytorch --nodes 2 --gpus-per-node 4
    hvdtrain convert-checkpoint checkpoints/ckpt-epoch0003-step00000069.ckpt
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from hvdtrain.launcher.cluster import CPU_WORKERS_PER_NODE
from hvdtrain.launcher.config import CONTROLLERS, COOLDOWN_LIMITS, LAUNCHERS, LOG_LEVELS, coerce
from hvdtrain.launcher.elastic import DEFAULT_COOLDOWN_RANGE
from hvdtrain.launcher.errors import LaunchError

USAGE_ERROR = 2


def _add_run_parser(subparsers: Any) -> None:
    run = subparsers.add_parser(
        "run", help="run a training script on N Horovod workers (horovodrun or mpirun)", allow_abbrev=False,
        description="Launch SCRIPT on N workers; with --elastic, as Horovod elastic training (horovodrun, Gloo). "
                    "Options may also come from --config (YAML, keys are the long option names with underscores); "
                    "the command line wins. See docs/launching.md.")
    run.add_argument("--config", metavar="YAML", help="read options from this YAML file (e.g. run.yaml)")
    run.add_argument("--dry-run", action="store_true", help="print the exact launch command and exit")
    run.add_argument("-np", "--num-proc", dest="np", metavar="N", help="number of worker processes")
    where = run.add_mutually_exclusive_group()
    where.add_argument("-H", "--hosts", metavar="HOST:N,...", help="hosts and slots, e.g. node1:4,node2:4")
    where.add_argument("--hostfile", metavar="FILE", help="file of `host slots=N` or `host:N` lines")
    controller = run.add_mutually_exclusive_group()
    controller.add_argument("--gloo", dest="controller", action="store_const", const="gloo",
                            help="use the Gloo controller (launched by horovodrun)")
    controller.add_argument("--mpi", dest="controller", action="store_const", const="mpi",
                            help="use the MPI controller (default when mpirun is installed)")
    controller.add_argument("--controller", choices=CONTROLLERS, help="same as --gloo / --mpi")
    run.add_argument("--launcher", choices=LAUNCHERS,
                     help="process launcher (default auto: mpirun for MPI, horovodrun for Gloo)")
    tuning = run.add_argument_group("Horovod tuning (as horovodrun's options of the same name)")
    tuning.add_argument("--fusion-threshold-mb", metavar="MB", help="tensor fusion buffer size; 0 disables fusion")
    tuning.add_argument("--cycle-time-ms", metavar="MS", help="delay between tensor fusion cycles")
    tuning.add_argument("--cache-capacity", metavar="N", help="response cache size")
    tuning.add_argument("--timeline-filename", metavar="FILE", help="write a Horovod timeline (JSON) here")
    tuning.add_argument("--timeline-mark-cycles", action="store_true", default=None, help="mark cycles in it")
    tuning.add_argument("--autotune", action="store_true", default=None, help="autotune fusion and cycle time")
    tuning.add_argument("--autotune-log-file", metavar="FILE", help="CSV log of the autotuning trials")
    tuning.add_argument("--no-stall-check", action="store_true", default=None, help="disable the stall check")
    tuning.add_argument("--stall-check-warning-time-seconds", metavar="S", help="warn after S s of stall")
    tuning.add_argument("--stall-check-shutdown-time-seconds", metavar="S", help="shut down after S s of stall")
    tuning.add_argument("--log-level", choices=LOG_LEVELS, type=str.upper, help="Horovod's log level")
    tuning.add_argument("--gloo-timeout-seconds", metavar="S", help="Gloo operations fail after S s (Horovod: 30)")
    _add_elastic_arguments(run)
    net = run.add_argument_group("network and environment")
    net.add_argument("--network-interface", action="append", metavar="NIC",
                     help="interface for worker traffic (repeat, or comma-separate)")
    net.add_argument("-p", "--ssh-port", metavar="PORT", help="ssh port on all hosts")
    net.add_argument("-i", "--ssh-identity-file", metavar="FILE", help="ssh private key for all hosts")
    net.add_argument("-x", "--env", action="append", metavar="NAME[=VALUE]",
                     help="pass an environment variable to the workers (repeatable)")
    net.add_argument("--mpi-args", metavar="ARGS", help='extra mpirun arguments, e.g. "--mca btl self,tcp"')
    net.add_argument("--skip-host-check", action="store_true", default=None,
                     help="launch without first checking that every remote host answers")
    run.add_argument("script", help="the training script (run with this Python)")
    run.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments for the script")


def _add_elastic_arguments(run: Any) -> None:
    low, high = DEFAULT_COOLDOWN_RANGE
    elastic = run.add_argument_group(
        "elastic training (horovodrun on Gloo; workers may fail, leave and join while the job runs)")
    elastic.add_argument("--elastic", action="store_true", default=None,
                         help="launch Horovod elastic training; the script must use hvd.elastic.run")
    elastic.add_argument("--min-np", "--min-num-proc", dest="min_np", metavar="N",
                         help="go on while at least N workers are left (default 1; horovodrun's own default is -np)")
    elastic.add_argument("--max-np", "--max-num-proc", dest="max_np", metavar="N",
                         help="grow to at most N workers (default -np; on this machine alone: the GPUs, else the "
                              "usable CPUs); -np defaults to it (at most the slots of -H/--hostfile)")
    elastic.add_argument("--host-discovery-script", metavar="FILE",
                         help="executable printing the available hosts, one `host:slots` per line (default: the "
                              "hostfile, read again on every call; the -H hosts; or this machine, one name per slot)")
    elastic.add_argument("--slots-per-host", metavar="N",
                         help="slots of a host the discovery script prints without `:slots` (default 1)")
    elastic.add_argument("--elastic-timeout", metavar="S", help="wait S s for enough workers after a change "
                                                                "(Horovod: 600)")
    elastic.add_argument("--reset-limit", metavar="N", help="stop the job after N resets (Horovod: no limit)")
    elastic.add_argument("--blacklist-cooldown-range", nargs=2, metavar=("LOW", "HIGH"),
                         help=f"a host whose worker failed is left out LOW to HIGH s, then tried again (default "
                              f"{low} {high}; Horovod allows {COOLDOWN_LIMITS[0]} to {COOLDOWN_LIMITS[1]})")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hvdtrain", description=__doc__.split("\n")[0], allow_abbrev=False)
    from hvdtrain import __version__

    parser.add_argument("--version", action="version", version=f"hvdtrain {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True,
                                       metavar="{run,doctor,new,convert-checkpoint}")
    _add_run_parser(subparsers)
    doctor = subparsers.add_parser("doctor", help="versions, what Horovod was built with, known problems")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument("--require", metavar="NAMES",
                        help="comma-separated: torch,tensorflow,mpi,gloo,nccl; exit 1 if one is missing")
    new = subparsers.add_parser("new", help="create a team project (train.py, configs, Dockerfile, jobs)")
    new.add_argument("name", help="project name: lower-case letters, digits and dashes")
    new.add_argument("--framework", choices=("pytorch", "tensorflow"), default="pytorch")
    new.add_argument("--directory", metavar="DIR", help="where to create it (default: ./NAME)")
    shape = new.add_argument_group("cluster shape (sizes slurm/train.sbatch and k8s/mpijob.yaml)")
    shape.add_argument("--nodes", type=int, default=1, metavar="N", help="nodes per job (default 1)")
    shape.add_argument("--gpus-per-node", type=int, default=0, metavar="G",
                       help="GPUs per node, one worker each; 0 for CPU clusters (default 0)")
    shape.add_argument("--workers-per-node", type=int, metavar="W",
                       help=f"workers per node on CPU clusters (default {CPU_WORKERS_PER_NODE})")
    _add_convert_parser(subparsers)
    return parser


def _add_convert_parser(subparsers: Any) -> None:
    convert = subparsers.add_parser(
        "convert-checkpoint", help="rewrite hvdtrain 0.1.0 checkpoints (pickles) in the safe format",
        description="Unpickle checkpoints written by hvdtrain 0.1.0 and write each as NAME.safe.ckpt beside it, "
                    "in the format resume loads without running code. Unpickling runs any code stored in a "
                    "file: convert only checkpoints you trust. The old files are left as they are.")
    convert.add_argument("checkpoints", nargs="+", metavar="CKPT", help="hvdtrain 0.1.0 checkpoint files")
    convert.add_argument("-o", "--output", metavar="FILE",
                         help="where to write the converted checkpoint (one CKPT only; default NAME.safe.ckpt)")
    convert.add_argument("-y", "--yes", action="store_true",
                         help="I trust these files: convert without asking (needed when stdin is not a terminal)")


_NOT_OPTIONS = {"command", "config", "dry_run", "script", "script_args"}


def cli_values(args: argparse.Namespace) -> dict[str, Any]:
    """The ``run`` options given on the command line, validated like config values."""
    values = {}
    for key, value in vars(args).items():
        if key in _NOT_OPTIONS or value is None:
            continue
        if key in ("network_interface", "env"):
            value = [part for item in value for part in (item.split(",") if key == "network_interface" else [item])]
        values[key] = coerce(key, value, "command line")
    return values


def _run(args: argparse.Namespace) -> int:
    from hvdtrain.launcher.run import plan_job, run_job

    plan = plan_job(cli_values(args), args.script, args.script_args, config_path=args.config,
                    check_hosts=not args.dry_run)
    return run_job(plan, dry_run=args.dry_run)


def _doctor(args: argparse.Namespace) -> int:
    from hvdtrain.launcher.checks import parse_requirements
    from hvdtrain.launcher.doctor import collect, format_report

    try:
        require = parse_requirements(args.require)
    except ValueError as err:
        raise LaunchError(str(err)) from err
    report = collect(require)
    print(json.dumps(report, indent=2) if args.json else format_report(report), flush=True)
    return 0 if report["ok"] else 1


def _new(args: argparse.Namespace) -> int:
    from hvdtrain.launcher.cluster import ClusterShape
    from hvdtrain.launcher.scaffold import ScaffoldError, create_project

    try:
        shape = ClusterShape(args.nodes, args.gpus_per_node, args.workers_per_node)
        target = create_project(args.name, args.framework, args.directory, shape)
    except ScaffoldError as err:
        raise LaunchError(str(err)) from err
    print(f"created {args.framework} project {args.name!r} in {target} for {shape.describe()}\n"
          f"next: cd {target} && make train        (2 workers on this machine)\n"
          f"  or: sbatch {target}/slurm/train.sbatch\n"
          f"  or: kubectl apply -f {target}/k8s/pvc.yaml -f {target}/k8s/mpijob.yaml")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from hvdtrain.launcher.convert import AlreadySafeError, convert_checkpoint, read_legacy, trust_warning

    if args.output and len(args.checkpoints) > 1:
        raise LaunchError("--output takes one checkpoint; convert several without it (each to NAME.safe.ckpt)")
    for path in args.checkpoints:
        try:
            read_legacy(path)  # missing, damaged or already safe: say so before any warning or question
        except AlreadySafeError as note:
            print(f"{note}; skipped", flush=True)
            continue
        print(trust_warning(path), file=sys.stderr, flush=True)
        if not args.yes and not _confirmed(path):
            raise LaunchError(f"{path} was not converted: run again with --yes if you trust it")
        target = convert_checkpoint(path, args.output)
        print(f"wrote {target} in the safe format; {path} is unchanged. Resume from {target} or its directory.",
              flush=True)
    return 0


def _confirmed(path: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return input(f"Unpickle {path}? [y/N] ").strip().lower() in ("y", "yes")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hvdtrain`` command; returns the exit status.

    Bad input (unknown script, too many workers for the hosts, a broken hostfile or config)
    prints one message on stderr and returns 2. ``run`` returns the job's exit status.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else USAGE_ERROR
    handlers = {"run": _run, "doctor": _doctor, "new": _new, "convert-checkpoint": _convert}
    try:
        return handlers[args.command](args)
    except LaunchError as err:
        print(f"hvdtrain {args.command}: error: {err}", file=sys.stderr, flush=True)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
