"""Renders the Kubernetes manifests that run the launcher once per host: a JobSet, or an Indexed Job.

Usage:
  python scripts/launch_k8s.py --name=lm --hosts=4 --image=REGISTRY/podfit:TAG \\
      --workdir=gs://my-bucket/runs/lm [--kind=jobset|job] [--port=8476] \\
      [--tpu_accelerator=tpu-v5-lite-podslice --tpu_topology=4x4 --tpu_chips_per_host=4 |
       --gpus_per_host=8] [--output=lm.yaml | --dry_run] -- --config=configs/lm.py
  kubectl apply -f lm.yaml

--kind=jobset (the default) writes one JobSet (jobset.x-k8s.io/v1alpha2; the
JobSet controller must be installed): one replicated Job of --hosts pods, a
headless Service made by the controller, and on any pod's failure the whole
set restarts together (up to --max_restarts). --kind=job writes, for clusters
without JobSet, a headless Service and an Indexed Job (`completionMode:
Indexed`, parallelism = completions = --hosts) whose failed pods are replaced
one by one (`backoffLimit` = --max_restarts x --hosts).

Every pod runs `python3 -m launcher.main LAUNCHER_FLAGS --workdir=WORKDIR
--coordinator_address=POD0:PORT --num_processes=HOSTS
--process_id=$(JOB_COMPLETION_INDEX)`: Kubernetes expands the index from the
pod's downward API, and POD0 is the DNS name of the pod of index 0 under the
headless Service (`<name>-0.<name>` for a Job, `<name>-workers-0-0.<name>` for
a JobSet), so no process needs to read the Kubernetes API (no RBAC). Exit 2
(bad flags or config) fails the job without a retry (pod failure policy); exit
75 (preempted, checkpoint committed) and other failures are retried, and
every retry resumes from the last committed step in WORKDIR, which therefore
must be storage every pod sees (gs://, a shared volume).
`terminationGracePeriodSeconds` (--termination_grace_s) is how long a pod
that gets SIGTERM (eviction, node drain, preemption) has to commit its
checkpoint before it is killed.

--dry_run prints the YAML; otherwise it is written to --output (default
NAME.yaml) for `kubectl apply -f`. Bad flags exit 2 with one line.
"""

from __future__ import annotations

import re
import sys

import launch_flags  # scripts/, beside this file
import yaml
from absl import app, flags

# Flags this script sets for each pod; passing them after `--` too would give two values.
_MANAGED_FLAGS = ("coordinator_address", "num_processes", "process_id", "workdir")
_CONTAINER = "podfit"
_REPLICATED_JOB = "workers"
_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
_LABEL = "podfit.job"
# A DNS-1035 label: what Service names and pod hostnames must be.
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_MAX_LABEL = 63

_NAME = flags.DEFINE_string("name", None, "Name of the Job/JobSet and of its headless Service.")
_KIND = flags.DEFINE_enum("kind", "jobset", ["jobset", "job"], "JobSet, or Indexed Job + Service.")
_HOSTS = flags.DEFINE_integer("hosts", None, "Pods (hosts, processes) in the job.")
_IMAGE = flags.DEFINE_string("image", None, "Container image with podfit installed.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "The launcher's --workdir, shared by every pod (gs://bucket/run)."
)
_NAMESPACE = flags.DEFINE_string("namespace", "default", "Namespace of the objects.")
_PORT = flags.DEFINE_integer("port", 8476, "Port of the coordination service on pod 0.")
_PYTHON = flags.DEFINE_string("python", "python3", "The Python in the image that has podfit.")
_WORKING_DIR = flags.DEFINE_string(
    "working_dir", None, "Directory of the repository in the image (default: the image's)."
)
_MAX_RESTARTS = flags.DEFINE_integer(
    "max_restarts", 3, "Restarts of the whole job after failures (exit 75 included)."
)
_GRACE_S = flags.DEFINE_integer(
    "termination_grace_s", 300, "Seconds between SIGTERM and SIGKILL: the final checkpoint's time."
)
_TPU_ACCELERATOR = flags.DEFINE_string(
    "tpu_accelerator", None, "GKE TPU type (node selector), e.g. tpu-v5-lite-podslice."
)
_TPU_TOPOLOGY = flags.DEFINE_string("tpu_topology", None, "TPU slice topology, e.g. 4x4.")
_TPU_CHIPS = flags.DEFINE_integer("tpu_chips_per_host", None, "google.com/tpu chips per pod.")
_GPUS = flags.DEFINE_integer("gpus_per_host", None, "nvidia.com/gpu GPUs per pod (one process).")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the YAML (default NAME.yaml).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the YAML; write nothing.")


