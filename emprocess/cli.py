"""``emprocess``: run a DAG run locally, make the sample, run one stage's worker, show status, write a run's
report, serve outputs; deploy, administer buckets and a source's runs (``admin``, ``runs``)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from contextlib import nullcontext
from pathlib import Path

from emprocess.errors import ConfError, is_bad_input
from emprocess.workflow import WIDTHS


def _load_conf(path: str) -> dict:
    try:
        return json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise ConfError(f"conf file {path} does not exist") from None
    except OSError as err:  # a folder, not allowed to read it
        raise ConfError(f"conf file {path} cannot be read: {err.strerror}") from None
    except ValueError as err:  # not JSON, or not UTF-8 (nor UTF-16 or -32)
        raise ConfError(f"conf file {path} is not valid JSON: {err}") from None


def cmd_sample(args) -> int:
    from emprocess.sample import write_sample

    conf = write_sample(args.dir, size=args.size, n_slices=args.slices, seed=args.seed)
    print(f"sample stack written: {conf['source']} ({conf['minz']}..{conf['maxz']}); "
          f"conf: {Path(args.dir) / 'conf.json'}")
    return 0


def exit_on_termination() -> None:
    """Make SIGTERM and SIGHUP end this process through SystemExit, as Ctrl-C does through
    KeyboardInterrupt: their default action ends it at once, leaving the services running and the
    temp Airflow home behind, while SystemExit runs the ``finally`` blocks and ``atexit``."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit)


def _exit(signum: int, frame) -> None:
    raise SystemExit(128 + signum)  # the status a shell gives a process the signal ended


def _run(conf: dict, args, resume: str | None = None) -> str | None:
    """One local DAG run at ``args.width``; prints its outcome and returns its run id, or None when it
    failed. The terminal shows its log files' paths and its progress (none with --quiet); with
    --verbose, Airflow's log instead of the progress."""
    from emprocess.progress import shown_while_running
    from emprocess.workflow.local_run import output_to, prepare_run, run_local

    run = prepare_run(conf, resume)
    print(f"Airflow's log: {run.logs.airflow}" + (" (also shown here)" if args.verbose else ""))
    print(f"services' logs: {', '.join(map(str, run.logs.services.values()))}", flush=True)
    with output_to(run.logs.airflow, echo=args.verbose) as console:
        with nullcontext() if args.verbose or args.quiet else shown_while_running(run.ctx, console):
            result = run_local(run, width=args.width)
    if result.state != "success" or result.failed:
        for task_id, error in result.failed:
            print(f"task {task_id} failed: {error}", file=sys.stderr)
        print(f"log: {run.logs.airflow} (the services' logs are beside it)", file=sys.stderr)
        print(f"run {result.run_id} ended {result.state}; resume with --resume {result.run_id}", file=sys.stderr)
        return None
    print(f"run {result.run_id} succeeded")
    _print_outputs(conf, result.run_id)
    return result.run_id


def _print_outputs(conf: dict, run_id: str) -> None:
    from emprocess import storage
    from emprocess.stages import RunContext

    ctx = RunContext.create(conf, run_id)
    complete = storage.read_json(ctx.locations.complete)
    print(f"  process location: {ctx.locations.process}")
    for name, url in complete["outputs"].items():
        if url:
            print(f"  {name}: {url}")
    if "neuroglancer" in complete:
        print(f"  neuroglancer: {complete['neuroglancer']}")
    print(f"  report: {ctx.locations.report('html')}")


def cmd_run(args) -> int:
    exit_on_termination()
    return 0 if _run(_load_conf(args.conf), args, args.resume) else 1


