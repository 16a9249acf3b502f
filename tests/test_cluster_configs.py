"""The cluster and job configs: they parse, pass the checks Ray and KubeRay apply to them, agree with
each other on versions, and point at files that exist. Nothing here starts Ray or reaches a cloud:
they read files, run Ray's own offline config checks and packaging, and run cluster/setup-node.sh
against a stand-in Python that records what it would install."""
from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import zipfile
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
AWS = CLUSTER / "aws-gpu.yaml"
SETUP_NODE = CLUSTER / "setup-node.sh"
DOCKERFILE = CLUSTER / "Dockerfile"
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob-score.yaml"
JOBS = REPO / "jobs"

RAY_VERSION = "2.60.0"  # the Ray every cluster config pins (a laptop may run any Ray pyproject.toml allows)
NODE_ROOT = "~/semray"  # where aws-gpu.yaml puts the checkout on every node
# NVIDIA GPU instance families on EC2 (the part of the type before the dot).
EC2_GPU_FAMILIES = {"g4dn", "g5", "g6", "g6e", "gr6", "g7", "p3", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en"}


def load(path: Path):
    return yaml.safe_load(path.read_text())


def require(path: Path) -> Path:
    """Files the project's other parts provide: a test that needs one skips, saying which, when it is missing."""
    if not path.exists():
        pytest.skip(f"{path.relative_to(REPO)} does not exist yet")
    return path


def job_envs() -> list[Path]:
    return sorted(JOBS.glob("*.yaml"))


def project() -> dict:
    """pyproject.toml's [project] table."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


# ---------------------------------------------------------------- every YAML parses
def yaml_files() -> list[Path]:
    return sorted(CLUSTER.rglob("*.yaml")) + job_envs()


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_parses_to_mappings(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs, f"{path} is empty"
    for doc in docs:
        assert isinstance(doc, dict) and doc, f"{path}: every document must be a non-empty mapping"


def test_own_configs_exist():
    for path in (AWS, SETUP_NODE, DOCKERFILE, RAYCLUSTER, RAYJOB):
        assert path.is_file(), path


@pytest.mark.parametrize("name", ["setup-node.sh", "local.sh"])
def test_shell_scripts_parse(name):
    path = require(CLUSTER / name)
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- versions agree everywhere
def pinned(name: str) -> str:
    """A version constraints.txt pins: the one file every installer reads."""
    m = re.search(rf"^{name}==([\d.]+)$", (REPO / "constraints.txt").read_text(), re.M)
    assert m, f"constraints.txt: no pin for {name}"
    return m.group(1)


INSTALLERS = (SETUP_NODE, DOCKERFILE, REPO / "scripts" / "bootstrap.sh")


def test_ray_version_is_the_same_everywhere():
    assert pinned("ray") == RAY_VERSION
    for path in INSTALLERS:
        assert "constraints.txt" in path.read_text(), f"{path.name} does not install from constraints.txt"
        assert not re.search(r"ray(\[[a-z,]+\])?==[\d.]", path.read_text()), f"{path.name} pins Ray itself"
    assert re.search(r"ray\[default,train,data,tune\]", SETUP_NODE.read_text())
    base = re.search(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.M).group(1)
    assert base.startswith(f"rayproject/ray:{RAY_VERSION}-") and base.endswith("-gpu"), base
    for manifest in (RAYCLUSTER, RAYJOB):
        spec = load(manifest)["spec"]
        assert (spec.get("rayClusterSpec") or spec)["rayVersion"] == RAY_VERSION, manifest
    ray_req = next(Requirement(d) for d in project()["dependencies"] if d.startswith("ray"))
    assert ray_req.specifier.contains(RAY_VERSION), "pyproject.toml's Ray range excludes the clusters' Ray"


def test_torch_version_is_the_same_everywhere():
    version = pinned("torch")
    for path in INSTALLERS:
        assert not re.search(r"torch==\d", path.read_text()), f"{path.name} pins torch itself"
    torch_req = next(Requirement(d) for d in project()["dependencies"] if d.startswith("torch"))
    assert torch_req.specifier.contains(version)


# ---------------------------------------------------------------- cluster/aws-gpu.yaml
@pytest.fixture(scope="module")
def aws() -> dict:
    return load(AWS)


def test_aws_config_matches_ray_schema(aws):
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(aws)]
    assert not errors, errors


def prepared(config: dict) -> dict:
    """The config as `ray up` sees it after its offline checks: defaults merged, setup commands merged."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(config))
    validate_config(config)
    return config


def test_aws_config_passes_ray_up_offline_checks(aws):
    config = prepared(aws)
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    # Every node, head and workers, runs the node setup (a node type's own worker_setup_commands
    # would replace it).
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any("cluster/setup-node.sh" in c for c in config[key]), key
    for name, node_type in aws["available_node_types"].items():
        assert "worker_setup_commands" not in node_type, f"{name} would skip setup-node.sh"


def is_gpu(node_type: dict) -> bool:
    family = node_type["node_config"]["InstanceType"].split(".")[0]
    return node_type.get("resources", {}).get("GPU", 0) >= 1 or family in EC2_GPU_FAMILIES


def test_aws_cpu_head_and_autoscaling_gpu_workers(aws):
    types = aws["available_node_types"]
    head = types[aws["head_node_type"]]
    assert not is_gpu(head), "the head lives as long as the cluster: no GPU there"
    workers = {name: t for name, t in types.items() if name != aws["head_node_type"]}
    gpu = {name: t for name, t in workers.items() if is_gpu(t)}
    assert gpu, "no GPU worker type"
    for name, t in gpu.items():
        assert t.get("min_workers", 0) == 0 < t["max_workers"] <= aws["max_workers"], name
    # Ray needs the same Python and Ray on every node: one image for all of them.
    assert len({t["node_config"]["ImageId"] for t in types.values()}) == 1
    assert aws["idle_timeout_minutes"] > 0


def node_path_to_repo(path: str, mounts: dict[str, str]) -> Path:
    """A path on a node (~/semray/...) -> the repo file the file mounts put there."""
    for remote, local in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
        if path == remote or path.startswith(remote.rstrip("/") + "/"):
            return (REPO / local / path[len(remote):].lstrip("/")).resolve()
    raise AssertionError(f"{path} is on no file mount: nothing puts it on the nodes")


def test_aws_file_mounts_mirror_the_repo(aws):
    mounts = aws["file_mounts"]
    assert mounts
    for remote, local in mounts.items():
        if remote == "~/.ray/auth_token":  # the cluster's token, from the user's home: test_aws_job_api_is_locked_down
            continue
        assert (REPO / local).exists(), f"file mount source {local} missing (ray up runs from the repo root)"
        assert remote.startswith(NODE_ROOT + "/") or remote == NODE_ROOT, remote
        # ~/semray keeps the repo's layout, so paths inside it mean the same on a node as here.
        assert PurePosixPath(remote[len(NODE_ROOT):].lstrip("/") or ".") == PurePosixPath(local), (remote, local)
    # What installing semray needs (pyproject's readme included: the build fails without it) and the
    # job scripts.
    needed = ["pyproject.toml", project()["readme"], "semray/__init__.py", "semray/cli.py", "cluster/setup-node.sh"]
    needed += [str(p.relative_to(REPO)) for p in JOBS.glob("*.py")]
    for rel in needed:
        assert node_path_to_repo(f"{NODE_ROOT}/{rel}", mounts) == (REPO / rel).resolve(), rel
        for pattern in aws.get("rsync_exclude", []):
            assert not any(fnmatch(part, pattern) for part in PurePosixPath(rel).parts), (rel, pattern)


def test_aws_commands_reference_files_that_reach_the_nodes(aws):
    commands = [c for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                              "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
                for c in aws.get(key, [])]
    referenced = re.findall(rf"{re.escape(NODE_ROOT)}/[^\s'\";]+", " ".join(commands))
    assert referenced, "no command uses the synced checkout"
    for path in referenced:
        assert node_path_to_repo(path, aws["file_mounts"]).is_file(), path


def test_aws_start_commands(aws):
    head, worker = aws["head_start_ray_commands"], aws["worker_start_ray_commands"]
    assert head[0] == "ray stop" and worker[0] == "ray stop"  # a re-run `ray up` restarts cleanly
    head_start = " ".join(head[1:])
    assert "ray start --head" in head_start and "--port=6379" in head_start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start  # else nothing autoscales
    # reachable inside the VPC (a scheduler) on the head's private address, not on every interface...
    assert "--dashboard-host=$(hostname -I | cut -d' ' -f1)" in head_start and "0.0.0.0" not in head_start
    assert "ray start --address=$RAY_HEAD_IP:6379" in " ".join(worker[1:])
    # ...but only with the token, on every node (Ray 2.60 does not turn it on for `ray start`)
    for commands in (head, worker):
        start = " ".join(commands[1:])
        assert start.index("export RAY_AUTH_MODE=token") < start.index("ray start")


def test_aws_job_api_is_locked_down(aws):
    assert aws["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # the token reaches every node
    rules = aws["provider"]["security_group"]["IpPermissions"]
    api = [r for r in rules if r["FromPort"] <= 8265 <= r["ToPort"]]
    assert api, "the job API must be reachable from the VPC for a scheduler"
    for rule in rules:
        ranges = [r["CidrIp"] for r in rule.get("IpRanges", [])]
        assert "0.0.0.0/0" not in ranges and not rule.get("Ipv6Ranges"), f"{rule} is open to the internet"
        assert all(c.startswith(("10.", "172.", "192.168.")) for c in ranges), f"{ranges}: not a VPC range"


def test_local_cluster_listens_on_localhost_only():
    text = (REPO / "cluster" / "local.sh").read_text()
    assert "--dashboard-host=127.0.0.1" in text and "--node-ip-address=127.0.0.1" in text
    assert "0.0.0.0" not in text


# ---------------------------------------------------------------- cluster/setup-node.sh
FAKE_PYTHON = r"""#!/usr/bin/env bash
# Stands in for the node's python3: records pip calls, answers the script's import checks.
echo "$*" >> "$FAKE_LOG"
[ "$1 $2" = "-m pip" ] && exit 0
case "$2" in
  *"import torch; print"*) [ -n "$FAKE_TORCH" ] && echo "$FAKE_TORCH" && exit 0; exit 1 ;;
  *"import site"*) echo "$HOME/.local"; exit 0 ;;
esac
exit 0
"""


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def node(tmp_path):
    """Runs setup-node.sh as on a fresh node: its own HOME, a stand-in python3 and nvidia-smi."""
    if shutil.which("sha256sum") is None:
        pytest.skip("setup-node.sh runs on Linux nodes (GNU coreutils)")
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    bin_dir.mkdir()
    python = executable(bin_dir / "python3", FAKE_PYTHON)
    log = tmp_path / "calls.log"

    def run(gpu: bool, torch: str = "") -> list[list[str]]:
        executable(bin_dir / "nvidia-smi", "#!/bin/sh\nexit 0\n" if gpu else "#!/bin/sh\nexit 9\n")
        log.write_text("")
        env = {**os.environ, "HOME": str(home), "PYTHON": str(python), "FAKE_LOG": str(log), "FAKE_TORCH": torch,
               "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        env.pop("SEMRAY_TORCH_INDEX", None)
        env.pop("SEMRAY_TORCH_VERSION", None)
        result = subprocess.run(["bash", str(SETUP_NODE)], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        return [line.split()[line.split().index("pip") + 1:] for line in log.read_text().splitlines()
                if line.startswith("-m pip") and "--version" not in line]

    run.home = home
    return run


def pip_installs(calls: list[list[str]]) -> list[list[str]]:
    return [[a for a in c if a not in ("--disable-pip-version-check", "-q")] for c in calls]


def test_setup_node_gpu_replaces_a_cpu_torch_and_pins_ray(node):
    (node.home / ".local" / "bin").mkdir(parents=True)
    executable(node.home / ".local" / "bin" / "ray", "#!/bin/sh\n")
    calls = pip_installs(node(gpu=True, torch="2.13.0 cpu"))
    assert calls == [
        ["uninstall", "-y", "torch"],  # pip would count the CPU build as torch==2.13.0
        ["install", "torch==2.13.0"],  # PyPI's Linux wheel: the CUDA build
        ["install", f"ray[default,train,data,tune]=={RAY_VERSION}", str(REPO)],
    ]
    # Not editable: in ~, an editable semray loses to the ~/semray folder (see setup-node.sh).
    assert "-e" not in calls[-1]
    bashrc = (node.home / ".bashrc").read_text()
    assert bashrc.count(str(node.home / ".local" / "bin")) == 1
    # Nothing changed: a second run installs nothing.
    assert pip_installs(node(gpu=True, torch="2.13.0 cuda")) == []
    # A full re-run (the stamp gone) reinstalls semray but does not add to PATH twice.
    (node.home / ".cache" / "semray-node-setup").unlink()
    assert len(pip_installs(node(gpu=True, torch="2.13.0 cuda"))) == 1
    assert (node.home / ".bashrc").read_text() == bashrc


def test_setup_node_cpu_takes_torch_from_the_cpu_index(node):
    calls = pip_installs(node(gpu=False, torch=""))
    assert calls[0] == ["install", "torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu"]
    assert calls[1] == ["install", f"ray[default,train,data,tune]=={RAY_VERSION}", str(REPO)]
    assert len(calls) == 2
    assert not (node.home / ".bashrc").exists()  # no user scripts dir with ray in it: PATH untouched


def test_setup_node_keeps_a_matching_torch(node):
    calls = pip_installs(node(gpu=False, torch="2.13.0 cpu"))
    assert [c[0] for c in calls] == ["install"] and calls[0][1].startswith("ray[")


# ---------------------------------------------------------------- cluster/Dockerfile
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        instruction, _, args = (buf + line).partition(" ")
        out.append((instruction.upper(), args.strip()))
        buf = ""
    return out


def image_layout() -> tuple[str, list[tuple[str, Path]]]:
    """The final WORKDIR, and (path in the image, repo path) for everything COPY puts there."""
    workdir, copies = "/", []
    for instruction, args in dockerfile():
        if instruction == "WORKDIR":
            workdir = str(PurePosixPath(workdir) / args)
        elif instruction == "COPY":
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            *sources, dest = words
            target = PurePosixPath(workdir) / dest
            for src in sources:
                repo_path = REPO / src
                assert repo_path.exists(), f"Dockerfile copies {src}, which is not in the repo"
                into_dir = dest.endswith("/") or len(sources) > 1
                if repo_path.is_file() and into_dir:
                    copies.append((str(target / repo_path.name), repo_path))
                else:
                    copies.append((str(target), repo_path))
    return workdir, copies


def image_path_to_repo(path: str) -> Path | None:
    _, copies = image_layout()
    for image_path, repo_path in sorted(copies, key=lambda c: -len(c[0])):
        if path == image_path:
            return repo_path
        if path.startswith(image_path.rstrip("/") + "/") and repo_path.is_dir():
            return repo_path / path[len(image_path):].lstrip("/")
    return None


def test_dockerfile_holds_package_and_jobs():
    workdir, _ = image_layout()
    assert workdir == "/home/ray/semray"
    for rel in ["pyproject.toml", project()["readme"], "semray/__init__.py", "semray/cli.py",
                *[str(p.relative_to(REPO)) for p in JOBS.glob("*.py")]]:
        assert image_path_to_repo(f"{workdir}/{rel}") == REPO / rel, f"{rel} is not in the image"
    steps = dockerfile()
    torch_at = next(i for i, (ins, a) in enumerate(steps)
                    if ins == "RUN" and "pip install" in a and re.search(r"constraints\.txt torch$", a))
    copy_pkg = next(i for i, (ins, a) in enumerate(steps) if ins == "COPY" and "semray/" in a)
    install_pkg = next(i for i, (ins, a) in enumerate(steps)
                       if ins == "RUN" and re.search(r"pip install\b[^&]*\s\.(\s|$)", a))
    assert torch_at < copy_pkg < install_pkg, "torch (CUDA build) first, then semray from the copied source"


def test_image_python_meets_requires_python():
    base = re.search(r"^FROM\s+\S+-py3(\d+)-", DOCKERFILE.read_text(), re.M)
    assert base, "the base image tag names its Python (-py311-)"
    from packaging.specifiers import SpecifierSet

    assert SpecifierSet(project()["requires-python"]).contains(f"3.{base.group(1)}")


# ---------------------------------------------------------------- cluster/kuberay/
# Fields of the ray.io/v1 types (KubeRay's raycluster_types.go, rayjob_types.go): a name outside
# these is a typo that KubeRay's CRD would drop or refuse. Add a field here when you start using one.
RAYCLUSTER_SPEC = {"headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling",
                   "autoscalerOptions", "headServiceAnnotations", "suspend", "gcsFaultToleranceOptions",
                   "managedBy", "upgradeStrategy", "authOptions"}
HEAD_GROUP = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams",
                "template", "scaleStrategy", "idleTimeoutSeconds", "suspend"}
AUTOSCALER_OPTIONS = {"resources", "image", "imagePullPolicy", "env", "envFrom", "volumeMounts",
                      "securityContext", "idleTimeoutSeconds", "upscalingMode", "version"}
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
               "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint",
               "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
               "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend"}
POD_SPEC = {"volumes", "initContainers", "containers", "restartPolicy", "terminationGracePeriodSeconds",
            "nodeSelector", "serviceAccountName", "automountServiceAccountToken", "securityContext",
            "imagePullSecrets", "affinity", "schedulerName", "tolerations", "priorityClassName",
            "runtimeClassName", "topologySpreadConstraints", "hostNetwork", "dnsPolicy", "dnsConfig"}
CONTAINER = {"name", "image", "command", "args", "workingDir", "ports", "env", "envFrom", "resources",
             "volumeMounts", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle",
             "imagePullPolicy", "securityContext"}


def cluster_specs() -> list[tuple[str, dict]]:
    specs = [("raycluster.yaml", load(RAYCLUSTER)["spec"])]
    specs.append(("rayjob-score.yaml", load(RAYJOB)["spec"]["rayClusterSpec"]))
    return specs


def pod_templates(spec: dict) -> list[tuple[str, dict]]:
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
    return [(name, g["template"]["spec"]) for name, g in groups]


def unknown(mapping: dict, known: set[str]) -> set[str]:
    return set(mapping) - known


def test_kuberay_kinds_and_fields():
    raycluster, rayjob = load(RAYCLUSTER), load(RAYJOB)
    assert (raycluster["apiVersion"], raycluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    assert not unknown(rayjob["spec"], RAYJOB_SPEC)
    for name, spec in cluster_specs():
        assert not unknown(spec, RAYCLUSTER_SPEC), name
        assert not unknown(spec["headGroupSpec"], HEAD_GROUP), name
        assert not unknown(spec.get("autoscalerOptions", {}), AUTOSCALER_OPTIONS), name
        for group in spec.get("workerGroupSpecs", []):
            assert not unknown(group, WORKER_GROUP), (name, group["groupName"])
        for group, pod in pod_templates(spec):
            assert not unknown(pod, POD_SPEC), (name, group)
            for container in pod["containers"] + pod.get("initContainers", []):
                assert not unknown(container, CONTAINER), (name, group, container.get("name"))


def test_kuberay_ray_start_params_are_strings():
    for name, spec in cluster_specs():
        groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
        for group in groups:
            params = group["rayStartParams"]  # required by older KubeRay versions, even if empty
            assert isinstance(params, dict), name
            for key, value in params.items():
                assert isinstance(key, str) and isinstance(value, str), f"{name}: {key}: {value!r} is not a string"
        head = spec["headGroupSpec"]["rayStartParams"]
        assert head.get("num-cpus") == "0", f"{name}: work would land on the head"
        assert head.get("dashboard-host") == "0.0.0.0", f"{name}: the job API would be unreachable"


def test_kuberay_clusters_need_the_token_and_stay_inside():
    for name, spec in cluster_specs():
        assert spec.get("authOptions", {}).get("mode") == "token", f"{name}: anyone reaching the head runs code"
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", f"{name}: head exposed"


def gpu_groups(spec: dict) -> list[dict]:
    out = []
    for group in spec.get("workerGroupSpecs", []):
        for container in group["template"]["spec"]["containers"]:
            resources = container.get("resources", {})
            gpus = int(resources.get("limits", {}).get("nvidia.com/gpu", 0))
            if gpus:
                # Kubernetes requires requests == limits for extended resources.
                assert int(resources.get("requests", {}).get("nvidia.com/gpu", gpus)) == gpus
                out.append(group)
    return out


def test_kuberay_gpu_workers():
    for name, spec in cluster_specs():
        groups = gpu_groups(spec)
        assert groups, f"{name}: no worker group asks for nvidia.com/gpu"
        for group in groups:
            assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], name
            tolerations = group["template"]["spec"].get("tolerations", [])
            assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations), f"{name}: GPU nodes' taint not tolerated"
    raycluster = load(RAYCLUSTER)["spec"]
    assert raycluster["enableInTreeAutoscaling"] is True
    for group in gpu_groups(raycluster):
        assert group["minReplicas"] == 0 < group["maxReplicas"], "idle GPUs cost money: scale from zero"


def test_kuberay_pods_mount_shared_memory_and_define_their_volumes():
    for name, spec in cluster_specs():
        for group, pod in pod_templates(spec):
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for container in pod["containers"] + pod.get("initContainers", []):
                for mount in container.get("volumeMounts", []):
                    assert mount["name"] in volumes, (name, group, mount["name"])
            for container in pod["containers"]:
                shm = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
                assert shm, f"{name} {group}: no /dev/shm mount (Ray's object store would fall back to disk)"
                assert volumes[shm[0]["name"]].get("emptyDir", {}).get("medium") == "Memory", (name, group)


def test_kuberay_pods_run_one_image():
    images = {c["image"] for _, spec in cluster_specs() for _, pod in pod_templates(spec)
              for c in pod["containers"] + pod.get("initContainers", [])}
    # One image, built from cluster/Dockerfile: Ray needs the same Ray and Python in every pod.
    assert len(images) == 1, f"the manifests name several images: {images}"


def test_rayjob_runs_the_image_entrypoint():
    from semray.cli import build_parser

    spec = load(RAYJOB)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] >= 0
    # A local working_dir cannot be uploaded from the submitter pod: the code comes from the image.
    assert "working_dir" not in (spec.get("runtimeEnvYAML") or "")

    python, script, *args = shlex.split(spec["entrypoint"])
    assert python == "python"
    repo_script = image_path_to_repo(script)
    assert repo_script is not None and repo_script.is_file(), f"{script} is not a file the image holds"
    assert repo_script.parent == JOBS
    parsed = build_parser().parse_args([repo_script.stem, *args])  # jobs/score.py == `semray score`

    # The driver (on the head) reads the run: from a bucket, or from a volume of the head that
    # something fills; a pod has no checkout and no runs of its own.
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    if "://" in parsed.run:
        assert parsed.run.split("://")[0] in ("s3", "gs"), f"--run {parsed.run}: not a cloud bucket"
    else:
        run = PurePosixPath(parsed.run)
        mounts = [m for m in head["containers"][0]["volumeMounts"] if run.is_relative_to(m["mountPath"])]
        assert mounts, f"--run {parsed.run} is on no volume of the head"
        volume = next(v for v in head["volumes"] if v["name"] == mounts[0]["name"])
        filled = any(m["name"] == volume["name"] for c in head.get("initContainers", [])
                     for m in c.get("volumeMounts", []))
        assert filled or "persistentVolumeClaim" in volume, "nothing puts the run on that volume"

    # semray sizes the scoring pool from the GPUs present when the job starts: they must be there.
    if parsed.gpus_per_worker:
        gpus = sum(g["minReplicas"] * int(c["resources"]["limits"]["nvidia.com/gpu"])
                   for g in gpu_groups(cluster) for c in g["template"]["spec"]["containers"])
        assert gpus >= parsed.gpus_per_worker, "no GPU is up when the job starts"


