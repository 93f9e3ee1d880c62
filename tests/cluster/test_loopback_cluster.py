"""The study on a real multi-node Ray cluster, on loopback: a head and two worker nodes (`ray start`, each with its
own address in 127.0.0.0/8, temp dir and node cache, the workers advertising a custom resource that stands in for
a GPU node type), the S3 emulator as the storage root, and an MLflow server on the head whose backend store is
PostgreSQL and whose artefacts are in the bucket. The tiny study is submitted with `ray job submit`; one worker
node is stopped during collection and the other during training, as lost machines stop."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
from helpers import REPO, TINY_SCORES, tiny_study_argv
from services import BIN, Postgres, free_port, kill_node, node_of_process, ray_start, start_mlflow_server, stop_groups, wait_for

HEAD = "127.0.0.2"
WORKERS = ("127.0.0.3", "127.0.0.4")
WORKER_RESOURCE = "loopback_worker"
PLACED = [f"--resources.{stage}.node_resource={WORKER_RESOURCE}" for stage in ("actor", "trainer", "trial")]
STYLE_HOOK = "unet.up_blocks.1.attentions.2"
STEPS = 56
"""Training steps of the tiny study's style SAE (14 a epoch × 4), checkpointed every 5 here (only at its end by
default) so that a node lost mid-run has a checkpoint to resume from that is not the last one."""


class LoopbackCluster:
    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env, self.groups = root, env, []
        self.port, self.dashboard = free_port(HEAD), free_port(HEAD)
        self.address = f"http://{HEAD}:{self.dashboard}"
        self.temp_dirs: dict[str, str] = {}

    def start_head(self) -> None:
        self.temp_dirs[HEAD] = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # Ray's socket paths must stay short
        args = [
            "--head",
            f"--node-ip-address={HEAD}",
            f"--port={self.port}",
            f"--dashboard-host={HEAD}",
            f"--dashboard-port={self.dashboard}",
            "--num-cpus=1",
            f"--temp-dir={self.temp_dirs[HEAD]}",
        ]
        self.groups.append(ray_start(args, self._node_env(HEAD)))

    def start_worker(self, ip: str, index: int) -> None:
        self.temp_dirs[ip] = tempfile.mkdtemp(prefix=f"rw{index}", dir="/tmp")
        args = [
            f"--address={HEAD}:{self.port}",
            f"--node-ip-address={ip}",
            "--num-cpus=2",
            f"--resources={json.dumps({WORKER_RESOURCE: 1})}",
            f"--temp-dir={self.temp_dirs[ip]}",
            f"--dashboard-agent-listen-port={free_port(ip)}",
        ]
        self.groups.append(ray_start(args, self._node_env(ip)))

    def _node_env(self, ip: str) -> dict[str, str]:
        return {**self.env, "SAEURON_CACHE": str(self.root / "cache" / ip)}  # each node its own cache, as machines

    def node_ids(self) -> dict[str, str]:
        """{address: node id} of the live nodes (asked by a driver of its own: this one has no token set up)."""
        script = (
            f"import json, ray; ray.init(address='{HEAD}:{self.port}', logging_level='ERROR'); "
            "print(json.dumps({n['NodeManagerAddress']: n['NodeID'] for n in ray.nodes() if n['Alive']}))"
        )
        done = subprocess.run([sys.executable, "-c", script], env=self.env, capture_output=True, text=True, timeout=120)
        return json.loads(done.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        stop_groups(self.groups)
        for temp_dir in self.temp_dirs.values():
            kill_node(temp_dir)


@pytest.fixture
def loopback_cluster(tmp_path, s3):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    env["MLFLOW_S3_ENDPOINT_URL"] = f"http://{s3.endpoint}"  # the server stores artefacts in the emulator
    postgres = Postgres()
    cluster = LoopbackCluster(tmp_path, env)
    bucket = s3.bucket("saeuron-cluster")
    try:
        backend = postgres.start()
        cluster.start_head()
        for index, ip in enumerate(WORKERS):
            cluster.start_worker(ip, index)
        group, tracking = start_mlflow_server(HEAD, backend, f"s3://{bucket}/mlflow", tmp_path / "mlflow.log", env)
        cluster.groups.append(group)
        wait_for(f"{cluster.address}/api/version", 90)
        yield cluster, bucket, tracking.replace(HEAD, "{head}")
    finally:
        cluster.stop()
        postgres.stop()


def submit(cluster: LoopbackCluster, log: Path, *argv: str) -> subprocess.Popen:
    command = [str(BIN / "ray"), "job", "submit", "--address", cluster.address, "--working-dir", str(REPO), "--"]
    with open(log, "w") as out:
        return subprocess.Popen([*command, "python", *argv], env=cluster.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def wait_for_key(s3, bucket: str, prefix: str, contains: str, job: subprocess.Popen, log: Path, seconds: float = 600) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if any(contains in key for key in s3.keys(bucket, prefix)):
            return
        assert job.poll() is None, f"the job ended before {prefix}*{contains}* appeared: {log.read_text()[-4000:]}"
        time.sleep(0.5)
    raise TimeoutError(f"no {prefix}*{contains}* in {seconds} s: {log.read_text()[-4000:]}")


def refusals(cluster: LoopbackCluster, s3, bucket: str, tracking: str) -> str:
    """Three bad inputs, each run as the study's driver on the cluster: each must stop before any work."""
    study = s3.uri(bucket, "refused")
    script = f"""
import sys
from saeuron.config import parse_config
from saeuron.study import StudyConfig, run_study
base = {tiny_study_argv(study)!r} + {PLACED!r}
for extra in (["--tracking_uri", {tracking.replace("{head}", "127.0.0.1")!r}], ["--tracking_uri", "http://{{head}}:9"],
              ["--tracking_uri", {tracking!r}, "--resources.actor.node_resource", "gpu_sampler"]):
    try:
        run_study(parse_config(StudyConfig, base + extra))
        print("NOT REFUSED", extra)
    except Exception as error:
        print("REFUSED", type(error).__name__, error)
"""
    env = {**cluster.env, "RAY_ADDRESS": f"{HEAD}:{cluster.port}", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    return done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.own_ray_head
def test_the_study_on_three_loopback_nodes_survives_lost_nodes_and_scores_as_on_one_machine(loopback_cluster, s3, tmp_path):
    cluster, bucket, tracking = loopback_cluster
    heads_id = cluster.node_ids()[HEAD]

    said = refusals(cluster, s3, bucket, tracking)
    assert "NOT REFUSED" not in said, said
    assert "REFUSED TrackingUnreachable tracking URI http://127.0.0.1" in said and "names this machine's loopback" in said
    assert "REFUSED TrackingUnreachable the MLflow tracking server http://127.0.0.2:9 does not answer here" in said
    assert "REFUSED PlacementError resources.actor asks each unit for {'CPU': 1.0, 'gpu_sampler': 0.001}" in said
    assert not s3.keys(bucket, "refused/activations/"), "a refused study collected"

    log = tmp_path / "job.log"
    argv = [*tiny_study_argv(s3.uri(bucket, "study")), "--tracking_uri", tracking, "--train.checkpoint_every", "5", *PLACED]
    job = submit(cluster, log, "jobs/pipeline.py", *argv)
    temp_dirs = [cluster.temp_dirs[ip] for ip in WORKERS]

    # Collection: once its first shard is in the bucket, the node sampling is lost.
    wait_for_key(s3, bucket, "study/activations/hookpoint=", ".parquet", job, log)
    lost = node_of_process("ActivationCollector", temp_dirs)
    assert lost is not None, "no collector running on a worker node"
    assert kill_node(lost) > 0
    lost_ip = next(ip for ip in WORKERS if cluster.temp_dirs[ip] == lost)
    # A machine comes back (the autoscaler's replacement): training then has two nodes again.
    wait_for_key(s3, bucket, "study/activations/", "manifest.json", job, log)
    cluster.start_worker(lost_ip, 2)
    temp_dirs = [cluster.temp_dirs[ip] for ip in WORKERS]

    # Training: once Ray Train has registered a checkpoint (its controller then writes the snapshot of its checkpoints;
    # a checkpoint's files alone, even a second one's, do not mean the controller knows it), the node training is
    # lost; Ray Train resumes from that checkpoint.
    wait_for_key(s3, bucket, "study/ray_train/", f"{STYLE_HOOK}/checkpoint_manager_snapshot.json", job, log)
    training = node_of_process("RayTrainWorker", temp_dirs)
    assert training is not None, "no training worker on a worker node"
    assert kill_node(training) > 0

    assert job.wait(timeout=1500) == 0, log.read_text()[-6000:]
    printed = log.read_text()
    assert "succeeded" in printed and "report: s3://saeuron-cluster/study/reports/" in printed

    # Every row exactly once, computed on worker nodes only (the manifest counts rows per node).
    manifest = json.loads(s3.read(bucket, "study/activations/manifest.json"))
    assert manifest["complete"] and manifest["prompts_collected"] == 40
    assert sum(manifest["nodes"].values()) == sum(manifest["rows"].values()) == 2 * 40 * 6
    assert heads_id not in manifest["nodes"]
    from saeuron.collection.activations import read_hookpoint

    for hookpoint in manifest["rows"]:
        table = read_hookpoint(s3.uri(bucket, "study/activations"), hookpoint, ["prompt_id", "step_index"])
        keys = list(zip(table.column("prompt_id").to_pylist(), table.column("step_index").to_pylist(), strict=True))
        assert len(keys) == len(set(keys)) == 40 * 6, hookpoint

    # MLflow (PostgreSQL behind the server): scores as on one machine, training resumed, where it ran.
    mlflow.set_tracking_uri(tracking.replace("{head}", HEAD))
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("saeuron").experiment_id
    (study,) = client.search_runs([experiment], "tags.`saeuron.stage` = 'study'")
    metrics = study.data.metrics
    assert {name: {k: metrics[f"{name}.{k}"] for k in expected} for name, expected in TINY_SCORES.items()} == TINY_SCORES
    (train,) = client.search_runs([experiment], "tags.`saeuron.stage` = 'train'")
    assert train.data.tags["mlflow.parentRunId"] == study.info.run_id
    assert train.data.metrics[f"{STYLE_HOOK}/final_steps"] == STEPS
    assert 5 <= train.data.metrics[f"{STYLE_HOOK}/final_resumed_from_step"] < STEPS  # from a checkpoint, not the end
    trained_on = {v for k, v in train.data.tags.items() if k.startswith(f"nodes.{STYLE_HOOK}.")}
    assert len(trained_on) >= 2 and heads_id not in trained_on  # the lost node, then the one it resumed on
    (collect,) = client.search_runs([experiment], "tags.`saeuron.stage` = 'collect'")
    assert set(collect.data.tags["saeuron.nodes"].split(",")) == set(manifest["nodes"])

    # The registry from a fresh process: the saeuron loader and MLflow's own.
    hookpoint = STYLE_HOOK
    check = f"""
import mlflow, numpy as np
from saeuron.cluster.registry import load_sae
uri = "models:/saeuron-minicanvas-{hookpoint}@current"
sae = load_sae(uri, "{hookpoint}")
model = mlflow.pyfunc.load_model(uri)
x = np.random.default_rng(0).standard_normal((4, sae.d_in)).astype("float32")
print("LOADED", "same" if model.predict(x).shape == (4, sae.d_in) else model.predict(x).shape)
"""
    env = {**cluster.env, "MLFLOW_TRACKING_URI": tracking.replace("{head}", HEAD), "PYTHONPATH": str(REPO)}
    env["SAEURON_CACHE"] = str(tmp_path / "fresh-cache")
    done = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=300)
    assert "LOADED same" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]