def cmd_demo(args) -> int:
    """The sample through the image run, then its cells through a ChunkedGraph, meshing and skeletons run."""
    from emprocess import storage
    from emprocess.align import transforms_url
    from emprocess.sample import write_sample, write_sample_segmentation
    from emprocess.stages import RunContext

    exit_on_termination()
    out = Path(args.dir).resolve()
    conf = write_sample(out / "sample", deformation=args.deformation)
    print(f"sample stack: {conf['source']}", flush=True)
    image_run = _run(conf, args)
    if image_run is None:
        return 1
    if args.deformation > 0:  # the sample's cells are placed by the affines alone: no graph of them
        print("elastic alignment: see align/pairs.json and the report's elastic residuals; "
              f"to view: make serve, or emprocess serve {out}")
        return 0
    transforms = storage.read_json(transforms_url(RunContext.create(conf, image_run).locations.process))
    segmentation = write_sample_segmentation(out / "sample", transforms, out / "sample_segmentation")
    print(f"sample supervoxels in the aligned frame: {segmentation['watershed']}; "
          "building their ChunkedGraph, meshes and skeletons", flush=True)
    graph_conf = dict(conf, stages=["chunkedgraph", "meshing", "skeletons"], segmentation=segmentation)
    (out / "sample_segmentation" / "conf.json").write_text(json.dumps(graph_conf, indent=2))
    if _run(graph_conf, args) is None:
        return 1
    print(f"to view: make serve, or emprocess serve {out}; then open a printed neuroglancer link")
    return 0


def _work_conf(args) -> dict:
    """The conf of ``--conf FILE``, or of ``--conf-json`` (a pod's argument: no file to mount)."""
    if args.conf_json is None:
        return _load_conf(args.conf)
    try:
        conf = json.loads(args.conf_json)
    except ValueError as err:
        raise ConfError(f"--conf-json is not valid JSON: {err}") from None
    if not isinstance(conf, dict):
        raise ConfError("--conf-json must be a JSON object")
    return conf


def cmd_work(args) -> int:
    from emprocess import registry
    from emprocess.batch import run_and_cache, run_in_process
    from emprocess.stages import RunContext

    ctx = RunContext.create(_work_conf(args), args.run_id)
    if args.stage != "chunkedgraph":
        print(run_in_process(registry.get(args.stage), ctx, args.worker, args.of, threads=args.threads))
        return 0
    if args.layer is None or args.chunk is None:
        raise ConfError("work chunkedgraph re-runs one chunk: give --layer L and --chunk X Y Z")
    from emprocess.chunkedgraph.stages import chunk_task

    try:
        task = chunk_task(ctx, args.layer, args.chunk)
    except ValueError as err:
        raise ConfError(str(err)) from None
    stage = registry.get(f"cg.layer{args.layer}")
    run_and_cache(stage, ctx, task, lambda task: stage.execute(task["payload"]))
    print(f"{stage.name} chunk {task['key']} rebuilt")
    return 0


def cmd_k8s_render(args) -> int:
    from emprocess.kubernetes.render import render
    from emprocess.kubernetes.settings import load_settings

    written = render(_load_conf(args.conf), args.width, args.run_id, Path(args.out), load_settings(args.settings))
    pods = sum(path.parent.name == "pods" for path in written)
    print(f"{pods} worker pods and {len(written) - pods} deploy manifests written under {args.out}")
    return 0


def cmd_k8s_resources(args) -> int:
    from emprocess.kubernetes.resources import markdown

    print(markdown(), end="")
    return 0


def cmd_status(args) -> int:
    from emprocess import registry
    from emprocess.batch import stage_status
    from emprocess.stages import RunContext

    ctx = RunContext.create(_load_conf(args.conf), args.run_id)
    for name, counts in stage_status(ctx, registry.pipeline()).items():
        total = "not planned yet" if counts["total"] is None else counts["total"]
        print(f"{name:16s} {counts['done']}/{total}")
    return 0


def cmd_stages(args) -> int:
    from emprocess import registry

    print(registry.markdown(), end="")
    return 0


def cmd_report(args) -> int:
    from emprocess import registry
    from emprocess.report import write_report
    from emprocess.stages import RunContext

    ctx = RunContext.create(_load_conf(args.conf), args.run_id)
    urls = write_report(ctx, registry.pipeline())
    print(f"report written: {urls['html']} (data: {urls['json']})")
    return 0