# ---------------------------------------------------------------- jobs/*.yaml runtime envs
def uploaded_files(env: dict, tmp_path: Path) -> set[str]:
    """What `ray job submit --runtime-env ENV` from the repo root uploads: Ray's own packaging, with
    Ray's default excludes, the env's excludes and .gitignore."""
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import create_package

    excludes = ray_constants.get_runtime_env_default_excludes() + list(env.get("excludes") or [])
    target = tmp_path / "package.zip"
    create_package(str(REPO / env["working_dir"]), target, include_gitignore=True, excludes=excludes)
    with zipfile.ZipFile(target) as z:
        return {n.rstrip("/") for n in z.namelist()}


@pytest.mark.parametrize("name", ["train", "tune", "score"])
def test_job_runtime_env_ships_the_repo(name, tmp_path):
    from ray.runtime_env import RuntimeEnv

    env = load(require(JOBS / f"{name}.yaml"))
    script = require(JOBS / f"{name}.py")
    RuntimeEnv(**env)  # Ray's own type checks of the fields
    assert "working_dir" in env, "the job would run the nodes' installed code, not this checkout"
    # Submitted from the repository root, as the job scripts say.
    assert (REPO / env["working_dir"]).resolve() == REPO
    files = uploaded_files(env, tmp_path)
    needed = [p for p in (REPO / "semray").rglob("*.py") if "__pycache__" not in p.parts] + [script]
    # Repo files the job script's own instructions name (e.g. a Tune search space).
    needed += [REPO / m for m in re.findall(r"\b((?:bench|semray|jobs)/[\w/.-]+\.(?:ya?ml|py))\b", script.read_text())]
    for path in needed:
        rel = str(path.relative_to(REPO))
        assert path.is_file(), f"{script.name} names {rel}, which does not exist"
        assert rel in files, f"jobs/{name}.yaml leaves {rel} out of the upload"
