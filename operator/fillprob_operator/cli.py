"""`kubectl fillprob`: read and steer FillProbRollouts from a terminal (a kubectl plugin).

Installed as the `kubectl-fillprob` console script (pyproject.toml), so `kubectl fillprob ...`
finds it on PATH. It talks to the cluster of the current KUBECONFIG/context with the
kubernetes client; `plan` without `--live` never touches a cluster. Rendering is in
`cli_render.py` (pure); the ladder, env and gates come from the domain. docs/plugin.md has
the long form.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import ssl
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, NoReturn

import yaml

from . import cli_render as render
from .api import SpecError, parse_spec

GROUP, VERSION, PLURAL, KIND = "grinder.io", "v1alpha1", "fillprobrollouts", "FillProbRollout"
# The operator reads these (adapters/kubernetes.py; reconciler.rollback_request_from_annotation
# takes "who" from the managedFields manager that set the annotation, "why" from the reason).
ROLLBACK_ANNOTATION = "grinder.io/rollback"
ROLLBACK_REASON_ANNOTATION = "grinder.io/rollback-reason"
# Ours only (the operator does not read it): why someone suspended, shown by `status`.
SUSPEND_REASON_ANNOTATION = "grinder.io/suspend-reason"

EXIT_OK = 0
EXIT_ERROR = 1  # anything else (an unexpected API error, a --wait that timed out)
EXIT_INVALID = 2  # the spec/manifest is invalid (offline validation or the API server's 422)
EXIT_NOT_FOUND = 3  # the FillProbRollout (or the CRD) does not exist
EXIT_UNREACHABLE = 4  # no cluster configured, or the API server cannot be reached
EXIT_FORBIDDEN = 5  # authenticated but not allowed (403), or not authenticated (401)
EXIT_USAGE = 64  # bad command line, unreadable file (sysexits EX_USAGE)

EXIT_CODES_HELP = """\
exit codes:
  0   success
  1   other error (unexpected API error, --wait timed out)
  2   invalid spec (plan: offline validation, same messages as the API server; or the server said 422)
  3   not found: no such FillProbRollout in the namespace (or the CRD is not installed)
  4   no cluster: no kubeconfig/context, or the API server is unreachable
  5   forbidden: RBAC does not allow it (403) or the credentials were refused (401)
  64  usage error (bad arguments, unreadable file)
"""


class CliError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- the cluster


def _api_message(exc: Any) -> str:
    try:
        return json.loads(exc.body).get("message") or exc.reason
    except Exception:  # noqa: BLE001 - any body
        return str(getattr(exc, "reason", exc))


def translate(exc: BaseException, what: str = "") -> CliError:
    """Client exceptions -> CliError with the documented exit code."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException
    from urllib3.exceptions import HTTPError

    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, ApiException):
        message = _api_message(exc)
        if exc.status == 404:
            hint = "" if what else " (is the FillProbRollout CRD installed?)"
            return CliError(EXIT_NOT_FOUND, f"not found: {what or message}{hint}")
        if exc.status in (401, 403):
            return CliError(EXIT_FORBIDDEN, f"forbidden ({exc.status}): {message}")
        if exc.status in (400, 422):
            return CliError(EXIT_INVALID, f"rejected by the API server: {message}")
        if exc.status == 0 or exc.status >= 500:
            return CliError(EXIT_UNREACHABLE, f"API server error ({exc.status}): {message}")
        return CliError(EXIT_ERROR, f"API error {exc.status}: {message}")
    if isinstance(exc, ConfigException):
        return CliError(EXIT_UNREACHABLE, f"no cluster configured: {exc} (set KUBECONFIG or --kubeconfig)")
    if isinstance(exc, (HTTPError, ssl.SSLError, ConnectionError, TimeoutError, OSError)):
        return CliError(EXIT_UNREACHABLE, f"cannot reach the API server: {_short(exc)}")
    return CliError(EXIT_ERROR, f"{type(exc).__name__}: {exc}")


def _short(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)  # urllib3 MaxRetryError wraps the real cause
    return str(reason or exc)[:300]


