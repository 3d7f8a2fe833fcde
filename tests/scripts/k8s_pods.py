"""What Kubernetes would run from the manifests of scripts/launch_k8s.py, as local processes.

Two checks a real cluster would make, without one:
- `check_models`: each object loads into the `kubernetes` client's models
  (Service, Job; a JobSet's Job templates) and serialises back to exactly the
  same dict, so no field is misspelt, misplaced or of the wrong type (the
  models drop what they do not know). The JobSet itself, a custom resource the
  client has no model for, is checked against the fields of JobSet's
  v1alpha2 API.
- `pod_commands`: each pod's command line and environment as the kubelet
  would make them: the downward-API fields filled in for the pod's index,
  `$(VAR)` references expanded, and the coordinator's DNS name (pod 0 under
  the headless Service, named by Kubernetes' rules) resolved to 127.0.0.1.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from kubernetes import client

_INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"

# The JobSet v1alpha2 fields (jobset.x-k8s.io, api/jobset/v1alpha2/jobset_types.go).
_JOBSET_FIELDS = {
    "": {"apiVersion", "kind", "metadata", "spec"},
    "spec": {
        "replicatedJobs",
        "network",
        "successPolicy",
        "failurePolicy",
        "startupPolicy",
        "suspend",
        "coordinator",
        "managedBy",
        "ttlSecondsAfterFinished",
    },
    "spec.network": {"enableDNSHostnames", "subdomain", "publishNotReadyAddresses"},
    "spec.failurePolicy": {"maxRestarts", "restartStrategy", "rules"},
    "spec.failurePolicy.rules": {"name", "action", "onJobFailureReasons", "targetReplicatedJobs"},
    "spec.replicatedJobs": {"name", "replicas", "template", "dependsOn"},
}
_JOBSET_ENUMS = {
    "action": {"FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts"},
    "onJobFailureReasons": {
        "BackoffLimitExceeded",
        "DeadlineExceeded",
        "PodFailurePolicy",
        "MaxFailedIndexesExceeded",
    },
}


def round_trip(obj: dict, model: str) -> dict:
    """`obj` loaded into the client model `model` (e.g. 'V1Job') and serialised back."""
    api = client.ApiClient()
    return api.sanitize_for_serialization(
        api.deserialize(json.dumps(obj), model, "application/json")
    )


def _check_fields(obj, path: str) -> None:
    if isinstance(obj, list):
        for item in obj:
            _check_fields(item, path)
        return
    allowed = _JOBSET_FIELDS.get(path)
    if allowed is None or not isinstance(obj, dict):
        return
    unknown = set(obj) - allowed
    assert not unknown, f"JobSet {path or 'object'} has unknown fields {sorted(unknown)}"
    for key, value in obj.items():
        if key in _JOBSET_ENUMS:
            values = value if isinstance(value, list) else [value]
            assert set(values) <= _JOBSET_ENUMS[key], f"JobSet {key}={value}"
        if key != "template":
            _check_fields(value, f"{path}.{key}".lstrip("."))


def check_models(manifests: list[dict]) -> None:
    """Raises AssertionError if an object is not what Kubernetes' API accepts."""
    for obj in manifests:
        kind = obj["kind"]
        if kind in ("Service", "Job"):
            assert obj["apiVersion"] == {"Service": "v1", "Job": "batch/v1"}[kind], obj
            assert round_trip(obj, f"V1{kind}") == obj, kind
        elif kind == "JobSet":
            assert obj["apiVersion"] == "jobset.x-k8s.io/v1alpha2", obj["apiVersion"]
            _check_fields(obj, "")
            client.V1ObjectMeta(**{_snake(k): v for k, v in obj["metadata"].items()})
            for replicated in obj["spec"]["replicatedJobs"]:
                template = replicated["template"]
                assert round_trip(template, "V1JobTemplateSpec") == template
        else:
            raise AssertionError(f"unexpected kind {kind}")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass(frozen=True)
class PodCommand:
    index: int
    argv: list[str]
    env: dict[str, str]
    working_dir: str | None


def _pods(manifests: list[dict]) -> tuple[dict, list[str], str]:
    """The Job spec, each pod's hostname by Kubernetes' naming, and the pods' subdomain."""
    by_kind = {obj["kind"]: obj for obj in manifests}
    if "JobSet" in by_kind:
        jobset = by_kind["JobSet"]
        (replicated,) = jobset["spec"]["replicatedJobs"]
        spec = replicated["template"]["spec"]
        # JobSet names Job j of replicated job R `<jobset>-<R>-<j>`, its pods `<job>-<index>`.
        job_name = f"{jobset['metadata']['name']}-{replicated['name']}-0"
        network = jobset["spec"].get("network", {})
        assert network.get("enableDNSHostnames"), network
        subdomain = network.get("subdomain", jobset["metadata"]["name"])
    else:
        job, service = by_kind["Job"], by_kind["Service"]
        spec = job["spec"]
        job_name = job["metadata"]["name"]
        subdomain = spec["template"]["spec"].get("subdomain")
        # The headless Service that gives the pods their DNS names selects them.
        assert subdomain == service["metadata"]["name"], (subdomain, service["metadata"])
        assert service["spec"]["clusterIP"] == "None", service["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), labels
    assert spec["completionMode"] == "Indexed", spec
    assert spec["parallelism"] == spec["completions"], spec
    return spec, [f"{job_name}-{i}" for i in range(spec["completions"])], subdomain


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined names replaced, `$$` an escaped `$`."""

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, text)


def pod_commands(manifests: list[dict]) -> list[PodCommand]:
    """Each pod's argv and environment, the coordinator's host resolved to 127.0.0.1."""
    spec, hostnames, subdomain = _pods(manifests)
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    commands = []
    for index in range(spec["completions"]):
        env: dict[str, str] = {}
        for var in container.get("env", []):
            if "valueFrom" in var:
                field = var["valueFrom"]["fieldRef"]["fieldPath"]
                assert field == _INDEX_FIELD, f"downward-API field {field} not simulated"
                env[var["name"]] = str(index)
            else:
                env[var["name"]] = _expand(var["value"], env)
        argv = [_expand(a, env) for a in container["command"] + container.get("args", [])]
        coordinator = [a for a in argv if a.startswith("--coordinator_address=")]
        assert len(coordinator) == 1, argv
        host, port = coordinator[0].split("=", 1)[1].rsplit(":", 1)
        assert host == f"{hostnames[0]}.{subdomain}", (host, hostnames[0], subdomain)
        argv = [f"--coordinator_address=127.0.0.1:{port}" if a in coordinator else a for a in argv]
        commands.append(PodCommand(index, argv, env, container.get("workingDir")))
    return commands
