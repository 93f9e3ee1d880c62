"""Can every node of the cluster reach the MLflow tracking store? Checked before a job's work starts.

Workers log training metrics, Tune trials and actors resolve ``models:/`` URIs from their own nodes.
A SQLite file or a loopback address reaches only the machine it names: on a cluster of several
nodes such a job would fail after hours of collection, so it is refused at start. ``{head}`` in a
tracking URI stands for the Ray head's address (the cluster's MLflow server runs on the head).
"""

from __future__ import annotations

import ipaddress
import os
import urllib.error
import urllib.request
from urllib.parse import urlparse

HEAD = "{head}"
_PROBE_TIMEOUT_S = 10.0
_checked: set[tuple[str, frozenset[str]]] = set()


class TrackingUnreachable(ValueError):
    """A tracking URI some node of the cluster cannot reach."""


def head_address() -> str:
    """The address the Ray head advertises (its GCS host): the one every node already reaches."""
    import ray

    from saeuron.cluster.actor_pool import ensure_ray

    ensure_ray()
    return ray.get_runtime_context().gcs_address.rsplit(":", 1)[0]


def fill_head(tracking_uri: str) -> str:
    return tracking_uri.replace(HEAD, head_address()) if HEAD in tracking_uri else tracking_uri


def is_loopback(host: str | None) -> bool:
    if not host or host in ("localhost", "0.0.0.0"):  # 0.0.0.0 as a destination is this machine too
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_tracking_reach(written: str, resolved: str) -> None:
    """Refuse a tracking store some node cannot reach: ``written`` is the config's URI, ``resolved`` what it names
    here (``{head}`` filled, SQLite default made). Each cluster is probed once per process."""
    import ray

    from saeuron.cluster.actor_pool import ensure_ray

    nodes: dict[str, str] = {}
    if ray.is_initialized() or os.environ.get("RAY_ADDRESS"):  # a job on a cluster (a local job needs no Ray for this)
        ensure_ray()
        nodes = {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]}
    key = (resolved, frozenset(nodes))
    if key in _checked:
        return
    scheme = urlparse(resolved).scheme
    fix = (
        "start an MLflow server every node reaches (cluster.yaml starts one on the head) and pass "
        "--tracking_uri http://{head}:5000 ({head}: the Ray head's address)"
    )
    several = len(nodes) > 1 or (bool(nodes) and _autoscales())
    if several and scheme not in ("http", "https"):
        raise TrackingUnreachable(
            f"tracking URI {resolved} is a store on this machine, but this Ray cluster has "
            f"{len(nodes)} node(s) ({', '.join(sorted(set(nodes.values())))}) or starts more: workers on other nodes "
            f"could not log to it. {fix}"
        )
    if several and HEAD not in written and is_loopback(urlparse(written).hostname):
        raise TrackingUnreachable(
            f"tracking URI {written} names this machine's loopback address, but this Ray cluster has nodes at "
            f"{', '.join(sorted(set(nodes.values())))}: on every other node it names that node itself. {fix}"
        )
    if scheme in ("http", "https"):
        error = probe(resolved)
        if error:
            raise TrackingUnreachable(
                f"the MLflow tracking server {resolved} does not answer here ({error}): start it "
                f"(mlflow server --host ... --port ...) or fix --tracking_uri"
            )
        if several:
            _probe_from_nodes(resolved, nodes)
    _checked.add(key)


def probe(uri: str, timeout_s: float = _PROBE_TIMEOUT_S) -> str:
    """'' when the MLflow server at ``uri`` answers its API from here, else what went wrong. The health check
    alone is not enough: MLflow's security middleware lets it through whatever the Host header, and then refuses
    every API call from a host outside ``--allowed-hosts`` (by default: localhost and private networks)."""
    base = uri.rstrip("/")
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=timeout_s) as response:
            if response.status != 200:
                return f"HTTP {response.status} from /health"
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=_", timeout=timeout_s):
            return ""
    except urllib.error.HTTPError as error:
        # 404: the API answered (no such experiment); 401: it wants the credentials MLflow's client sends, not ours.
        if error.code in (401, 404):
            return ""
        allowed = " (its --allowed-hosts must admit this host, or it wants credentials)" if error.code in (400, 403) else ""
        return f"HTTP {error.code} from its API{allowed}"
    except (urllib.error.URLError, OSError) as error:
        return str(getattr(error, "reason", error))


def _probe_from_nodes(uri: str, nodes: dict[str, str]) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote_probe = ray.remote(num_cpus=0, max_retries=0)(probe)
    pending = {
        node_id: remote_probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(uri)
        for node_id in nodes
    }
    failures = []
    for node_id, ref in pending.items():
        try:
            error = ray.get(ref, timeout=_PROBE_TIMEOUT_S * 6)
        except Exception as failure:  # a node that cannot run the probe cannot log either
            error = f"the probe did not run: {type(failure).__name__}"
        if error:
            failures.append(f"{nodes[node_id]} ({error})")
    if failures:
        raise TrackingUnreachable(
            f"the MLflow tracking server {uri} answers here but not from node(s) {', '.join(failures)}: serve it on an "
            f"address the nodes reach (mlflow server --host 0.0.0.0 on the head; open its port to the cluster's "
            f"network) and pass --tracking_uri http://{{head}}:PORT"
        )


def _autoscales() -> bool:
    """Whether the autoscaler may start nodes beside the head (node types with room for more than one node)."""
    from saeuron.cluster.placement import node_types

    return sum(t.max_count if t.max_count >= 0 else 2 for t in node_types()) > 1
