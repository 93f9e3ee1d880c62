"""cluster.yaml (AWS) and cluster-gcp.yaml (GCP) are valid for the Ray cluster launcher and keep their promises.

Nothing is started and no cloud is called: ``prepare_config`` only merges the provider's defaults.yaml (no SDK, no
credentials), which is everything ``ray up`` does before the provider's bootstrap, the first step that needs the
cloud. The schema leaves ``node_config`` to the provider, so what a node is given there is asserted here by hand.
"""

import copy
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import REPO
from ray._private.authentication.authentication_token_setup import AUTH_MODE_ENV_VAR, _get_default_token_path
from ray.autoscaler._private.util import prepare_config, validate_config

from saeuron.storage.mirror import CACHE_ENV

FILES = {"aws": REPO / "cluster.yaml", "gcp": REPO / "cluster-gcp.yaml"}
SCHEME = {"aws": "s3", "gcp": "gs"}
WORKERS = ("gpu_sampler", "gpu_trainer")
# (vCPUs, GPUs) of the machine types the files name, from the clouds' instance-type pages: a node type must not
# advertise more than its machine has.
MACHINES = {
    "m6i.2xlarge": (8, 0),
    "g5.2xlarge": (8, 1),
    "p4d.24xlarge": (96, 8),
    "n2-standard-8": (8, 0),
    "g2-standard-8": (8, 1),
    "a2-highgpu-8g": (96, 8),
}
GCP_STORAGE_SCOPES = {
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/devstorage.read_write",
    "https://www.googleapis.com/auth/devstorage.full_control",
}
VENV = "~/saeuron-env"
every_cloud = pytest.mark.parametrize("cloud", sorted(FILES))


def load(cloud: str) -> dict:
    return yaml.safe_load(FILES[cloud].read_text())


def setup_of(cfg: dict, node_type: str) -> str:
    """The setup commands one node type runs, after prepare_config has folded setup_commands in."""
    if node_type == cfg["head_node_type"]:
        return "\n".join(cfg["head_setup_commands"])
    return "\n".join(cfg["available_node_types"][node_type].get("worker_setup_commands", cfg["worker_setup_commands"]))


def before_ray_start(commands: list[str]) -> list[str]:
    """What each `ray start` command line runs before `ray start` itself (its exports and activation)."""
    prefixes = [cmd[: cmd.index("ray start")] for cmd in commands if "ray start" in cmd]
    assert prefixes, "no ray start command"
    return prefixes


def machine(cloud: str, node_config: dict) -> str:
    return node_config["InstanceType"] if cloud == "aws" else node_config["machineType"]


def boot_image(cloud: str, node_config: dict) -> str:
    if cloud == "aws":
        return node_config["ImageId"]
    (boot,) = [d for d in node_config["disks"] if d.get("boot")]
    return boot["initializeParams"]["sourceImage"]


def root_disk_gb(cloud: str, node_config: dict) -> int:
    if cloud == "aws":
        (root,) = [d for d in node_config["BlockDeviceMappings"] if d["DeviceName"] == "/dev/sda1"]
        return root["Ebs"]["VolumeSize"]
    (boot,) = [d for d in node_config["disks"] if d.get("boot")]
    return boot["initializeParams"]["diskSizeGb"]


def header(cloud: str) -> str:
    """The leading comment block, continuation lines joined."""
    lines = []
    for line in FILES[cloud].read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return re.sub(r"\\\n\s*", "", "\n".join(lines))


@every_cloud
def test_validates_against_the_launchers_schema_and_refuses_a_broken_key(cloud):
    prepared = prepare_config(load(cloud))
    validate_config(prepared)
    # The provider's defaults.yaml brings node types of its own; ours must replace them, not join them.
    assert set(prepared["available_node_types"]) == {"head", *WORKERS}

    broken = load(cloud)
    broken["available_node_types"]["gpu_sampler"]["node_confg"] = broken["available_node_types"]["gpu_sampler"].pop("node_config")
    with pytest.raises(Exception, match="node_confg|node_config"):
        validate_config(prepare_config(copy.deepcopy(broken)))
    misspelt = load(cloud)
    misspelt["setup_comands"] = misspelt.pop("setup_commands")
    with pytest.raises(Exception, match="setup_comands"):
        validate_config(prepare_config(misspelt))


@every_cloud
def test_every_command_is_valid_bash(cloud):
    cfg = load(cloud)
    keys = [
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    ]
    for key in keys:
        for cmd in cfg[key]:
            done = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
            assert done.returncode == 0, f"{key}: {cmd!r}: {done.stderr}"


