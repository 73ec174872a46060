"""The ``tpotserve`` command line: predict, retrain, follow jobs, list and activate models.

    tpotserve predict rows.csv                  # CSV in, CSV out (rows + prediction + probabilities)
    echo '{"SepalLength": 5.1, ...}' | tpotserve predict --output-format csv
    tpotserve retrain --max-time-mins 1 --wait  # live progress on stderr, the job's JSON on stdout
    tpotserve models | tpotserve activate VERSION | tpotserve jobs JOB_ID | tpotserve cancel JOB_ID
    tpotserve datasets upload data.csv | tpotserve datasets list
    tpotserve registry                          # every named model; --model NAME on predict, retrain,
    tpotserve predict rows.csv --model housing  # models, current and activate picks one (default: the
                                                # server's default model, through the unnamed endpoints)
    tpotserve leaderboard | tpotserve card      # what the training tried and the model card of a version
    tpotserve drift --window 3600               # live inputs against the training rows, per feature
    tpotserve feedback truth.csv | tpotserve quality   # the truth for answers given; live accuracy
    tpotserve compile [--model NAME] [--dry-run]       # where the trainer runs: compiled forms for old versions

The gateway and key come from --url / --api-key, else TPOTSERVE_URL (default
http://127.0.0.1:8080) and TPOTSERVE_API_KEY (else API_KEY). Exit codes: 0 ok,
1 an API error, an unreachable gateway or a failed/canceled job, 2 a usage
error (bad arguments, unreadable input), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .client import DEFAULT_URL, JSON, Client, TpotServeError, check_model_name
from .progress import JobProgress
from .rows import (FORMATS, UsageError, detect_format, format_csv, format_json, parse_feedback, parse_rows, read_input,
                   result_rows)
from .tables import (datasets_table, drift_table, leaderboard_table, models_table, policy_text, quality_table,
                     registry_table, score_text, shadow_table, share_text, trigger_text)

PROG = "tpotserve"
ENV_URL = "TPOTSERVE_URL"
ENV_KEYS = ("TPOTSERVE_API_KEY", "API_KEY")


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def cmd_predict(client: Client, args: argparse.Namespace) -> int:
    text = read_input(args.file)
    fmt = detect_format(args.file, text, args.format)
    rows = parse_rows(text, fmt)
    answer = client.predict(rows, model=args.model)
    out_fmt = args.output_format or fmt
    results = result_rows(rows, answer, flat=out_fmt == "csv")
    ids = getattr(answer, "row_ids", lambda: [])()
    if args.ids and ids:
        results = [{"id": row_id, **row} for row_id, row in zip(ids, results)]
    sys.stdout.write(format_csv(results) if out_fmt == "csv" else format_json(results))
    plural = "" if len(results) == 1 else "s"
    by = f"{args.model}, version " if args.model else ""
    print(f"{len(results)} prediction{plural} by model {by}{answer.get('model_version')}", file=sys.stderr)
    if ids:
        print(f"prediction id {answer.prediction_id} (feedback ids {ids[0]}"  # type: ignore[attr-defined]
              f"{f' to {ids[-1]}' if len(ids) > 1 else ''})", file=sys.stderr)
    for warning in answer.get("warnings") or []:
        print(f"warning: {warning.get('field')}: {warning.get('message')}", file=sys.stderr)
    return 0


def follow(client: Client, job_id: str, args: argparse.Namespace) -> int:
    """Wait for a job with a progress bar; print its JSON; exit 1 unless it finished."""
    bar = JobProgress(job_id)
    said: list[bool] = []

    def progress(view: JSON) -> None:
        if view.get("trigger") and not said:  # once, above the bar: why the scheduler started it
            said.append(True)
            bar.bar.write(f"job {job_id}: started by the scheduler: {trigger_text(view['trigger'])}",
                          file=sys.stderr)
        bar(view)

    try:
        view = client.wait(
            job_id, poll_interval=args.poll_interval, timeout=args.wait_timeout, on_progress=progress
        )
    except TimeoutError as exc:
        bar.close()
        print(f"{PROG}: error: {exc}; it keeps running (tpotserve cancel {job_id} stops it)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        bar.close()
        print(f"stopped waiting; job {job_id} keeps running (tpotserve cancel {job_id} stops it)",
              file=sys.stderr)
        return 130
    bar.close()
    _print_json(view)
    status = view.get("status")
    if status == "finished":
        result = view.get("result") or {}
        gate = result.get("gate") or {}
        model = (view.get("request") or {}).get("model")
        selection = result.get("selection") or {}
        winner = (f"winner {selection['winner']} ({selection.get('source')}), "
                  if selection.get("winner") else "")
        print(
            f"job {job_id} finished: version {result.get('version')}{f' of model {model}' if model else ''}, "
            f"cv_score {score_text(result.get('cv_score'))}, "
            f"holdout_score {score_text(result.get('holdout_score'))}, {winner}"
            f"{'published' if result.get('published') else 'not published'} ({gate.get('reason', '')})",
            file=sys.stderr,
        )
        return 0
    if view.get("error"):
        reason = f"{status}: {' '.join(str(view['error']).split())}"
    else:
        reason = "was canceled" if status == "canceled" else str(status)
    print(f"{PROG}: error: job {job_id} {reason}", file=sys.stderr)
    return 1


def cmd_retrain(client: Client, args: argparse.Namespace) -> int:
    answer = client.retrain(
        args.dataset,
        model=args.model,
        target=args.target,
        task=args.task,
        max_time_mins=args.max_time_mins,
        generations=args.generations,
        population_size=args.population_size,
        cv=args.cv,
        scoring=args.scoring,
        promote=args.promote,
        queue=True if args.queue else None,
        baselines=args.baselines,
        description=args.description,
        random_state=args.random_state,
        replace_contract=True if args.replace_contract else None,
    )
    if not args.wait:
        _print_json(answer)
        return 0
    print(f"job {answer['job_id']} queued", file=sys.stderr)
    return follow(client, answer["job_id"], args)


def cmd_jobs(client: Client, args: argparse.Namespace) -> int:
    if args.wait:
        return follow(client, args.job_id, args)
    _print_json(client.job(args.job_id))
    return 0


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    answer = client.cancel(args.job_id)
    print(f"job {answer.get('id')} {answer.get('status')}")
    return 0


def _print_listing(data: Any, table: Callable[[Any], str], as_json: bool) -> int:
    """An answer as JSON (``--json``) or as its table."""
    if as_json:
        _print_json(data)
    else:
        sys.stdout.write(table(data))
    return 0


def cmd_models(client: Client, args: argparse.Namespace) -> int:
    return _print_listing(client.models(model=args.model), models_table, args.json)


def cmd_registry(client: Client, args: argparse.Namespace) -> int:
    return _print_listing(client.registry(), registry_table, args.json)


def cmd_current(client: Client, args: argparse.Namespace) -> int:
    _print_json(client.current_model(model=args.model))
    return 0


def cmd_activate(client: Client, args: argparse.Namespace) -> int:
    answer = client.activate(args.version, model=args.model, replace_contract=args.replace_contract)
    of = f" of model {args.model}" if args.model else ""
    if answer.get("activated"):
        print(f"activated {answer.get('version')}{of}")
    else:
        job = answer.get("job_id")
        print(f"activation of {answer.get('version')}{of} queued as job {job} (tpotserve jobs {job})")
    return 0


def cmd_leaderboard(client: Client, args: argparse.Namespace) -> int:
    return _print_listing(client.leaderboard(model=args.model, version=args.version), leaderboard_table, args.json)


def cmd_card(client: Client, args: argparse.Namespace) -> int:
    if args.json:
        _print_json(client.card(model=args.model, version=args.version, fmt="json"))
        return 0
    text = client.card(model=args.model, version=args.version)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _since(args: argparse.Namespace) -> dict[str, Any]:
    return {"window": args.window, "since": args.since}


def cmd_drift(client: Client, args: argparse.Namespace) -> int:
    report = client.drift(model=args.model, version=args.version, **_since(args))
    return _print_listing(report, drift_table, args.json)


def cmd_quality(client: Client, args: argparse.Namespace) -> int:
    return _print_listing(client.quality(model=args.model, **_since(args)), quality_table, args.json)


def cmd_feedback(client: Client, args: argparse.Namespace) -> int:
    text = read_input(args.file)
    items, rows = parse_feedback(text, detect_format(args.file, text, args.format))
    answer = client.feedback(items, model=args.model, rows=rows)
    if args.json:
        _print_json(answer)
    else:
        skipped = answer.get("skipped") or []
        print(f"model {answer.get('model')}: {answer.get('accepted', 0)} accepted, {len(skipped)} skipped, "
              f"{answer.get('kept_rows', 0)} rows kept for retraining")
    for skip in answer.get("skipped") or []:
        of = f" (id {skip['id']})" if skip.get("id") is not None else ""
        print(f"skipped {skip.get('in')}[{skip.get('index')}]{of}: {skip.get('reason')}", file=sys.stderr)
    return 0


def cmd_policy(client: Client, args: argparse.Namespace) -> int:
    if args.action == "set":
        text = read_input(args.file)
        try:
            policy = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"the policy is not JSON: {exc}") from None
        view = client.set_policy(policy, model=args.model)
    elif args.action == "delete":
        view = client.delete_policy(model=args.model)
    else:
        view = client.policy(model=args.model)
    if view.get("written") is False:
        print(f"the write is queued as job {view.get('job_id')} (tpotserve jobs {view.get('job_id')})")
        return 0
    return _print_listing(view, policy_text, args.json)
def cmd_shadow(client: Client, args: argparse.Namespace) -> int:
    return _print_listing(client.shadow(model=args.model), shadow_table, args.json)


def cmd_shadow_set(client: Client, args: argparse.Namespace) -> int:
    answer = client.set_shadow(args.version, model=args.model, share=args.share)
    of = f" of model {args.model}" if args.model else ""
    if args.json:
        _print_json(answer)
    elif answer.get("done"):
        doc = answer.get("shadow") or {}
        print(f"{doc.get('version')}{of} in shadow, answering {share_text(doc.get('share'))} of the served rows")
    else:
        print(f"shadow of {args.version}{of} queued as job {answer.get('job_id')} (tpotserve jobs {answer.get('job_id')})")
    return 0


def cmd_shadow_clear(client: Client, args: argparse.Namespace) -> int:
    answer = client.clear_shadow(model=args.model)
    if args.json:
        _print_json(answer)
    elif not answer.get("done"):
        print(f"clearing queued as job {answer.get('job_id')} (tpotserve jobs {answer.get('job_id')})")
    else:
        cleared = answer.get("cleared")
        print(f"shadow {cleared.get('version')} cleared" if cleared else "no version was in shadow")
    return 0


def cmd_datasets_list(client: Client, args: argparse.Namespace) -> int:
    return _print_listing(client.datasets(), datasets_table, args.json)


def cmd_datasets_upload(client: Client, args: argparse.Namespace) -> int:
    if args.file == "-":
        meta = client.upload_dataset(sys.stdin.buffer.read(), args.name or "stdin.csv")
    else:
        path = Path(args.file)
        if not path.is_file():
            raise UsageError(f"cannot read {args.file}: no such file")
        meta = client.upload_dataset(path, args.name)
    if args.json:
        _print_json(meta)
    else:
        state = "uploaded" if meta.get("created") else "already stored"
        print(f"{meta.get('id')}  {state}: {meta.get('rows')} rows, {len(meta.get('columns') or [])} columns")
    return 0


# --- the parser -------------------------------------------------------------------
def _connection_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--url", default=default, help=f"the gateway (env {ENV_URL}; default {DEFAULT_URL})")
    parser.add_argument("--api-key", default=default, help="bearer key (env TPOTSERVE_API_KEY, else API_KEY)")
    parser.add_argument(
        "--timeout", type=float, default=default, help="seconds to wait for each HTTP answer (default 60)"
    )


def _model_name(value: str) -> str:
    """argparse's type for --model: a bad name is a usage error (exit 2), nothing is sent."""
    try:
        return check_model_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _model_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "--model", type=_model_name, metavar="NAME",
        help=f"{help_text} (default: the server's default model; tpotserve registry lists them)",
    )


