"""`specqd serve EXPORT_DIR --replicas N`: the single-process server's app, N times, behind Ray Serve.

Each replica is a Ray actor process that pins itself to its own cores, opens its own export folder and engine
with that many OpenVINO threads (Ray's `num_cpus` only books cores, it neither pins nor limits them) and serves
the very app `specqd serve` serves (main.open_server). Ray Serve's HTTP proxy spreads requests over replicas,
replaces a replica that dies, and autoscales when asked. Every response names its replica in
x-specqd-replica; /metrics merges every replica's metrics (ray_metrics.py). docs/deploy.md shows how to run it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from ..runtime.generation import GenerationError
from .engine import Engine
from .main import model_name, open_server
from .ray_metrics import REPORT_SECONDS, MetricsHub
from .ray_proxy import PROXY_ENVIRONMENT

log = logging.getLogger("specqd.server")
replica_log = logging.getLogger("ray.serve")  # what a replica logs goes to Ray Serve's replica logs
APP_NAME = "specqd"


@dataclass
class ReplicaPlan:
    """How many replicas of how many threads, and what Ray Serve is told about them."""
    replicas: int
    threads: int
    deployment_options: dict

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ReplicaPlan":
        for option in ("min_replicas", "target_ongoing_requests"):
            if getattr(args, option) is not None and args.max_replicas is None:
                raise GenerationError(f"--{option.replace('_', '-')} needs --max-replicas (which turns autoscaling on)")
        replicas = args.replicas or args.min_replicas or 1
        if args.max_replicas is not None and not (args.min_replicas or 0) <= replicas <= args.max_replicas:
            raise GenerationError(f"--replicas {replicas} must lie between --min-replicas {args.min_replicas or 0} "
                                  f"and --max-replicas {args.max_replicas}")
        threads = args.threads_per_replica or max(1, (os.cpu_count() or 1) // replicas)
        options = {
            "ray_actor_options": {"num_cpus": threads},
            # A replica takes as many requests as its engine batches; the rest wait in Ray's queue (bounded by
            # --max-queue, then 503) for whichever replica frees a place first, rather than in one engine's queue.
            "max_ongoing_requests": args.max_batch,
            "max_queued_requests": args.max_queue,
            # A folder that does not load fails every replica alike: one try each, then the deploy fails.
            "max_constructor_retry_count": replicas,
        }
        if args.max_replicas is None:
            options["num_replicas"] = replicas
        else:
            options["autoscaling_config"] = {
                "min_replicas": args.min_replicas or 0, "initial_replicas": replicas,
                "max_replicas": args.max_replicas,
                "target_ongoing_requests": args.target_ongoing_requests or args.max_batch}
        return cls(replicas, threads, options)


def replica_cores(cpu_sets: list[list[int]] | None, local_rank: int, threads: int) -> list[int]:
    """The cores of a machine's `local_rank`-th replica: its --cpu-set, else the local_rank-th block of
    `threads` cores among those this process may use (wrapping round when there are more threads than cores)."""
    if cpu_sets:
        if local_rank >= len(cpu_sets):
            raise GenerationError(f"--cpu-set was given {len(cpu_sets)} times, but this machine runs more replicas "
                                  "than that; give one --cpu-set per replica on a machine")
        return cpu_sets[local_rank]
    usable = sorted(os.sched_getaffinity(0))
    return [usable[(local_rank * threads + i) % len(usable)] for i in range(threads)]


def pin_process(cores: list[int]) -> None:
    """Pin every thread of this process, not only the calling one (on Linux sched_setaffinity acts on one
    thread); threads started later, OpenVINO's among them, inherit the mask of the thread that starts them."""
    for thread in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(thread), cores)
        except ProcessLookupError:  # the thread ended meanwhile
            pass


