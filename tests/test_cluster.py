"""Cluster submission on a real two-node Ray, and the cluster/ manifests.

The multi-node test starts a head and a worker node as separate `ray start --block` processes
(benchmarks/loopback.py; 1 CPU each, so a sweep running two trials at once must use both), with Ray
token authentication on and every HTTP server bound to loopback, plus an S3-compatible server
(moto, over HTTP on 127.0.0.1). It submits a shrunken quick sweep with `localist submit --follow`,
holds every trial before its first step until two have started (so two ran at once: one on each node, whatever
order Ray and Tune start them in), and checks that results and report landed in S3. The S3
credentials reach the trials only through the job's runtime environment: the cluster is started
without them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from benchmarks.loopback import LocalCluster, node_env, process_tree
from tests.conftest import tiny_tree
from tests.helpers import wait_for
from tests.test_s3_storage import BUCKET, moto_s3  # noqa: F401 - the S3 server fixture

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "orchestrator.cli"]


def listening_on(port: int) -> set[str]:
    """The local addresses (hex, as in /proc/net/tcp) of the sockets listening on a TCP port."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                found.add(local.rsplit(":", 1)[0])
    return found


@pytest.fixture(scope="module")
def cluster():
    c, t0 = LocalCluster(node_env(secrets.token_hex(16))), time.time()  # no S3 access of its own
    try:
        yield c.start()
    finally:
        t1 = time.time()
        c.stop()
        print(f"\ncluster: started in {getattr(c, 'started', t1) - t0:.1f}s, stopped in {time.time() - t1:.1f}s")


def client_env(cluster, s3_env) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, **s3_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster.env["RAY_AUTH_TOKEN"],
            "PYTHONPATH": str(REPO)}