@every_cloud
def test_every_node_runs_ray_from_a_python_311_venv(cloud):
    cfg = prepare_config(load(cloud))
    for node_type in cfg["available_node_types"]:
        setup = setup_of(cfg, node_type)
        install = re.search(r"uv python install 3\.11\b", setup)
        venv = re.search(rf"uv venv --python 3\.11\b.*{re.escape(VENV)}", setup)
        package = setup.find(f"{VENV}/bin/pip install -e ~/saeuron")
        assert install and venv and package > venv.start() > install.start(), f"{node_type}: {setup}"
        assert not re.search(r"python3(\.10)? -m venv", setup), f"{node_type} builds a venv from the system Python"
    for prefix in before_ray_start(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]):
        assert f"source {VENV}/bin/activate" in prefix


@every_cloud
def test_token_auth_on_every_node_with_one_mounted_token(cloud):
    cfg = load(cloud)
    token = "~/" + _get_default_token_path().relative_to(Path.home()).as_posix()  # where Ray looks: ~/.ray/auth_token
    assert cfg["file_mounts"].get(token) == token  # the local token, so the client and every node share it
    for prefix in before_ray_start(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]):
        assert re.search(rf"\b{AUTH_MODE_ENV_VAR}=token\b", prefix), prefix
    assert f"{AUTH_MODE_ENV_VAR}=token ray job submit" in header(cloud)