def _wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="follow the job with a progress bar to its end")
    parser.add_argument("--poll-interval", type=float, default=1.0, metavar="S", help="seconds between polls")
    parser.add_argument("--wait-timeout", type=float, metavar="S", help="give up waiting after S seconds")


def _window_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--window", type=int, metavar="S", help="the last S seconds (default: DRIFT_WINDOW_S)")
    group.add_argument("--since", metavar="T", help="from T: an ISO 8601 time or epoch seconds")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser; connection options go before or after the command."""
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, argparse.SUPPRESS)  # so a value given before the command survives
    parser = argparse.ArgumentParser(
        prog=PROG, description="Talk to a tpotserve gateway: predictions, training jobs, model versions."
    )
    _connection_options(parser, None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _job_commands(commands, common)
    _version_commands(commands, common)
    _watch_commands(commands, common)
    _data_commands(commands, common)
    return parser


def _job_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Predictions, training jobs."""
    p = commands.add_parser("predict", parents=[common], help="predict rows from a CSV or JSON file or stdin")
    p.add_argument("file", nargs="?", default="-", help="CSV or JSON file; '-' or omitted: stdin")
    p.add_argument("--format", choices=FORMATS, help="input format (default: by extension, else sniffed)")
    p.add_argument("--output-format", choices=FORMATS, help="output format (default: the input's)")
    _model_option(p, "the named model to predict with")
    p.add_argument("--ids", action="store_true",
                   help="add an id column: <X-Prediction-ID>:<row>, what tpotserve feedback takes")
    p.set_defaults(func=cmd_predict)

    p = commands.add_parser("retrain", parents=[common], help="start a training job (admin key)")
    _model_option(p, "the named model to train a new version of; a new name creates it")
    p.add_argument("--dataset", help="'iris' or an uploaded data set's id (default: the data set of the "
                                     "model's current version, else iris)")
    p.add_argument(
        "--target", help="the column to predict (needed for an upload the model was not trained on)"
    )
    p.add_argument("--task", choices=("classification", "regression"), help="default: inferred")
    p.add_argument("--max-time-mins", type=float, metavar="M")
    p.add_argument("--generations", type=int, metavar="N")
    p.add_argument("--population-size", type=int, metavar="N")
    p.add_argument("--cv", type=int, metavar="K")
    p.add_argument("--scoring", help="e.g. accuracy, f1_macro, r2, neg_mean_absolute_error")
    p.add_argument("--promote", choices=("auto", "always", "never"), help="default: auto (the gate decides)")
    p.add_argument("--queue", action="store_true", help="queue behind a running training instead of a 409")
    p.add_argument("--no-baselines", dest="baselines", action="store_const", const=False, default=None,
                   help="publish TPOT's pick only (default: the best by CV score of it and the baselines)")
    p.add_argument("--description", metavar="TEXT", help="free text for the model card (at most 2000 characters)")
    p.add_argument("--random-state", type=int, metavar="N",
                   help="seed of TPOT, the baselines, the CV folds and the holdout split")
    p.add_argument("--replace-contract", action="store_true",
                   help="train even if the data set changes the model's features, target, task or classes "
                        "(otherwise a 409; a new --model name is usually what you want)")
    _wait_options(p)
    p.set_defaults(func=cmd_retrain)

    p = commands.add_parser("jobs", parents=[common], help="print a job's JSON (status, progress, result)")
    p.add_argument("job_id")
    _wait_options(p)
    p.set_defaults(func=cmd_jobs)

    p = commands.add_parser("cancel", parents=[common], help="cancel a queued or running job (admin key)")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_cancel)