def _usage_error(message: str) -> None:
    launch_flags.usage_error("launch_k8s", message)


_parse_flags = launch_flags.parser("launch_k8s", "launch_k8s.py --name=lm ... --")


def _pod_hostname(name: str, kind: str, index: int) -> str:
    """The hostname Kubernetes gives the pod of `index` (Job or JobSet naming)."""
    return f"{name}-{index}" if kind == "job" else f"{name}-{_REPLICATED_JOB}-0-{index}"


def _validate(passthrough: list[str]) -> None:
    for flag in (_NAME, _IMAGE, _WORKDIR):
        if not flag.value:
            _usage_error(f"--{flag.name} is required. Received: --{flag.name}={flag.value!r}")
    if _HOSTS.value is None or _HOSTS.value < 1:
        _usage_error(f"--hosts must be >= 1. Received: --hosts={_HOSTS.value}")
    last = _pod_hostname(_NAME.value, _KIND.value, _HOSTS.value - 1)
    if not _DNS_LABEL.match(_NAME.value) or len(last) > _MAX_LABEL:
        _usage_error(
            "--name must be lowercase letters, digits and '-', start with a letter, and keep "
            f"the pod hostname {last!r} within {_MAX_LABEL} characters. Received: --name={_NAME.value}"
        )
    if not 1 <= _PORT.value <= 65535:
        _usage_error(f"--port must be in [1, 65535]. Received: --port={_PORT.value}")
    for flag in (_MAX_RESTARTS, _GRACE_S):
        if flag.value < 0:
            _usage_error(f"--{flag.name} must be >= 0. Received: --{flag.name}={flag.value}")
    tpu = [_TPU_ACCELERATOR.value, _TPU_TOPOLOGY.value, _TPU_CHIPS.value]
    if any(v is not None for v in tpu) and not all(v for v in tpu):
        _usage_error(
            "--tpu_accelerator, --tpu_topology and --tpu_chips_per_host go together. Received: "
            f"--tpu_accelerator={tpu[0]} --tpu_topology={tpu[1]} --tpu_chips_per_host={tpu[2]}"
        )
    if _TPU_CHIPS.value is not None and _TPU_CHIPS.value < 1:
        _usage_error(f"--tpu_chips_per_host must be >= 1. Received: {_TPU_CHIPS.value}")
    if _GPUS.value is not None and (_GPUS.value < 1 or _TPU_CHIPS.value is not None):
        _usage_error(
            "--gpus_per_host must be >= 1 and cannot go with TPU flags. Received: "
            f"--gpus_per_host={_GPUS.value} --tpu_chips_per_host={_TPU_CHIPS.value}"
        )
    for arg in passthrough:
        name = arg.lstrip("-").split("=", 1)[0]
        if arg.startswith("-") and name in _MANAGED_FLAGS:
            _usage_error(
                f"--{name} is set by launch_k8s.py for each pod; remove it after '--'. "
                f"Received: {arg}"
            )


