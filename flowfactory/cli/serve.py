"""Serving commands: keys create, serve, worker, feedback export."""

from __future__ import annotations

import json
from pathlib import Path

from flowfactory.cli.common import ASSETS
from flowfactory.errors import UserError


def _serve_config(args):
    from flowfactory.serve.app import ServeConfig

    return ServeConfig(db=str(Path(args.dir) / "jobs.sqlite"), results=str(Path(args.dir) / "results"),
                       **{k: getattr(args, k) for k in ("workers", "batch_size", "max_queue", "rate_limit", "ttl_s",
                                                        "max_body_bytes") if getattr(args, k, None) is not None},
                       tombstones=getattr(args, "tombstones", None) or "")  # fmt: skip


def cmd_keys(args) -> None:
    from flowfactory.serve.store import SQLiteJobStore

    cfg = _serve_config(args)
    kid, key = SQLiteJobStore(cfg.db).create_key(args.name or "")
    print(json.dumps({"id": kid, "key": key, "name": args.name}) if args.json else key)


def _models(args):
    """The models of `--models FILE` (kind -> tier -> [checkpoint, steps, guidance]), or the shipped ones."""
    from flowfactory.serve.worker import ModelSet

    if not args.models:
        return ModelSet.shipped(ASSETS, args.device)
    try:
        spec = json.loads(Path(args.models).read_text())
        return ModelSet({k: {t: tuple(v) for t, v in tiers.items()} for k, tiers in spec.items()}, args.device)
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise UserError(f"cannot read the model map {args.models}: {e}") from None


def cmd_serve(args) -> None:
    import uvicorn

    from flowfactory.serve.app import create_app
    from flowfactory.serve.guard import Moderator

    if args.workers is not None and args.workers < 0:
        raise UserError("--workers must be >= 0 (0: API only, with `flowfactory worker` processes)")
    app = create_app(_serve_config(args), _models(args), Moderator.from_files(args.terms, args.image_classifier))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def cmd_worker(args) -> None:
    """A worker process: pulls jobs from the server's store (same --dir) until stopped (SIGTERM / Ctrl-C)."""
    import signal
    import threading

    from flowfactory.serve.guard import Moderator
    from flowfactory.serve.store import SQLiteJobStore
    from flowfactory.serve.worker import Heartbeat, Worker

    cfg = _serve_config(args)
    if not Path(cfg.db).exists():
        raise UserError(f"no server data in {args.dir} (start `flowfactory serve --dir {args.dir}` first)")
    if args.workers < 1:
        raise UserError("--workers must be >= 1")
    store, models = SQLiteJobStore(cfg.db), _models(args)
    moderator = Moderator.from_files(args.terms, args.image_classifier)
    beat = Heartbeat(store)
    workers = [Worker(store, models, moderator, Path(cfg.results), cfg.batch_size, name=f"worker-{i}")
               for i in range(args.workers)]  # fmt: skip
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    beat.start()
    for w in workers:
        w.start()
    print(f"{args.workers} worker(s) on {cfg.db}; stop with Ctrl-C", flush=True)
    done.wait()
    for w in [beat, *workers]:
        w.stop.set()
    for w in workers:  # a batch in progress finishes and is written; nothing is left Running
        w.join()


def cmd_feedback(args) -> None:
    from flowfactory.data.tombstones import Tombstones
    from flowfactory.serve.feedback import export_feedback
    from flowfactory.serve.store import SQLiteJobStore

    cfg = _serve_config(args)
    if not Path(cfg.db).exists():
        raise UserError(f"no server data in {args.dir}")
    stats = export_feedback(SQLiteJobStore(cfg.db), cfg.results, args.out, Tombstones(args.tombstones))
    text = f"{stats['pairs']} preference pairs, {stats['jobs']} usage records -> {args.out}"
    print(json.dumps(stats) if args.json else text)


def register(sub) -> None:
    ky = sub.add_parser("keys", help="API keys of the server")
    kys = ky.add_subparsers(dest="keys_command", required=True)
    kc = kys.add_parser("create", help="create a key and print it (stored only as a hash)")
    kc.add_argument("--name", help="a label for the key")
    kc.add_argument("--dir", default="flowfactory-serve", help="server data directory")
    kc.add_argument("--json", action="store_true", help="print {id, key, name}")
    kc.set_defaults(func=cmd_keys)

    sv = sub.add_parser("serve", help="the FLUX-API-compatible server and its workers")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--dir", default="flowfactory-serve", help="server data: jobs.sqlite and results/")
    sv.add_argument("--models", help="JSON map kind -> tier -> [checkpoint, steps, guidance] (default: shipped)")
    sv.add_argument("--workers", type=int, help="worker threads in the server (default 1; 0: API only, with "
                    "`flowfactory worker` processes)")  # fmt: skip
    sv.add_argument("--batch-size", type=int, help="compatible requests per forward pass (default 8)")
    sv.add_argument("--max-queue", type=int, help="waiting + running jobs before 429 (default 256)")
    sv.add_argument("--rate-limit", type=int, help="requests per key per minute (default 120)")
    sv.add_argument("--ttl-s", type=float, help="seconds before results expire (default 86400)")
    sv.add_argument("--max-body-bytes", type=int, help="largest request body (default 30 MB)")
    sv.add_argument("--terms", help="moderation term list (JSON term: level 1-7)")
    sv.add_argument("--image-classifier", help="package.module:function(image) -> unsafe score in [0, 1]")
    sv.add_argument("--tombstones", help="deletion list shared with training (default: the user's list)")
    sv.add_argument("--device", default="cpu")
    sv.set_defaults(func=cmd_serve)

    wk = sub.add_parser("worker", help="a worker process for a server started with its --dir (scale out)")
    wk.add_argument("--dir", default="flowfactory-serve", help="the server's data directory (jobs.sqlite, results/)")
    wk.add_argument("--models", help="JSON map kind -> tier -> [checkpoint, steps, guidance] (default: shipped)")
    wk.add_argument("--workers", type=int, default=1, help="worker threads in this process (default 1)")
    wk.add_argument("--batch-size", type=int, help="compatible requests per forward pass (default 8)")
    wk.add_argument("--terms", help="moderation term list (JSON term: level 1-7)")
    wk.add_argument("--image-classifier", help="package.module:function(image) -> unsafe score in [0, 1]")
    wk.add_argument("--device", default="cpu")
    wk.set_defaults(func=cmd_worker)

    fb = sub.add_parser("feedback", help="the server's feedback as training data")
    fbs = fb.add_subparsers(dest="feedback_command", required=True)
    fe = fbs.add_parser("export", help="preference pairs (JSONL for align dpo) and usage telemetry")
    fe.add_argument("--dir", default="flowfactory-serve", help="server data directory")
    fe.add_argument("--out", required=True, help="export directory: pairs.jsonl, images/, usage.jsonl")
    fe.add_argument("--tombstones", help="deletion list (default: the user's list)")
    fe.add_argument("--json", action="store_true")
    fe.set_defaults(func=cmd_feedback)