def _version_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """The stored versions: list, activate, and what each one says of itself."""
    p = commands.add_parser("models", parents=[common], help="list stored model versions, current marked *")
    p.add_argument("--json", action="store_true", help="print GET /models (--model: its versions) as JSON")
    _model_option(p, "the named model whose versions to list")
    p.set_defaults(func=cmd_models)

    p = commands.add_parser("registry", parents=[common], help="list the named models, default marked *")
    p.add_argument("--json", action="store_true", help="print GET /registry as JSON")
    p.set_defaults(func=cmd_registry)

    p = commands.add_parser("current", parents=[common], help="print the served version's metadata as JSON")
    _model_option(p, "the named model")
    p.set_defaults(func=cmd_current)

    p = commands.add_parser("activate", parents=[common], aliases=["rollback"],
                            help="make a stored version current (admin key)")
    p.add_argument("version")
    _model_option(p, "the named model the version belongs to")
    p.add_argument("--replace-contract", action="store_true",
                   help="activate even a version whose features, target, task or classes differ from the "
                        "served one's (otherwise a 409)")
    p.set_defaults(func=cmd_activate)

    p = commands.add_parser("leaderboard", parents=[common],
                            help="what a version's training tried, ranked by CV score, the published one marked *")
    _model_option(p, "the named model")
    p.add_argument("--version", default="current", help="a stored version (default: current)")
    p.add_argument("--json", action="store_true", help="print the leaderboard's JSON")
    p.set_defaults(func=cmd_leaderboard)

    p = commands.add_parser("card", parents=[common], help="print a version's model card (Markdown)")
    _model_option(p, "the named model")
    p.add_argument("--version", default="current", help="a stored version (default: current)")
    p.add_argument("--json", action="store_true", help="print the card as JSON")
    p.set_defaults(func=cmd_card)