class Cluster:
    """The custom-objects API of the current context, with errors as CliError."""

    def __init__(self, kubeconfig: str | None, context: str | None, timeout: float = 10.0):
        from kubernetes import client, config

        self.timeout = timeout
        cfg = client.Configuration()
        self.default_namespace = "default"
        try:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
            _, active = config.list_kube_config_contexts(config_file=kubeconfig)
            if context:
                contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)
                active = next((c for c in contexts if c["name"] == context), active)
            self.default_namespace = (active or {}).get("context", {}).get("namespace") or "default"
        except Exception as exc:  # noqa: BLE001 - a missing/broken kubeconfig
            if kubeconfig or not os.environ.get("KUBERNETES_SERVICE_HOST"):
                raise translate(exc) from None
            try:
                config.load_incluster_config(client_configuration=cfg)
                ns_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                self.default_namespace = ns_file.read_text().strip() if ns_file.exists() else "default"
            except Exception as exc2:  # noqa: BLE001
                raise translate(exc2) from None
        cfg.retries = 1  # fail fast when nothing listens: exit 4, not a minute of retries
        self.api = client.ApiClient(cfg)
        self.custom = client.CustomObjectsApi(self.api)
        self.client = client

    def call(self, fn: Callable[..., Any], *args: Any, what: str = "", **kwargs: Any) -> Any:
        try:
            return fn(*args, _request_timeout=self.timeout, **kwargs)
        except Exception as exc:  # noqa: BLE001 - translated
            raise translate(exc, what) from None

    def get(self, namespace: str, name: str) -> dict:
        return self.call(self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name,
                         what=f"{KIND} {namespace}/{name}")

    def list(self, namespace: str | None) -> dict:
        if namespace is None:
            return self.call(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        return self.call(self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL)

    def patch(self, namespace: str, name: str, body: dict, manager: str) -> dict:
        return self.call(self.custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name, body,
                         field_manager=manager, what=f"{KIND} {namespace}/{name}")

    def whoami(self) -> str:
        """The authenticated user (SelfSubjectReview), else the local login name."""
        try:
            review = self.client.AuthenticationV1Api(self.api).create_self_subject_review(
                {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}, _request_timeout=5)
            name = review.status.user_info.username
            if name:
                return name
        except Exception:  # noqa: BLE001 - informational only
            pass
        try:
            return getpass.getuser()
        except Exception:  # noqa: BLE001
            return "unknown"


def field_manager(user: str) -> str:
    """The managedFields manager: the operator records it in history as who asked."""
    printable = "".join(c for c in user if c.isprintable())
    return f"kubectl-fillprob:{printable}"[:128]


# --------------------------------------------------------------------------- output


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def _clean(obj: dict) -> dict:
    meta = obj.get("metadata") or {}
    meta.pop("managedFields", None)
    return obj


def dump(data: Any, output: str) -> str:
    if output == "json":
        return json.dumps(data, indent=2, sort_keys=False)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip("\n")


# --------------------------------------------------------------------------- commands


def cmd_status(args: argparse.Namespace, cluster: Cluster) -> int:
    namespace = None if args.all_namespaces else (args.namespace or cluster.default_namespace)
    if args.all_namespaces and args.name:
        raise CliError(EXIT_USAGE, "status NAME cannot be combined with --all-namespaces")
    history = None if args.history == 0 else args.history

    def fetch() -> tuple[str, str]:
        """(text to show, change key)."""
        if args.name:
            obj = _clean(cluster.get(namespace, args.name))  # type: ignore[arg-type]
            key = obj["metadata"].get("resourceVersion", "")
            if args.output:
                return dump(obj, args.output), key
            return render.render_status(obj, now_utc(), history), key
        listing = cluster.list(namespace)
        items = [_clean(o) for o in listing.get("items") or []]
        key = ",".join(o["metadata"].get("resourceVersion", "") for o in items)
        if args.output:
            return dump({"apiVersion": "v1", "kind": "List", "items": items}, args.output), key
        if not items:
            where = "any namespace" if namespace is None else f"namespace {namespace}"
            return f"No FillProbRollouts in {where}.", key
        return render.render_list(items, now_utc(), with_namespace=namespace is None), key

    if not args.watch:
        print(fetch()[0])
        return EXIT_OK
    return _watch(fetch, args.interval)


def _watch(fetch: Callable[[], tuple[str, str]], interval: float) -> int:
    """Poll and redraw on change (a terminal also redraws each tick: the window progresses).
    Ctrl-C (or SIGTERM) ends it with exit 0."""
    tty = sys.stdout.isatty()
    previous_key: str | None = None
    first = True

    def stop(*_: Any) -> NoReturn:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    # Ctrl-C is SIGINT; set explicitly: a process started in the background by a
    # non-interactive shell inherits SIGINT ignored, and Python then leaves it ignored.
    signal.signal(signal.SIGINT, stop)
    try:
        while True:
            try:
                text, key = fetch()
            except CliError as exc:
                if first:
                    raise
                text, key = f"error: {exc} (retrying every {interval:g}s)", f"error:{exc}"
            first = False
            if tty:
                sys.stdout.write("\033[H\033[2J" + f"Every {interval:g}s: kubectl fillprob   "
                                 f"{now_utc().strftime('%H:%M:%SZ')}   (Ctrl-C to stop)\n\n" + text + "\n")
            elif key != previous_key:
                sys.stdout.write(f"--- {now_utc().strftime('%Y-%m-%dT%H:%M:%SZ')}\n{text}\n")
            sys.stdout.flush()
            previous_key = key
            time.sleep(interval)
    except KeyboardInterrupt:
        return EXIT_OK


def _load_documents(path: str) -> list[Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(EXIT_USAGE, f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise CliError(EXIT_INVALID, f"{path}: not valid YAML: {exc}") from None


def cmd_plan(args: argparse.Namespace, cluster_factory: Callable[[], Cluster]) -> int:
    from .validation import DEFAULT_CRD_PATH, ValidationError, invalid_message, load_crd, validate_manifest

    try:
        load_crd(DEFAULT_CRD_PATH)
    except ValidationError as exc:
        raise CliError(EXIT_ERROR, f"{exc} (the package is incomplete: reinstall fillprob-operator)") from None
    docs = _load_documents(args.filename)
    rollouts = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if not rollouts:
        raise CliError(EXIT_INVALID, f"{args.filename}: no {KIND} in this file (kind: {KIND} expected)")
    cluster = cluster_factory() if args.live else None
    code = EXIT_OK
    for i, doc in enumerate(rollouts):
        if i:
            print("\n" + "=" * 80 + "\n")
        meta = doc.get("metadata") or {}
        name = str(meta.get("name", ""))
        namespace = args.namespace or meta.get("namespace") or (cluster.default_namespace if cluster else None)
        live_obj = None
        if cluster is not None:
            try:
                live_obj = cluster.get(namespace, name)  # type: ignore[arg-type]
            except CliError as exc:
                if exc.code != EXIT_NOT_FOUND:
                    raise
        errors = validate_manifest(doc, old=live_obj)
        if errors:
            print(f"{args.filename}: {invalid_message(f'{KIND}.{GROUP}', name, errors)}", file=sys.stderr)
            code = EXIT_INVALID
            continue
        try:
            spec = parse_spec(doc.get("spec"))
        except SpecError as exc:
            print(f"{args.filename}: {KIND} {name!r} is invalid: {exc}", file=sys.stderr)
            code = EXIT_INVALID
            continue
        status = (live_obj or {}).get("status") or None
        print("\n".join(render.plan_lines(spec, name, namespace, status, live=cluster is not None)))
        if cluster is not None:
            print()
            print("\n".join(_live_summary(doc, live_obj, namespace)))
    return code


def _live_summary(doc: dict, live: dict | None, namespace: str | None) -> list[str]:
    name = (doc.get("metadata") or {}).get("name")
    if live is None:
        return [f"Live: {KIND} {namespace}/{name} does not exist yet: applying this file starts at Phase 0."]
    status = live.get("status") or {}
    lines = [f"Live: {namespace}/{name} is at step {status.get('step', '-')} "
             f"(phase {status.get('phase', '-')}), state {status.get('state', '(no status yet)')}"]
    changed = _changed_fields(doc.get("spec") or {}, live.get("spec") or {})
    if changed:
        lines.append(f"Live: applying this file changes spec.{', spec.'.join(changed)} (a new generation: "
                     "a Halted/RolledBack rollout re-arms; a lower targetPhase applies at once)")
    else:
        lines.append("Live: the cluster's spec already matches this file")
    return lines


def _changed_fields(file_spec: dict, live_spec: dict) -> list[str]:
    """Top-level spec fields whose meaning differs (defaults filled in on both sides)."""
    try:
        mine, theirs = parse_spec(file_spec), parse_spec(live_spec)
    except SpecError:
        return sorted(k for k in set(file_spec) | set(live_spec) if file_spec.get(k) != live_spec.get(k))
    return sorted(info.alias or name for name, info in type(mine).model_fields.items()
                  if getattr(mine, name) != getattr(theirs, name))


def cmd_rollback(args: argparse.Namespace, cluster: Cluster) -> int:
    namespace = args.namespace or cluster.default_namespace
    cluster.get(namespace, args.name)  # exit 3 before anything else
    user = cluster.whoami()
    asked_at = now_utc().replace(microsecond=0)
    body = {"metadata": {"annotations": {ROLLBACK_ANNOTATION: args.playbook,
                                         ROLLBACK_REASON_ANNOTATION: args.reason}}}
    cluster.patch(namespace, args.name, body, field_manager(user))
    print(f"rollback {args.playbook} requested on {KIND} {namespace}/{args.name} by {user}: {args.reason}")
    if not args.wait:
        print(f"the operator applies it and records it in status.history; follow with "
              f"`kubectl fillprob status {args.name} -n {namespace} --watch`")
        return EXIT_OK

    def applied() -> dict | None:
        obj = cluster.get(namespace, args.name)
        if ROLLBACK_ANNOTATION in ((obj.get("metadata") or {}).get("annotations") or {}):
            return None
        for entry in reversed((obj.get("status") or {}).get("history") or []):
            at = render.parse_time(entry.get("at"))
            if entry.get("reason") == "ManualRollback" and at and at >= asked_at:
                return entry
        return None

    entry = _poll(applied, args.timeout)
    if entry is None:
        print(f"error: the operator did not apply the rollback within {args.timeout:g}s "
              f"(is it running and watching {namespace}?)", file=sys.stderr)
        return EXIT_ERROR
    print(f"{entry.get('at')}  {entry.get('step')}  {entry.get('action')}  {entry.get('reason')}  "
          f"{render.compact_evidence(entry.get('evidence'), 160)}")
    return EXIT_OK if entry.get("action", "").startswith("Rollback" + args.playbook) else EXIT_ERROR


def cmd_suspend(args: argparse.Namespace, cluster: Cluster, suspend: bool) -> int:
    namespace = args.namespace or cluster.default_namespace
    cluster.get(namespace, args.name)
    body: dict[str, Any] = {"spec": {"suspend": suspend}}
    reason = getattr(args, "reason", None)
    if suspend and reason:
        body["metadata"] = {"annotations": {SUSPEND_REASON_ANNOTATION: reason}}
    elif not suspend:
        body["metadata"] = {"annotations": {SUSPEND_REASON_ANNOTATION: None}}
    cluster.patch(namespace, args.name, body, field_manager(cluster.whoami()))
    verb = "suspended" if suspend else "resumed"
    print(f"{KIND} {namespace}/{args.name} {verb} (spec.suspend={str(suspend).lower()})"
          + (f": {reason}" if suspend and reason else ""))
    if not args.wait:
        return EXIT_OK

    def settled() -> dict | None:
        status = cluster.get(namespace, args.name).get("status") or {}
        return status if (status.get("state") == "Suspended") == suspend else None

    status = _poll(settled, args.timeout)
    if status is None:
        print(f"error: the operator did not report the change within {args.timeout:g}s", file=sys.stderr)
        return EXIT_ERROR
    print(f"state {status.get('state')} at step {status.get('step')}")
    return EXIT_OK


def _poll(probe: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(every)


DISTRIBUTION = "fillprob-operator"  # pyproject.toml [project].name


def package_version() -> str:
    """The installed distribution's version (importlib.metadata), as the wheel recorded it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (fillprob-operator is not installed; running from a source tree)"


def version_info() -> dict[str, Any]:
    """What `version` prints: the package version and the API of the CRD `plan` validates with."""
    import hashlib

    from .validation import DEFAULT_CRD_PATH, ValidationError, load_crd

    info: dict[str, Any] = {"plugin": "kubectl-fillprob", "version": package_version(),
                            "python": sys.version.split()[0]}
    try:
        crd = load_crd(DEFAULT_CRD_PATH)
    except ValidationError as exc:
        raise CliError(EXIT_ERROR, f"{exc} (the package is incomplete: reinstall {DISTRIBUTION})") from None
    spec = crd["spec"]
    storage = next((v["name"] for v in spec["versions"] if v.get("storage")), spec["versions"][0]["name"])
    info["crd"] = {
        "name": crd["metadata"]["name"],
        "kind": spec["names"]["kind"],
        "apiVersion": f"{spec['group']}/{storage}",
        "servedVersions": [v["name"] for v in spec["versions"] if v.get("served", True)],
        "file": str(DEFAULT_CRD_PATH),
        "sha256": hashlib.sha256(Path(DEFAULT_CRD_PATH).read_bytes()).hexdigest(),
    }
    return info


def cmd_version(args: argparse.Namespace) -> int:
    info = version_info()
    if args.output:
        print(dump(info, args.output))
        return EXIT_OK
    crd = info["crd"]
    print(f"kubectl-fillprob {info['version']}")
    print(f"API:    {crd['apiVersion']} {crd['kind']} (CRD {crd['name']}, served: {', '.join(crd['servedVersions'])})")
    print(f"CRD:    {crd['file']} (sha256 {crd['sha256'][:12]})")
    print(f"Python: {info['python']}")
    return EXIT_OK


# --------------------------------------------------------------------------- argument parsing


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", help="namespace (default: the context's, else default)")
    common.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    common.add_argument("--context", help="kubeconfig context (default: the current one)")
    common.add_argument("--request-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="per API request (default 10)")

    parser = _Parser(
        prog="kubectl fillprob",
        description="Read and steer FillProbRollouts (grinder.io/v1alpha1): the fill-probability rollout "
                    "ladder of runbook 32, run by the fillprob operator.",
        epilog=EXIT_CODES_HELP + "\nMore: docs/plugin.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kubectl-fillprob {package_version()}",
                        help="print the plugin's version and exit (`version` also shows the CRD's API)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("status", parents=[common], formatter_class=fmt, epilog=EXIT_CODES_HELP,
                       help="the ladder, state, window, thresholds, conditions and timeline",
                       description="Without NAME: every FillProbRollout in the namespace, one line each.")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="list across all namespaces")
    p.add_argument("-o", "--output", choices=("json", "yaml"), help="the object(s) as JSON or YAML")
    p.add_argument("-w", "--watch", action="store_true", help="redraw on change; Ctrl-C exits 0")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="--watch poll interval (1)")
    p.add_argument("--history", type=int, default=15, metavar="N", help="timeline entries to show (0: all)")

    p = sub.add_parser("plan", parents=[common], formatter_class=fmt, epilog=EXIT_CODES_HELP,
                       help="validate a manifest offline and show each step's env and gates",
                       description="Validates FILE as the API server would (schema and CEL rules, same "
                                   "messages), then prints every step the operator will walk: the env the "
                                   "Deployment gets, the post-restart checks and the no-go signals with "
                                   "their playbook. Needs no cluster unless --live.")
    p.add_argument("-f", "--filename", required=True, metavar="FILE", help="manifest (YAML, '-' for stdin)")
    p.add_argument("--live", action="store_true",
                   help="compare with the cluster: which steps are done, which is next, what the file changes")

    p = sub.add_parser("rollback", parents=[common], formatter_class=fmt, epilog=EXIT_CODES_HELP,
                       help="apply playbook R1|R2|R3 now (annotation grinder.io/rollback)",
                       description="Sets grinder.io/rollback and grinder.io/rollback-reason; the operator "
                                   "applies the playbook, removes the annotation and records who "
                                   "(kubectl-fillprob:<user>) and why in status.history. R1: enforcement "
                                   "off; R2: allowlist narrowed to the last known-good set; R3: "
                                   "auto-threshold off.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("playbook", metavar="R1|R2|R3", type=str.upper, choices=("R1", "R2", "R3"))
    p.add_argument("--reason", required=True, help="why (recorded in history and the Event)")
    p.add_argument("--wait", action="store_true", help="wait until the operator has applied it")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="for --wait (60)")

    for name, text in (("suspend", "set spec.suspend=true: the operator changes nothing, keeps reporting"),
                       ("resume", "set spec.suspend=false: the operator carries on from status")):
        p = sub.add_parser(name, parents=[common], formatter_class=fmt, epilog=EXIT_CODES_HELP, help=text,
                           description=text)
        p.add_argument("name", metavar="NAME")
        if name == "suspend":
            p.add_argument("--reason", help=f"kept in the {SUSPEND_REASON_ANNOTATION} annotation, shown by status")
        p.add_argument("--wait", action="store_true", help="wait until the operator reports it")
        p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="for --wait (60)")

    p = sub.add_parser("version", formatter_class=fmt, epilog=EXIT_CODES_HELP,
                       help="the plugin's version and the API version of the CRD it validates with",
                       description="Prints the installed package's version (fillprob-operator), the "
                                   "FillProbRollout API of the CRD shipped in the package (the one `plan` "
                                   "validates against; the same file as crds/ in the repository), where "
                                   "that file is and its sha256, and the Python running the plugin. "
                                   "Needs no cluster.")
    p.add_argument("-o", "--output", choices=("json", "yaml"), help="as JSON or YAML")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (64)
        return int(exc.code or 0)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    def cluster() -> Cluster:
        return Cluster(args.kubeconfig, args.context, args.request_timeout)

    try:
        if args.command == "version":
            return cmd_version(args)
        if args.command == "plan":
            return cmd_plan(args, cluster)
        if args.command == "status":
            return cmd_status(args, cluster())
        if args.command == "rollback":
            return cmd_rollback(args, cluster())
        return cmd_suspend(args, cluster(), suspend=args.command == "suspend")
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