def shrunken_quick(folder: Path, steps: int = 40) -> Path:
    """sweeps/quick.yaml with the tiny test model trained from scratch (no pretraining stage: it
    needs local storage) and 2 peaks x 2 schedules x 1 seed + its comparator."""
    spec = yaml.safe_load((REPO / "sweeps" / "quick.yaml").read_text())
    spec.pop("pretrain", None)
    spec["base"] = tiny_tree(train={"steps": steps, "eval_every": steps // 2, "log_every": steps // 2})
    spec["grid"]["configuration"] = {k: spec["grid"]["configuration"][k] for k in ("peak-0", "peak-1")}
    spec["grid"]["seeds"] = [1]
    spec.update(storage=f"s3://{BUCKET}/sweeps", checkpoint_every=steps // 2, retries=1)
    path = folder / "quick.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def started_trials(fs) -> dict[str, str]:
    """run id -> the node its first attempt started on, for the trials of the test's sweep on S3."""
    import pyarrow.fs as pafs

    out = {}
    for info in fs.get_file_info(pafs.FileSelector(f"{BUCKET}/sweeps/quick/trials", recursive=True,
                                                   allow_not_found=True)):
        parts = info.path.split("/")
        if info.type == pafs.FileType.File and parts[-2:] == ["attempts", "001.json"]:
            with fs.open_input_stream(info.path) as f:
                out[parts[-3]] = json.loads(f.read())["node_id"]
    return out


def test_submit_follow_runs_on_both_nodes_into_s3(cluster, moto_s3, tmp_path):
    import pyarrow.parquet as pq

    s3_env, fs = moto_s3
    nodes = cluster.nodes()
    assert all(ipaddress.ip_address(n["node_ip"]).is_loopback for n in nodes), nodes
    assert listening_on(cluster.dash) == {"0100007F"}  # the dashboard / Jobs API on 127.0.0.1 only
    shrunken_quick(tmp_path)
    env = client_env(cluster, s3_env)
    go = tmp_path / "go"  # every trial waits before its first step until this file exists
    t0 = time.time()
    proc = subprocess.Popen(CLI + ["submit", "quick.yaml", "--address", cluster.address, "--follow",
                                   "--env", f"LOCALIST_FAULT=wait@1:{go}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Two trials started, neither can finish: with 1 CPU per node and per trial they run on both nodes.
        assert wait_for(lambda: len(started_trials(fs)) >= 2, 180, proc), "two trials never ran at once"
        first = started_trials(fs)
        go.touch()
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        go.touch()
        if proc.poll() is None:
            proc.kill()
    out = stdout + stderr
    assert proc.returncode == 0, out[-5000:]
    job = re.search(r"^job: (\S+)", stdout, re.M).group(1)
    assert "sweep run quick.yaml --address auto" in out
    print(f"\nsubmit --follow: {time.time() - t0:.1f}s")
    assert len(first) == 2 and set(first.values()) == {n["node_id"] for n in nodes}  # one on each node

    trials = pq.read_table(f"{BUCKET}/sweeps/quick/results/trials.parquet", filesystem=fs).to_pandas()
    assert len(trials) == 5 and set(trials.status) == {"completed"}
    assert set(trials.node_id) == {n["node_id"] for n in nodes}  # both nodes ran trials
    assert fs.get_file_info(f"{BUCKET}/sweeps/quick/summary/report.html").size > 0
    assert fs.get_file_info(f"{BUCKET}/sweeps/quick/tune").type.name == "Directory"

    def cli(*args):
        r = subprocess.run(CLI + ["jobs", *args, "--address", cluster.address], env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    assert re.search(rf"{job}\s+SUCCEEDED .* quick", cli("list"))
    no_token = subprocess.run(CLI + ["jobs", "list", "--address", cluster.address], capture_output=True, text=True,
                              env={**env, "RAY_AUTH_TOKEN": "not-the-token"}, timeout=60)
    assert no_token.returncode == 2 and "Invalid authentication token" in no_token.stderr, no_token.stderr
    status = cli("status", job)
    assert "status: SUCCEEDED" in status and "driver exit code: 0" in status
    assert "[sweep] report: s3://" in cli("logs", job)

    # The storage now holds the sweep: a second submission resumes it; stop that job.
    again = subprocess.run(CLI + ["submit", "quick.yaml", "--address", cluster.address], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"sweep resume s3://{BUCKET}/sweeps/quick --address auto" in again.stdout
    job2 = re.search(r"^job: (\S+)", again.stdout, re.M).group(1)
    assert "stop requested" in cli("stop", job2)
    end = time.time() + 30
    while "status: STOPPED" not in cli("status", job2):
        assert time.time() < end, cli("status", job2)
        time.sleep(1)


# --- the cluster/ manifests -------------------------------------------------------------------

CLUSTER = REPO / "cluster"
MANIFESTS = sorted(p for p in CLUSTER.iterdir() if p.suffix in (".yaml", ".sbatch") or p.name == "Dockerfile")
SUBCOMMANDS = "train|sweep|aggregate|submit|jobs"
PROJECT_IMAGE = "REGISTRY/localist:IMAGE_TAG"  # cluster/Dockerfile's image, tagged with the code version


def ray_pin() -> str:
    """The project's Ray version; every Ray pin in pyproject.toml (main and extras) must agree."""
    pins = set(re.findall(r'"ray\[[\w,]+\]==([\w.]+)"', (REPO / "pyproject.toml").read_text()))
    assert len(pins) == 1, f"pyproject.toml pins several Ray versions: {pins}"
    return pins.pop()


def localist_commands(text: str) -> list[list[str]]:
    """Every `localist <subcommand> ...` command line in a file, comments included (documented
    usage is checked too): shell continuations joined, shell quoting honoured, a command starts a
    line or follows && ; | ( - or NAME=VALUE prefixes, and ends at the next shell operator."""
    cmds = []
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        lexer = shlex.shlex(line.lstrip("# \t"), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True  # words end at blanks and shell operators only
        try:
            tokens = list(lexer)
        except ValueError:  # prose with an unbalanced quote
            continue
        for i, tok in enumerate(tokens[:-1]):
            before = tokens[:i]
            starts = not before or before[-1] in ("-", "(") or re.fullmatch(r"[;&|()]+|\S+:", before[-1]) \
                or all(re.fullmatch(r"\w+=\S*", t) for t in before)
            if tok == "localist" and starts and re.fullmatch(SUBCOMMANDS, tokens[i + 1]):
                end = next((j for j in range(i + 1, len(tokens)) if re.fullmatch(r"[;&|()<>]+", tokens[j])), None)
                cmds.append(tokens[i + 1:end])
    return cmds


def test_every_way_of_getting_a_cluster_is_there():
    assert {"ray-up-aws.yaml", "kuberay-rayjob.yaml", "slurm.sbatch", "Dockerfile"} <= {p.name for p in MANIFESTS}
    assert (CLUSTER / "README.md").exists()


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_parses_names_a_sweep_and_real_commands_and_the_pinned_ray(path):
    from orchestrator.cli import parser

    text = path.read_text()
    if path.suffix == ".yaml":
        assert [d for d in yaml.safe_load_all(text) if d]
    elif path.suffix == ".sbatch":
        assert text.startswith("#!/bin/bash") and "#SBATCH --nodes" in text
        bash = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert bash.returncode == 0, bash.stderr
    else:
        assert re.search(r"^FROM \S+", text, re.M)
    sweeps = []
    for argv in localist_commands(text):
        args = parser().parse_args(argv)  # SystemExit (a test failure) unless it is a real command line
        if getattr(args, "file", None):
            assert (REPO / args.file).is_file() and args.file.startswith("sweeps/"), f"{path.name}: {argv}"
            sweeps.append(args.file)
    assert sweeps, f"{path.name}: runs no sweep file"
    versions = re.findall(r"ray(?:\[[\w,]+\])?==([\w.]+)", text) + re.findall(r"rayproject/ray:([\d.]+)", text)
    versions += re.findall(r"rayVersion:\s*['\"]?([\d.]+)", text)
    # SLURM: the checkout's .venv; a template that runs the project image has the Dockerfile's Ray.
    assert versions or path.suffix == ".sbatch" or PROJECT_IMAGE in text, f"{path.name}: names no Ray version"
    assert set(versions) <= {ray_pin()}, f"{path.name}: Ray {set(versions)} but the project pins {ray_pin()}"


@pytest.mark.parametrize("path", [p for p in MANIFESTS if p.name != "Dockerfile"], ids=lambda p: p.name)
def test_manifest_keeps_ray_private(path):
    """Token authentication on, no dashboard on all interfaces, nothing that looks like a secret."""
    text = path.read_text()
    assert re.search(r"RAY_AUTH_MODE=token|authOptions:\s*\n\s*mode: token", text)
    assert "RAY_AUTH_MODE=disabled" not in text
    assert not re.search(r"dashboard-host[= ]0\.0\.0\.0", text)
    assert not re.search(r"AKIA[0-9A-Z]{16}|(?i:secret_access_key|auth_token)\s*[=:]\s*[\w/+]{16,}|\b\d{12}\b", text)


def test_ray_up_config_is_a_valid_launcher_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((CLUSTER / "ray-up-aws.yaml").read_text())
    validate_config(prepare_config(cfg))  # what `ray up` checks before it launches anything
    gpu = cfg["available_node_types"]["gpu_worker"]
    assert cfg["provider"]["type"] == "aws" and cfg["idle_timeout_minutes"] > 0
    assert gpu["min_workers"] == 0 < gpu["max_workers"] <= cfg["max_workers"]
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p"))  # a GPU instance type
    assert "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])
    # Every node runs the project image (torch, the project and the model inside); nothing is installed per node.
    assert cfg["docker"]["image"] == PROJECT_IMAGE and cfg["docker"]["pull_before_run"] is True
    assert not any("pip install" in c for key in ("setup_commands", "head_setup_commands", "worker_setup_commands",
                                                  "initialization_commands") for c in cfg.get(key, []))


def test_kuberay_rayjob_runs_the_paper_sweep_and_cleans_up():
    job = next(yaml.safe_load_all((CLUSTER / "kuberay-rayjob.yaml").read_text()))
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec, cluster = job["spec"], job["spec"]["rayClusterSpec"]
    assert spec["shutdownAfterJobFinishes"] is True and "sweeps/paper.yaml" in spec["entrypoint"]
    assert re.search(r"--storage s3://", spec["entrypoint"])
    assert cluster["rayVersion"] == ray_pin() and cluster["authOptions"] == {"mode": "token"}
    containers = [cluster["headGroupSpec"]["template"]["spec"]["containers"][0]]
    for group in cluster["workerGroupSpecs"]:
        c = group["template"]["spec"]["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] >= 1
        containers.append(c)
    for c in containers:  # S3 credentials only by reference to a Secret
        assert c["envFrom"] == [{"secretRef": {"name": "localist-s3", "optional": True}}]
        assert not any(e.get("value") for e in c.get("env", []) if e["name"].startswith("AWS_"))


# --- what a security reviewer and a cluster admin check ------------------------------------------

def kuberay() -> tuple[dict, dict]:
    """The RayJob and the NetworkPolicy of cluster/kuberay-rayjob.yaml."""
    docs = {d["kind"]: d for d in yaml.safe_load_all((CLUSTER / "kuberay-rayjob.yaml").read_text())}
    return docs["RayJob"], docs["NetworkPolicy"]


def gib(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 1e3, "M": 1e6, "G": 1e9, "": 1}
    number, unit = re.fullmatch(r"([\d.]+)([KMG]i?|)", str(quantity)).groups()
    return float(number) * units[unit] / 2**30


def test_workers_get_their_own_least_privilege_role():
    cfg = yaml.safe_load((CLUSTER / "ray-up-aws.yaml").read_text())
    nodes = cfg["available_node_types"]
    head = nodes[cfg["head_node_type"]]["node_config"]["IamInstanceProfile"]["Name"]
    workers = {n["node_config"]["IamInstanceProfile"]["Name"] for k, n in nodes.items() if k != cfg["head_node_type"]}
    assert head not in workers and "ray-autoscaler-v1" not in workers | {head}  # not the launcher's profile
    policy = {name: json.loads((CLUSTER / "iam" / f"{name}-policy.json").read_text()) for name in ("head", "worker")}
    assert workers == {"localist-worker"} and head == "localist-head"  # the names the README's commands create

    def allowed(doc):
        return [(a, r) for s in doc["Statement"] if s["Effect"] == "Allow"
                for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
                for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])]

    worker = allowed(policy["worker"])
    assert not [a for a, _ in worker if a.split(":")[0] not in ("s3", "ecr") or "*" in a], worker  # no EC2, IAM, s3:*
    assert {r for a, r in worker if a.startswith("s3:")} == {"arn:aws:s3:::YOUR_BUCKET", "arn:aws:s3:::YOUR_BUCKET/*"}
    assert {r for a, r in worker if a.startswith("ecr:") and a != "ecr:GetAuthorizationToken"} \
        == {"arn:aws:ecr:*:ACCOUNT_ID:repository/localist"}
    head_only = set(allowed(policy["head"])) - set(worker)
    assert {a for a, _ in head_only} == {"iam:PassRole", "ssm:GetParameters"}
    assert {r for a, r in head_only if a == "iam:PassRole"} == {"arn:aws:iam::ACCOUNT_ID:role/localist-worker"}
    trust = json.loads((CLUSTER / "iam" / "ec2-trust.json").read_text())
    assert [s["Principal"] for s in trust["Statement"]] == [{"Service": "ec2.amazonaws.com"}]

    readme = (CLUSTER / "README.md").read_text()  # the step that creates both roles and profiles
    assert "for node in head worker; do" in readme and "file://cluster/iam/ec2-trust.json" in readme
    for command in ("create-role --role-name localist-$node", "put-role-policy --role-name localist-$node",
                    "cluster/iam/$node-policy.json", "create-instance-profile --instance-profile-name localist-$node",
                    "add-role-to-instance-profile --instance-profile-name localist-$node --role-name localist-$node"):
        assert f"aws iam {command}" in readme or command in readme, command


def test_kuberay_pods_fit_the_common_one_gpu_nodes_and_pull_each_code_version():
    job, policy = kuberay()
    cluster = job["spec"]["rayClusterSpec"]
    paper = yaml.safe_load((REPO / "sweeps" / "paper.yaml").read_text())["resources"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for group in cluster["workerGroupSpecs"]:
        c = group["template"]["spec"]["containers"][0]
        requests, limits = c["resources"]["requests"], c["resources"]["limits"]
        # A 16 GB, 4-vCPU node (g5.xlarge, g4dn.xlarge, g2-standard-4) after the system's reservations.
        assert gib(requests["memory"]) <= 14 and gib(limits["memory"]) <= 14 and float(requests["cpu"]) <= 3.5
        assert requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"] == paper["gpu"]
        assert float(group["rayStartParams"]["num-cpus"]) >= paper["cpu"]  # one paper trial fits one pod
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    assert gib(head["requests"]["memory"]) <= 14 and float(head["requests"]["cpu"]) <= 3.5
    text = (CLUSTER / "kuberay-rayjob.yaml").read_text()
    assert "cloud.google.com/gke-accelerator:" in text and "node.kubernetes.io/instance-type: g5.xlarge" in text
    for template in templates:
        c = template["spec"]["containers"][0]
        assert c["image"] == PROJECT_IMAGE and c["imagePullPolicy"] == "Always"
        # Every Ray pod is one the NetworkPolicy guards.
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    own, *others = policy["spec"]["ingress"]
    assert own == {"from": [{"podSelector": policy["spec"]["podSelector"]}]}  # the job's pods: all ports
    assert others and all(r["ports"] == [{"port": 8265, "protocol": "TCP"}] for r in others)  # the rest: dashboard
    readme = (CLUSTER / "README.md").read_text()
    sizes = readme[readme.index("**Node sizes.**"):readme.index("## From an empty AWS account")]
    for machine in ("g5.xlarge", "g4dn.xlarge", "g2-standard-4", "12Gi", "8Gi"):
        assert machine in sizes, machine
    assert "IMAGE_TAG|$TAG" in readme and "git describe --tags --always --dirty" in readme


def torch_pin() -> str:
    pins = set(re.findall(r"\btorch==([\w.+]+)", (CLUSTER / "Dockerfile").read_text()))
    assert len(pins) == 1, f"cluster/Dockerfile pins torch {pins or 'nowhere'}"
    return pins.pop()


def test_torch_is_pinned_in_the_image_and_no_template_resolves_it():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    pin = torch_pin()
    assert re.fullmatch(r"\d+\.\d+\.\d+", pin)
    assert re.search(rf"torch.__version__, torch.version.cuda\) == \('{re.escape(pin)}', '\d+\.\d+'\)", dockerfile)
    # Every `pip install` in a template that installs torch or the project names the pinned torch.
    for path in MANIFESTS:
        for line in re.sub(r"\\\n\s*", " ", path.read_text()).splitlines():
            for command in re.findall(r"pip install ([^&;|]*)", line.lstrip("# ")):
                words = command.split()
                if any(re.match(r"[\"']?(torch\b|\.\[|\S*localist\[)", w) for w in words):
                    assert f"torch=={pin}" in words, f"{path.name}: pip install {command}"
    # The other templates run the image; none of them installs anything itself.
    for name in ("ray-up-aws.yaml", "kuberay-rayjob.yaml"):
        text = (CLUSTER / name).read_text()
        assert PROJECT_IMAGE in text and "cluster/Dockerfile" in text, name  # the image built from the pin
        assert "rayproject/ray" not in text and "pip install" not in text, name
    # The model is in the image and trials run offline; the paper sweep's model is the one fetched.
    assert re.search(r"^ENV HF_HUB_OFFLINE=1$", dockerfile, re.M) and re.search(r"^ENV HF_HOME=\S+", dockerfile, re.M)
    models = re.search(r"^ARG HF_MODELS=(.*)$", dockerfile, re.M).group(1).strip("\"'").split()
    assert yaml.safe_load((REPO / "sweeps" / "paper.yaml").read_text())["base"]["model"]["name"] in models
    assert "--mount=type=secret,id=hf_token" in dockerfile  # a token, if any, never lands in a layer


def port_table() -> dict[int, str]:
    """cluster/README.md's port table: port (ranges expanded to their ends) -> its row."""
    readme = (CLUSTER / "README.md").read_text()
    section = readme[readme.index("## Ports"):readme.index("## Trying it on one machine")]
    rows = {}
    for row in re.findall(r"^\| (\d+(?:-\d+)?) \|.*$", section, re.M):
        line = next(r for r in section.splitlines() if r.startswith(f"| {row} |"))
        for port in row.split("-"):
            rows[int(port)] = line
    return rows


def test_readme_names_every_listening_port():
    from ray.autoscaler._private.constants import AUTOSCALER_METRIC_PORT
    from ray.dashboard.consts import DASHBOARD_METRIC_PORT

    table = port_table()
    cfg = yaml.safe_load((CLUSTER / "ray-up-aws.yaml").read_text())
    starts = " ".join(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])
    ports = {int(p) for p in re.findall(r"--[\w-]*port=(\d+)", starts)}
    job, _ = kuberay()
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports |= {p["containerPort"] for p in head["ports"]}
    ports |= {22, AUTOSCALER_METRIC_PORT, DASHBOARD_METRIC_PORT}  # SSH; Ray's fixed metrics ports
    assert ports - set(table) == set(), f"listening ports missing from cluster/README.md: {ports - set(table)}"
    # The ones that answer without the token are exactly the metrics ports, and the README says so.
    answering = {p for p, row in table.items() if "**answers**" in row}
    assert answering == {8080, AUTOSCALER_METRIC_PORT, DASHBOARD_METRIC_PORT}
    assert "--metrics-export-port" in table[8080] and "--metrics-export-port=8080" in starts


def test_one_machine_section_is_what_the_test_cluster_runs():
    """cluster/README.md's one-machine commands: in a working order, with the flags the cluster fixture uses."""
    from orchestrator.cli import parser

    readme = (CLUSTER / "README.md").read_text()
    block = re.search(r"## Trying it on one machine.*?```bash\n(.*?)```", readme, re.S).group(1)
    lines = [line.split(" #")[0].strip() for line in block.splitlines()]
    assert lines[0] == "source .venv/bin/activate"  # before `python`: where only python3 exists, python is the venv's
    assert re.fullmatch(r'export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=\$\(python -c ".*"\)', lines[1])
    starts = [shlex.split(line) for line in lines if line.startswith("ray start")]
    assert len(starts) == 2
    c = LocalCluster({})
    try:
        for words, node in zip(starts, ("head", "worker")):
            flags = {w.split("=")[0]: w.partition("=")[2] for w in words[2:]}
            ours = {w.split("=")[0]: w.partition("=")[2] for w in c.argv(node)}
            assert set(flags) <= set(ours), f"{node}: the test cluster does not run {set(flags) - set(ours)}"
            for same in ("--node-ip-address", "--num-cpus", "--dashboard-host", "--disable-usage-stats"):
                assert flags.get(same) == ours.get(same), (node, same)
            assert ("--head" in flags) == (node == "head") and "--disable-usage-stats" in flags
    finally:
        shutil.rmtree(c.dir, ignore_errors=True)
    for argv in localist_commands(block):
        parser().parse_args(argv)


def _address(hex_addr: str) -> str:
    """An address of /proc/net/tcp{,6} as text (IPv4-mapped IPv6 as IPv4)."""
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    ip = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    return str(ip.ipv4_mapped or ip)


def listening_sockets(pids) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket the processes `pids` listen on, from /proc: what `ss -ltnp` shows."""
    inodes = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes[link[8:-1]] = pid
        except OSError:  # gone meanwhile
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].rsplit(":", 1)
                found.append((_address(address), int(port, 16), inodes[fields[9]]))
    return sorted(found, key=lambda s: s[1])


def _program(pid: int) -> str:
    """A short name for a process: its script or module for Python, else its executable."""
    try:
        args = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return "?"
    words = [a for a in args[1:] if not a.startswith("-") or a == "-m"] if "python" in Path(args[0]).name else args
    name = words[1] if words[:1] == ["-m"] and len(words) > 1 else (words or args or ["?"])[0]
    return Path(name).name[:24]


def unauthenticated(host: str, port: int, path: str) -> str:
    """What an HTTP GET without the Ray token gets: 'HTTP <status>', or why there was no HTTP answer."""
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path)
        return f"HTTP {conn.getresponse().status}"
    except (OSError, http.client.HTTPException) as e:  # gRPC servers answer HTTP/1 with HTTP/2 frames
        return f"no HTTP ({type(e).__name__})"
    finally:
        conn.close()


def test_only_the_documented_metrics_ports_answer_without_the_token(cluster):
    """`ss`-style evidence: every port the running cluster's processes listen on, and what an HTTP
    request without the token gets from it. Only the metrics ports of the README's table answer."""
    from ray.autoscaler._private.constants import AUTOSCALER_METRIC_PORT
    from ray.dashboard.consts import DASHBOARD_METRIC_PORT

    metrics = {int(a.split("=")[1]) for args in cluster.args.values() for a in args
               if a.startswith("--metrics-export-port=")}
    metrics |= {AUTOSCALER_METRIC_PORT, DASHBOARD_METRIC_PORT}
    sockets = listening_sockets(process_tree([p.pid for p in cluster.procs.values()]))
    assert {cluster.port, cluster.dash} <= {port for _, port, _ in sockets}
    answered, report = set(), []
    for address, port, pid in sockets:
        host = {"0.0.0.0": "127.0.0.1", "::": "127.0.0.1"}.get(address, address)
        results = {path: unauthenticated(host, port, path) for path in ("/", "/metrics", "/api/jobs/")}
        report.append(f"{address:>15}:{port:<6} {_program(pid):<24} {results}")
        if port == cluster.dash:  # the dashboard: its static UI page loads, nothing else
            assert results["/metrics"] == results["/api/jobs/"] == "HTTP 401", results
        elif any(re.fullmatch(r"HTTP [23]\d\d", r) for r in results.values()):
            answered.add(port)
    print("\n" + "\n".join(report))
    assert answered <= metrics, f"ports answering without the token that the README does not list: {answered - metrics}"
    assert answered, "no metrics port answered: Ray changed; check the README's port table"
    for port in answered:  # and what they answer is Prometheus text, read-only
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert b"# TYPE " in r.read()
    assert {p for p, row in port_table().items() if "**answers**" in row} >= {AUTOSCALER_METRIC_PORT,
                                                                               DASHBOARD_METRIC_PORT}


# --- trials of several workers (Ray Train) on the two nodes ---------------------------------------

def test_one_and_two_worker_trials_of_one_sweep_on_both_nodes(cluster, tmp_path):
    """resources.workers on the loopback cluster, in one submitted sweep: a 1-worker trial, a 2-worker
    trial of the same global batch (8 = 4 x 2 workers; with 1 CPU per node and per worker, its two
    gloo workers run one on each node), and its twin whose worker process is SIGKILLed at step 9:
    Ray Train restarts the worker group from the step-6 checkpoint. The twin logs every 3 steps
    instead of 2 (a setting that changes no number, and keeps dedup from merging it with the
    undisturbed one); a peak-0 trial is the report's baseline."""
    import pandas as pd

    steps = 12
    base = tiny_tree(train={"steps": steps, "batch_size": 8, "eval_every": 6, "log_every": 2})
    spec = {"name": "dp", "storage": str(tmp_path / "store"), "base": base,
            "grid": {"configuration": {"peak-0": {"locality": {"peak": 0.0}}, "one-worker": {},
                                       "two-workers": {"train": {"workers": 2, "batch_size": 4}},
                                       "two-workers-killed": {"train": {"workers": 2, "batch_size": 4, "log_every": 3}}},
                     "seeds": [1]},
            "resources": {"cpu": 1}, "retries": 1, "checkpoint_every": 6}
    (tmp_path / "dp.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.env["RAY_AUTH_TOKEN"], PYTHONPATH=str(REPO))
    fault = f"LOCALIST_FAULT=kill@9:{tmp_path / 'killed'}#two-workers-killed__s1"
    fast = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.5"  # Train polls its workers (reports, commits, deaths) 4x as often
    t0 = time.time()
    proc = subprocess.run(CLI + ["submit", "dp.yaml", "--address", cluster.address, "--follow", "--env", fault,
                                 "--env", fast], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    print(f"\nsubmit --follow (one 1-worker and two 2-worker trials): {time.time() - t0:.1f}s")
    assert "2 workers x (1 CPU) = 2 CPU per trial" in out and (tmp_path / "killed").exists()

    results = tmp_path / "store" / "dp" / "results"
    trials = pd.read_parquet(results / "trials.parquet").set_index("configuration")
    assert set(trials.status) == {"completed"}
    assert list(trials.loc[["one-worker", "two-workers"], "global_batch"]) == [8, 8]
    assert trials.loc["two-workers", "train.workers"] == 2 and trials.loc["one-worker", "attempts"] == 1
    steps_df, layers = pd.read_parquet(results / "steps.parquet"), pd.read_parquet(results / "layers.parquet")

    def rows(df, config, cols):
        return df[df.configuration == config].sort_values([c for c in ("step", "split", "layer") if c in df])[cols]

    # the loss curve, eval losses (also by position in block) and per-layer statistics of 1 and 2 workers
    one, two = (rows(steps_df, c, ["step", "split", "loss", "lr", "tokens_seen"]).to_numpy() for c in
                ("one-worker", "two-workers"))
    assert one.shape == two.shape == (steps // 2 + 3, 5)  # train rows every 2 steps, evals at 0, 6 and 12
    assert (one[:, :2] == two[:, :2]).all() and abs(one[:, 2:].astype(float) - two[:, 2:].astype(float)).max() < 1e-5
    stat = ["entropy_bits", "entropy_norm", "in_block_mass"]
    assert abs(rows(layers, "one-worker", stat).to_numpy() - rows(layers, "two-workers", stat).to_numpy()).max() < 1e-5
    pos = ["eval_loss", "eval_loss_pos1", "eval_loss_pos2_4", "eval_loss_pos5p"]
    assert abs(trials.loc["one-worker", pos] - trials.loc["two-workers", pos]).max() < 1e-5

    # the killed trial: a second attempt from its checkpoint, ending where the undisturbed one ends
    killed = tmp_path / "store" / "dp" / "trials" / "two-workers-killed__s1"
    starts = [json.loads(p.read_text()) for p in sorted((killed / "attempts").glob("*.json"))]
    assert [a["from_checkpoint"] for a in starts] == [False, True], starts
    assert "resumed from step 6" in out
    assert abs(trials.loc["two-workers-killed", pos] - trials.loc["two-workers", pos]).max() < 1e-6
    assert abs(rows(layers, "two-workers-killed", stat).to_numpy() - rows(layers, "two-workers", stat).to_numpy()).max() < 1e-6
    assert list(rows(steps_df, "two-workers-killed", ["step"]).step.unique()) == [0, 3, 6, 9, 12]
    assert not list((tmp_path / "store" / "dp" / "tune").rglob("train"))  # completed: no Train checkpoints left