def cmd_serve(args) -> int:
    from emprocess.serve import make_server, viewer_links

    server = make_server(args.dir, args.host, args.port)
    base = f"http://{args.host}:{server.server_address[1]}"
    links = viewer_links(args.dir, base)
    print(f"serving {Path(args.dir).resolve()} at {base} (HTTP Range + CORS); Ctrl-C stops")
    for run_id, url in links:
        print(f"  run {run_id}: {url}")
    if not links:
        print("  no completed run with file:// outputs under this folder")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


VERBOSE_HELP = "show Airflow's log on the terminal (it also goes to its file) instead of the progress"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emprocess", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="write the synthetic sample stack")
    p.add_argument("dir")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--slices", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("run", help="run one DAG run locally (temp Airflow, local services)")
    p.add_argument("conf", help="run conf JSON file")
    p.add_argument("--width", type=int, default=1, choices=WIDTHS)
    p.add_argument("--resume", metavar="RUN_ID", help="resume this earlier run (skips finished work)")
    p.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="write the sample stack and run it end to end")
    p.add_argument("dir")
    p.add_argument("--deformation", type=float, default=0.0, metavar="PX",
                   help="also bend each slice by its own smooth field of this amplitude and align it with "
                        "align_mode elastic (the image run only)")
    p.add_argument("--width", type=int, default=1, choices=WIDTHS)
    p.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("work", help="run one stage's worker in-process (what a Kubernetes pod runs), "
                                    "or re-run one ChunkedGraph chunk")
    p.add_argument("stage", help="stage name, e.g. align.pairs, pyramid.shard, cg.layer3; "
                                 "'chunkedgraph' with --layer and --chunk re-runs one chunk")
    p.add_argument("--worker", type=int, default=0)
    p.add_argument("--of", type=int, default=1)
    p.add_argument("--layer", type=int)
    p.add_argument("--chunk", type=int, nargs=3, metavar=("X", "Y", "Z"))
    conf = p.add_mutually_exclusive_group(required=True)
    conf.add_argument("--conf", help="run conf JSON file")
    conf.add_argument("--conf-json", metavar="JSON", help="the run conf itself (what a pod is given)")
    p.add_argument("--run-id", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_work)

    p = sub.add_parser("k8s", help="Kubernetes: write the pods a run would launch and the namespace's manifests")
    k8s = p.add_subparsers(dest="k8s_command", required=True)
    p = k8s.add_parser("render", help="one YAML per stage worker's pod (pods/), and the deploy manifests (deploy/)")
    p.add_argument("conf", help="run conf JSON file")
    p.add_argument("--width", type=int, default=1, choices=WIDTHS)
    p.add_argument("--run-id", required=True)
    p.add_argument("--out", required=True, help="folder to write into")
    p.add_argument("--settings", help="Kubernetes settings YAML (default: $EMPROCESS_KUBERNETES_SETTINGS, "
                                      "else the defaults)")
    p.set_defaults(func=cmd_k8s_render)
    p = k8s.add_parser("resources", help="the default CPU and memory of each stage's pod (the README's table)")
    p.set_defaults(func=cmd_k8s_resources)

    p = sub.add_parser("status", help="done/total mini-tasks per stage (and ChunkedGraph layer) of a run")
    p.add_argument("run_id")
    p.add_argument("--conf", required=True)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("stages", help="list the stages a run takes: DAG task, workers, service, pool")
    p.set_defaults(func=cmd_stages)

    p = sub.add_parser("report", help="write a run's report.html and report.json (any run: finished, failed "
                                      "or running)")
    p.add_argument("run_id")
    p.add_argument("--conf", required=True)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("serve", help="serve a folder of local outputs to neuroglancer and print viewer links")
    p.add_argument("dir")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=cmd_serve)

    from emprocess.admin.cli import add_commands

    add_commands(sub)

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.func(args)
    except Exception as err:
        if not is_bad_input(err):
            raise
        # bad conf or input data (also a missing or corrupt file a worker meets): one line per refused
        # key, no traceback, status 2 as retrying cannot mend it
        problems = err.problems if isinstance(err, ConfError) else []
        lines = [f"error: invalid run conf: {problem}" for problem in problems] or [f"error: {err}"]
        print("\n".join(lines), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