def _watch_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Watching the served model and keeping it good: drift, quality, feedback, policy, shadow."""
    p = commands.add_parser("drift", parents=[common], help="live inputs against the training rows, per feature")
    _model_option(p, "the named model")
    _window_options(p)
    p.add_argument("--version", help="another stored version than the served one")
    p.add_argument("--json", action="store_true", help="print GET /drift as JSON")
    p.set_defaults(func=cmd_drift)

    p = commands.add_parser("quality", parents=[common], help="live quality from feedback, beside the holdout score")
    _model_option(p, "the named model")
    _window_options(p)
    p.add_argument("--json", action="store_true", help="print GET /quality as JSON")
    p.set_defaults(func=cmd_quality)

    p = commands.add_parser("feedback", parents=[common], help="send the truth for answers given (predict key)")
    p.add_argument("file", nargs="?", default="-",
                   help="JSON items or a CSV with columns id,label|value; '-' or omitted: stdin")
    p.add_argument("--format", choices=FORMATS, help="input format (default: by extension, else sniffed)")
    _model_option(p, "the named model the answers came from")
    p.add_argument("--json", action="store_true", help="print the answer's JSON")
    p.set_defaults(func=cmd_feedback)

    p = commands.add_parser("policy", parents=[common],
                            help="a model's retraining policy: show, set FILE (JSON) or delete (admin key)")
    p.add_argument("action", nargs="?", choices=("show", "set", "delete"), default="show")
    p.add_argument("file", nargs="?", default="-", help="set: the policy as JSON; '-' or omitted: stdin")
    _model_option(p, "the named model (default: the default model)")
    p.add_argument("--json", action="store_true", help="print GET /models/<name>/policy as JSON")
    p.set_defaults(func=cmd_policy)

    p = commands.add_parser("shadow", parents=[common],
                            help="the version in shadow: agreement, latency, paired live scores, decision; "
                                 "'shadow set VERSION' / 'shadow clear' (admin key)")
    _model_option(p, "the named model")
    p.add_argument("--json", action="store_true", help="print GET /shadow as JSON")
    p.set_defaults(func=cmd_shadow)
    shadow_commands = p.add_subparsers(dest="shadow_command", required=False, metavar="{set,clear}")
    s = shadow_commands.add_parser("set", parents=[common], help="put a stored version in shadow (admin key)")
    s.add_argument("version")
    s.add_argument("--share", type=float, metavar="X",
                   help="share of served rows it answers too, 0 < X <= 1 (default: the policy's, else SHADOW_SHARE)")
    _model_option(s, "the named model the version belongs to")
    s.add_argument("--json", action="store_true", help="print the answer's JSON")
    s.set_defaults(func=cmd_shadow_set)
    s = shadow_commands.add_parser("clear", parents=[common], help="take the shadow out (admin key)")
    _model_option(s, "the named model")
    s.add_argument("--json", action="store_true", help="print the answer's JSON")
    s.set_defaults(func=cmd_shadow_clear)


def _data_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Data sets, and compiled forms for versions published before compiled inference."""
    p = commands.add_parser("datasets", help="upload or list training data sets")
    datasets = p.add_subparsers(dest="datasets_command", required=True, metavar="{upload,list}")
    d = datasets.add_parser("list", parents=[common], help="the bundled iris and every upload")
    d.add_argument("--json", action="store_true", help="print GET /datasets as JSON")
    d.set_defaults(func=cmd_datasets_list)
    d = datasets.add_parser("upload", parents=[common], help="upload a CSV (admin key)")
    d.add_argument("file", help="the CSV file; '-': stdin")
    d.add_argument("--name", help="the file name to record (default: the file's)")
    d.add_argument("--json", action="store_true", help="print the data set's full JSON")
    d.set_defaults(func=cmd_datasets_upload)

    p = commands.add_parser("compile", add_help=False,
                            help="add compiled forms (ONNX) to stored versions published before compiled inference; "
                                 "runs on the model volume where the trainer runs (docs/cli.md)")
    p.add_argument("compile_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=None)


def cmd_compile(argv: list[str]) -> int:
    """``tpotserve compile``: not an HTTP call; the trainer's one-shot on the model volume
    (``tpotserve_trainer.compile_versions``), so it needs the trainer's packages."""
    try:
        from tpotserve_trainer.compile_versions import main as compile_main
    except ImportError:
        print(f"{PROG}: error: compile runs where the trainer is installed (it needs skl2onnx and the model "
              "volume); in compose: docker compose exec worker python -m tpotserve_trainer.compile_versions",
              file=sys.stderr)
        return 2
    return compile_main(argv)


def make_client(args: argparse.Namespace, environ: dict[str, str] | os._Environ = os.environ) -> Client:
    """The client for the parsed flags, falling back on the environment."""
    url = args.url or environ.get(ENV_URL) or DEFAULT_URL
    key = args.api_key or next((environ[name] for name in ENV_KEYS if environ.get(name)), None)
    timeout = (5.0, args.timeout) if args.timeout else (5.0, 60.0)
    return Client(url, key, timeout=timeout)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compile"]:  # its own options (the trainer's parser), no gateway
        return cmd_compile(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(make_client(args), args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except TpotServeError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
