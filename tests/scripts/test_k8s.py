"""scripts/launch_k8s.py: the manifests load into Kubernetes' models, and their pods train.

No cluster: the manifests are checked with the `kubernetes` client's models
(tests/scripts/k8s_pods.py), and each pod's command and environment, as the
kubelet would build them for its index, runs as a local process with the
coordinator's DNS name resolved to 127.0.0.1.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import portpicker
import pytest
import yaml

from tests.helpers import REPO, committed_steps, env, finals
from tests.scripts import k8s_pods

LAUNCH = REPO / "scripts" / "launch_k8s.py"
TIMEOUT_S = 60
BASE = ("--name=lm", "--hosts=2", "--image=registry.example/podfit:1", "--workdir=gs://b/run")
TPU = ("--tpu_accelerator=tpu-v5-lite-podslice", "--tpu_topology=2x4", "--tpu_chips_per_host=4")


def _launch(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(LAUNCH), *args],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def _render(*args: str) -> list[dict]:
    r = _launch("--dry_run", *args)
    assert r.returncode == 0, r.stderr
    return list(yaml.safe_load_all(r.stdout))


def _job_spec(manifests: list[dict]) -> dict:
    (obj,) = [m for m in manifests if m["kind"] in ("Job", "JobSet")]
    if obj["kind"] == "Job":
        return obj["spec"]
    return obj["spec"]["replicatedJobs"][0]["template"]["spec"]


@pytest.mark.parametrize("kind", ["jobset", "job"])
@pytest.mark.parametrize("hardware", [(), TPU, ("--gpus_per_host=8",)], ids=["cpu", "tpu", "gpu"])
def test_manifests_load_into_kubernetes_models(kind, hardware):
    manifests = _render(*BASE, f"--kind={kind}", *hardware, "--", "--config=configs/lm.py")
    assert [m["kind"] for m in manifests] == (
        ["JobSet"] if kind == "jobset" else ["Service", "Job"]
    )
    k8s_pods.check_models(manifests)
    spec = _job_spec(manifests)
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 300 and pod["restartPolicy"] == "Never"
    (rule,) = spec["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [2]
    assert spec["backoffLimit"] == (0 if kind == "jobset" else 6)  # 3 restarts x 2 hosts.


def test_model_check_fails_on_a_misspelt_field():
    (service, job) = _render(*BASE, "--kind=job")
    broken = copy.deepcopy(job)
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 300
    with pytest.raises(AssertionError):
        k8s_pods.check_models([service, broken])
    (jobset,) = _render(*BASE)
    jobset["spec"]["network"]["enableDnsHostnames"] = True
    with pytest.raises(AssertionError, match="unknown fields"):
        k8s_pods.check_models([jobset])


def test_tpu_resources_node_selectors_and_worker_hostnames():
    (jobset,) = _render(*BASE, *TPU)
    pod = _job_spec([jobset])["template"]["spec"]
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
        "cloud.google.com/gke-tpu-topology": "2x4",
    }
    (container,) = pod["containers"]
    assert container["resources"] == {"limits": {"google.com/tpu": "4"}}
    commands = k8s_pods.pod_commands([jobset])
    assert [c.env["TPU_WORKER_ID"] for c in commands] == ["0", "1"]
    assert commands[1].env["TPU_WORKER_HOSTNAMES"] == "lm-workers-0-0.lm,lm-workers-0-1.lm"


def test_gpu_resources_and_process_ids():
    manifests = _render(*BASE, "--kind=job", "--gpus_per_host=8", "--", "--config=configs/lm.py")
    (container,) = _job_spec(manifests)["template"]["spec"]["containers"]
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "8"}}
    assert "nodeSelector" not in _job_spec(manifests)["template"]["spec"]
    for index, command in enumerate(k8s_pods.pod_commands(manifests)):
        assert command.argv[:3] == ["python3", "-m", "launcher.main"]
        assert command.argv[3:] == [
            "--config=configs/lm.py",
            "--workdir=gs://b/run",
            "--coordinator_address=127.0.0.1:8476",  # lm-0.lm, resolved.
            "--num_processes=2",
            f"--process_id={index}",
        ]


def test_writes_the_file_for_kubectl_apply(tmp_path):
    r = _launch(*BASE, "--kind=job", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "kubectl apply -f lm.yaml" in r.stdout
    assert [m["kind"] for m in yaml.safe_load_all((tmp_path / "lm.yaml").read_text())] == [
        "Service",
        "Job",
    ]


@pytest.mark.parametrize(
    "args,field",
    [
        (("--hosts=2", "--image=i", "--workdir=w"), "--name"),
        (("--name=lm", "--hosts=0", "--image=i", "--workdir=w"), "--hosts"),
        (("--name=lm", "--hosts=2", "--workdir=w"), "--image"),
        (("--name=lm", "--hosts=2", "--image=i"), "--workdir"),
        (("--name=Lm_1", "--hosts=2", "--image=i", "--workdir=w"), "--name"),
        (("--name=" + "a" * 60, "--hosts=2", "--image=i", "--workdir=w"), "--name"),
        ((*BASE, "--port=70000"), "--port"),
        ((*BASE, "--tpu_topology=2x4"), "--tpu_accelerator"),
        ((*BASE, *TPU, "--gpus_per_host=8"), "--gpus_per_host"),
        ((*BASE, "--kind=slurm"), "--kind"),
        ((*BASE, "--", "--process_id=0"), "--process_id"),
        ((*BASE, "--", "--workdir=/tmp/x"), "--workdir"),
        ((*BASE, "--config=configs/lm.py"), "config"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args, field):
    r = _launch("--dry_run", *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("launch_k8s: ") and field in lines[0], lines


@pytest.mark.multiprocess
@pytest.mark.parametrize("kind", ["jobset", "job"])
def test_each_pod_as_a_local_process_trains_and_commits(kind, tmp_path):
    workdir = tmp_path / "run"
    manifests = _render(
        "--name=lm",
        "--hosts=2",
        "--image=registry.example/podfit:1",
        f"--workdir={workdir}",
        f"--kind={kind}",
        f"--port={portpicker.pick_unused_port()}",
        "--",
        "--config=configs/lm.py:tiny",
        "--num_cpu_devices=4",
    )
    k8s_pods.check_models(manifests)
    commands = k8s_pods.pod_commands(manifests)
    procs = []
    try:
        for command in commands:
            assert command.argv[0] == "python3" and command.working_dir is None
            with open(tmp_path / f"pod_{command.index}.out", "w") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, *command.argv[1:]],
                        cwd=REPO,  # The image's working directory: the repository.
                        env={**env(), **command.env},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    logs = [(tmp_path / f"pod_{c.index}.out").read_text()[-3000:] for c in commands]
    assert codes == [0, 0], logs
    # Joined as process 1 of 2: the index expanded (its log file has the topology line).
    assert "process 1/2" in (workdir / "logs" / "process_1.log").read_text(), logs[1]
    assert committed_steps(workdir) == [8], committed_steps(workdir)
    done = finals(workdir)
    assert len(done) == 2 and done[0]["weights_sha256"] == done[1]["weights_sha256"], done
    assert [d["final_step"] for d in done] == [8, 8]