def _container(passthrough: list[str], coordinator_host: str, hostnames: list[str]) -> dict:
    env = [
        {
            "name": "JOB_COMPLETION_INDEX",
            "valueFrom": {
                "fieldRef": {"fieldPath": f"metadata.annotations['{_INDEX_ANNOTATION}']"}
            },
        },
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    resources: dict = {}
    if _TPU_CHIPS.value:
        resources = {"limits": {"google.com/tpu": str(_TPU_CHIPS.value)}}
        # What libtpu needs to find the slice's other hosts (GKE's docs for Indexed Jobs).
        env += [
            {"name": "TPU_WORKER_ID", "value": "$(JOB_COMPLETION_INDEX)"},
            {"name": "TPU_WORKER_HOSTNAMES", "value": ",".join(hostnames)},
        ]
    elif _GPUS.value:
        resources = {"limits": {"nvidia.com/gpu": str(_GPUS.value)}}
    container = {
        "name": _CONTAINER,
        "image": _IMAGE.value,
        "command": [_PYTHON.value, "-m", "launcher.main"],
        "args": [
            *passthrough,
            f"--workdir={_WORKDIR.value}",
            f"--coordinator_address={coordinator_host}:{_PORT.value}",
            f"--num_processes={_HOSTS.value}",
            "--process_id=$(JOB_COMPLETION_INDEX)",
        ],
        "env": env,
        "ports": [{"name": "coordinator", "containerPort": _PORT.value}],
    }
    if resources:
        container["resources"] = resources
    if _WORKING_DIR.value:
        container["workingDir"] = _WORKING_DIR.value
    return container


def _job_spec(passthrough: list[str], *, backoff_limit: int, subdomain: str | None) -> dict:
    """An Indexed Job's spec: one pod per host, exit 2 fails it without a retry."""
    kind, name = _KIND.value, _NAME.value
    hostnames = [
        f"{_pod_hostname(name, kind, i)}.{name}" for i in range(_HOSTS.value)
    ]  # The Service (Job) or the JobSet's subdomain is named NAME too.
    pod_spec: dict = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": _GRACE_S.value,
        "containers": [_container(passthrough, hostnames[0], hostnames)],
    }
    if subdomain:
        pod_spec["subdomain"] = subdomain
    if _TPU_CHIPS.value:
        pod_spec["nodeSelector"] = {
            "cloud.google.com/gke-tpu-accelerator": _TPU_ACCELERATOR.value,
            "cloud.google.com/gke-tpu-topology": _TPU_TOPOLOGY.value,
        }
    return {
        "completionMode": "Indexed",
        "completions": _HOSTS.value,
        "parallelism": _HOSTS.value,
        "backoffLimit": backoff_limit,
        "podFailurePolicy": {
            "rules": [
                {
                    # Bad flags or config: every retry would exit 2 again.
                    "action": "FailJob",
                    "onExitCodes": {"containerName": _CONTAINER, "operator": "In", "values": [2]},
                }
            ]
        },
        "template": {"metadata": {"labels": {_LABEL: name}}, "spec": pod_spec},
    }


def _metadata() -> dict:
    return {"name": _NAME.value, "namespace": _NAMESPACE.value, "labels": {_LABEL: _NAME.value}}


def manifests(passthrough: list[str]) -> list[dict]:
    """The objects to apply, as dicts."""
    if _KIND.value == "job":
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _metadata(),
            "spec": {
                "clusterIP": "None",  # Headless: DNS names for the pods, no proxy.
                "publishNotReadyAddresses": True,  # Pod 0 resolves before it is Ready.
                "selector": {_LABEL: _NAME.value},
                "ports": [{"name": "coordinator", "port": _PORT.value}],
            },
        }
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": _metadata(),
            "spec": _job_spec(
                passthrough,
                backoff_limit=_MAX_RESTARTS.value * _HOSTS.value,
                subdomain=_NAME.value,
            ),
        }
        return [service, job]
    # JobSet: its controller makes the headless Service (network.subdomain) and
    # sets each pod's subdomain; any Job failure restarts every Job together.
    metadata = _metadata()
    if _TPU_CHIPS.value:
        # One slice per node pool (GKE's multi-host TPU JobSets).
        metadata["annotations"] = {
            "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"
        }
    jobset = {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": metadata,
        "spec": {
            "network": {
                "enableDNSHostnames": True,
                "subdomain": _NAME.value,
                "publishNotReadyAddresses": True,
            },
            "failurePolicy": {
                "maxRestarts": _MAX_RESTARTS.value,
                # A Job failed by its pod failure policy (exit 2) is not restarted.
                "rules": [
                    {
                        "name": "bad-config",
                        "action": "FailJobSet",
                        "onJobFailureReasons": ["PodFailurePolicy"],
                    }
                ],
            },
            "replicatedJobs": [
                {
                    "name": _REPLICATED_JOB,
                    "replicas": 1,
                    "template": {"spec": _job_spec(passthrough, backoff_limit=0, subdomain=None)},
                }
            ],
        },
    }
    return [jobset]


def main(argv: list[str]) -> int:
    passthrough = argv[1:]
    _validate(passthrough)
    text = yaml.safe_dump_all(manifests(passthrough), sort_keys=False)
    if _DRY_RUN.value:
        sys.stdout.write(text)
        return 0
    output = _OUTPUT.value or f"{_NAME.value}.yaml"
    try:
        with open(output, "w") as f:
            f.write(text)
    except OSError as e:
        _usage_error(f"--output cannot be written ({e.strerror}). Received: --output={output}")
    print(f"launch_k8s: wrote {output}; run: kubectl apply -f {output}")
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