@every_cloud
def test_the_bucket_is_the_storage_root_and_every_node_can_reach_it(cloud):
    text = FILES[cloud].read_text()
    assert not re.search(r"\befs\b|\bnfs|/mnt/shared", text, re.IGNORECASE)
    assert f"--study_dir {SCHEME[cloud]}://BUCKET/runs/unlearncanvas" in header(cloud)
    for name, node_type in load(cloud)["available_node_types"].items():
        node_config = node_type["node_config"]
        if cloud == "aws":
            assert node_config["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
        else:
            scopes = {scope for account in node_config["serviceAccounts"] for scope in account["scopes"]}
            assert scopes & GCP_STORAGE_SCOPES, f"{name}: no storage scope in {scopes}"


@every_cloud
def test_mlflow_runs_on_the_head_with_postgresql_and_bucket_artifacts(cloud):
    cfg = load(cloud)
    (server,) = [cmd for cmd in cfg["head_start_ray_commands"] if "mlflow server" in cmd]
    args = shlex.split(re.search(r"mlflow server([^']*)'", server).group(1))
    assert args.count("--serve-artifacts") == 1 and "--no-serve-artifacts" not in args
    args.remove("--serve-artifacts")
    flags = dict(zip(args[::2], args[1::2]))
    assert (
        flags["--backend-store-uri"].startswith("postgresql+psycopg2://")
        and "127.0.0.1:5432/mlflow" in flags["--backend-store-uri"]
    )
    assert not re.search(r"postgresql\+psycopg2://[^@/]*:[^@/]*@", flags["--backend-store-uri"]), "a password in the YAML"
    assert flags["--artifacts-destination"].startswith(f"{SCHEME[cloud]}://")
    assert (flags["--workers"], flags["--host"], flags["--port"]) == ("1", "0.0.0.0", "5000")
    # In its own session and process group, detached from the launcher's SSH session, its output in a file.
    assert re.search(r"setsid nohup bash -c '[^']*mlflow server[^']*' > \S+ 2>&1 < /dev/null &$", server.strip())

    head_setup = "\n".join(cfg["head_setup_commands"])
    assert re.search(r"apt-get .*install .*\bpostgresql\b", head_setup)
    assert "createuser mlflow" in head_setup and "createdb --owner=mlflow mlflow" in head_setup
    artifact_client = {"aws": "boto3", "gcp": "google-cloud-storage"}[cloud]
    assert re.search(rf"pip install .*psycopg2-binary.*\b{artifact_client}\b", head_setup)
    (head_start,) = [cmd for cmd in cfg["head_start_ray_commands"] if "ray start" in cmd]
    assert "--dashboard-host=127.0.0.1" in head_start  # the dashboard only through the tunnel


def test_aws_opens_only_ssh_to_the_world():
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    cfg = load("aws")
    assert not any("SecurityGroupIds" in t["node_config"] for t in cfg["available_node_types"].values())
    # The rules Ray's bootstrap writes into the group: its defaults plus the file's own.
    rules = _create_default_inbound_rules({"sg-cluster"}, cfg["provider"]["security_group"].get("IpPermissions", []))
    public = [r for r in rules if r.get("IpRanges") or r.get("Ipv6Ranges") or r.get("PrefixListIds")]
    assert {(r["FromPort"], r["ToPort"]) for r in public} == {(22, 22)}
    # The rest is the group's members talking to each other (MLflow's 5000 among them).
    assert all(r["UserIdGroupPairs"] == [{"GroupId": "sg-cluster"}] for r in rules if r not in public)


def test_gcp_opens_only_ssh_to_the_world():
    # Ray's GCP provider has no firewall setting: the rules are the one-time gcloud commands in the header, and
    # what the file can hold is that every node sits in that network and carries the rules' target tag.
    rules = re.findall(r"gcloud compute firewall-rules create (\S+)([^\n]*)", header("gcp"))
    assert {name for name, _ in rules} == {"saeuron-ssh", "saeuron-internal"}
    for name, flags in rules:
        assert "--network=saeuron" in flags and "--target-tags=saeuron" in flags, name
        if "--source-ranges=" in flags:
            assert "--allow=tcp:22 " in flags + " " and "--source-tags" not in flags, name
        else:
            assert "--source-tags=saeuron" in flags, name
    for name, node_type in load("gcp")["available_node_types"].items():
        node_config = node_type["node_config"]
        assert "saeuron" in node_config["tags"]["items"], name
        # A node without networkInterfaces would make Ray's bootstrap put every node on the default network.
        (interface,) = node_config["networkInterfaces"]
        assert interface["subnetwork"].endswith("/subnetworks/saeuron"), name


@every_cloud
def test_node_types_advertise_what_saeuron_places_on_them(cloud):
    types = load(cloud)["available_node_types"]
    head, sampler, trainer = types["head"], types["gpu_sampler"], types["gpu_trainer"]
    assert head["resources"] == {"CPU": 0}
    assert sampler["resources"]["gpu_sampler"] >= 1 and sampler["resources"]["GPU"] == 1
    assert trainer["resources"]["gpu_trainer"] >= 1 and trainer["resources"]["GPU"] == 8
    assert sampler["min_workers"] == sampler["max_workers"] > 0  # ray-project/ray#59144
    for name, node_type in types.items():
        cpus, gpus = MACHINES[machine(cloud, node_type["node_config"])]
        assert node_type["resources"].get("GPU", 0) == gpus and node_type["resources"]["CPU"] <= cpus, name
        image = boot_image(cloud, node_type["node_config"])
        if gpus and cloud == "aws":  # a placeholder: the header says which AMI it stands for
            assert re.search(rf"{re.escape(image)}:.*/deeplearning/.*nvidia", header(cloud)), name
        if gpus and cloud == "gcp":
            assert "nvidia" in image, f"{name}: no NVIDIA driver in {image}"
            (accelerator,) = node_type["node_config"]["guestAccelerators"]
            assert accelerator["acceleratorCount"] == gpus, name
            assert node_type["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE", name

    # Every placement the study configs ask for (resources.<stage>.node_resource) fits a worker node type.
    def placements(node):
        if isinstance(node, dict):
            if "node_resource" in node:
                yield node
            for value in node.values():
                yield from placements(value)

    asked = [p for path in sorted((REPO / "configs").rglob("*.yaml")) for p in placements(yaml.safe_load(path.read_text()))]
    assert {p["node_resource"] for p in asked} >= {"gpu_sampler", "gpu_trainer"}
    for p in asked:
        fits = [n for n in WORKERS if types[n]["resources"].get(p["node_resource"], 0) > 0]
        assert any(types[n]["resources"]["GPU"] >= p.get("gpus", 0) for n in fits), p


@every_cloud
def test_gpu_nodes_keep_the_node_cache_on_their_large_disk(cloud):
    cfg = load(cloud)
    types = cfg["available_node_types"]
    # worker_start_ray_commands serve every worker type, so each of them must be a GPU node with the large disk.
    for name in set(types) - {cfg["head_node_type"]}:
        assert types[name]["resources"]["GPU"] >= 1, name
        assert root_disk_gb(cloud, types[name]["node_config"]) >= 500, name
    for prefix in before_ray_start(cfg["worker_start_ray_commands"]):
        cache = re.search(rf"\b{CACHE_ENV}=(\S+)", prefix)
        assert cache and cache.group(1).startswith("$HOME/"), prefix  # on the root disk sized above


@every_cloud
def test_the_header_walks_through_a_study(cloud):
    text, name = header(cloud), FILES[cloud].name
    for step in [
        f"ray up {name}",
        f"ray attach {name} -p 8265 -p 5000",
        "ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/pipeline.py "
        f"--config configs/unlearncanvas/study.yaml --study_dir {SCHEME[cloud]}://BUCKET/runs/unlearncanvas",
        "http://127.0.0.1:5000",
        f"ray down {name}",
    ]:
        assert step in text, step
    (submit,) = [line for line in text.splitlines() if "ray job submit" in line]
    assert "--tracking_uri" not in submit  # the study config's http://{head}:5000 reaches the head's server