@serve.deployment
@serve.ingress()
class SpecqdServer:
    """One replica: its cores, its engine, and `specqd serve`'s app over them."""
    engine: Engine | None = None             # None until loaded (__del__ also runs after a failed __init__)
    reporting: asyncio.Task | None = None

    async def __init__(self, args: argparse.Namespace, hub: DeploymentHandle):
        context = serve.get_replica_context()
        cores = replica_cores(args.cpu_set, context.rank.local_rank, args.threads)
        pin_process(cores)
        self.name = f"{context.replica_id.unique_id}@{socket.gethostname()}:{os.getpid()}"
        self.hub = hub
        self.engine, self.http_app = open_server(args, {"replica": self.name,
                                                        "metrics": self.every_replicas_metrics})
        replica_log.info("replica %s serving on cores %s with %d threads", self.name, cores, args.threads)
        self.reporting = asyncio.create_task(self.report_metrics())

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self.http_app

    def own_metrics(self) -> str:
        return self.engine.metrics.render(self.engine).decode()

    async def report_metrics(self) -> None:
        while True:
            try:
                await self.hub.report.remote(self.name, self.own_metrics())
            except Exception as error:  # e.g. the hub's replica is being replaced: report again next time
                replica_log.warning("could not report metrics to the hub: %s", error)
            await asyncio.sleep(REPORT_SECONDS)

    async def every_replicas_metrics(self) -> bytes:
        await self.hub.report.remote(self.name, self.own_metrics())
        return await self.hub.merged.remote()

    def __del__(self):
        """Ray Serve calls this when it stops the replica (shutdown, scale-down); the hub drops its metrics
        once they go stale."""
        if self.reporting:
            self.reporting.cancel()
        if self.engine:
            self.engine.stop()
            self.engine.folder.close()


def start_ray(address: str | None = None, **options) -> None:
    """Connect to Ray, starting a local instance when `address` is None. A local instance inherits this
    process's environment, so its HTTP proxy answers errors in OpenAI's shape (ray_proxy.py); a cluster
    started by `ray start` needs PROXY_ENVIRONMENT set there (docs/deploy.md)."""
    os.environ.update(PROXY_ENVIRONMENT)
    ray.init(address=address, **options)


def connect(args: argparse.Namespace) -> None:
    """Join --ray-address, or start a local instance for this server alone (no dashboard: a cluster started by
    `ray start` has its own); nothing to do when this process is connected already."""
    if not ray.is_initialized():
        start_ray(args.ray_address, **({} if args.ray_address else {"include_dashboard": False}))


def deploy(args: argparse.Namespace) -> str:
    """Run the replicas on the Ray instance this process is connected to (a local one if none) and return the
    proxy's URL once every replica answers. A replica that fails to load fails this call with its error."""
    plan = ReplicaPlan.from_args(args)
    connect(args)
    serve.start(http_options={"host": args.host, "port": args.port})
    replica_args = argparse.Namespace(**vars(args) | {"threads": plan.threads})
    server = SpecqdServer.options(**plan.deployment_options).bind(replica_args, MetricsHub.bind())
    log.info("starting %d replicas of %d threads each (%s)", plan.replicas, plan.threads, args.out_dir)
    try:
        serve.run(server, name=APP_NAME, route_prefix="/")
    except RuntimeError:  # Ray says only "failed to update the deployments"; the replica's error is in its status
        status = serve.status().applications[APP_NAME].deployments[SpecqdServer.name]
        log.error("%s", status.message)
        raise GenerationError(f"the replicas failed to start: {replica_error(status.message)}") from None
    return f"http://{args.host}:{args.port}"


def replica_error(status: str) -> str:
    """The exception that stopped a replica, from Ray's status message: what follows its traceback's last
    frame (the frame's own lines are indented)."""
    after_last_frame = status.rsplit('\n  File "', 1)[-1].splitlines()[1:]
    return "\n".join(line for line in after_last_frame if not line.startswith("    ")).strip() or status


def serve_with_ray(args: argparse.Namespace) -> int:
    """`specqd serve --replicas N`: deploy, serve until Ctrl-C or SIGTERM, then stop the replicas and Ray."""
    ReplicaPlan.from_args(args)  # a wrong option fails here, before Ray starts
    connect(args)
    # ray.init installs a SIGTERM handler that exits at once, leaving Ray's processes behind: stop as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        url = deploy(args)
        log.info("serving %s on %s/v1 (Ray Serve; metrics of every replica on %s/metrics)", model_name(args), url,
                 url)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
