#!/usr/bin/env python3
"""Checks the deploy files (deploy/) as their own tools would, offline.

- systemd: `systemd-analyze verify --man=no` on the unit. It runs without systemd as PID 1 (as in
  a container), but it checks that ExecStart's binary exists, so it verifies a copy whose
  ExecStart names the binary built here (or /bin/true); and it only warns (exit 0) on a misspelt
  setting, so any output is a failure.
- Kubernetes: kubernetes-validate (PyPI; ships the API schemas, no cluster or network) with
  --strict against a pinned Kubernetes version; no preStop hook (SIGTERM drains).
- Nomad: parsed as HCL2 (PyPI python-hcl2); a system job whose task is stopped with SIGTERM and
  whose kill_timeout is the SANDHOST_SUPERVISOR_STOP_TIMEOUT it passes.

Whether each supervisor's stop timeout covers the drain budget is checked by the real binary, in
crates/sandhost/tests/operate_e2e.rs (deploy_files_*).
"""
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.30.0"


def check_systemd():
    unit = (DEPLOY / "systemd" / "sandhost.service").read_text()
    built = ROOT / "target" / "debug" / "sandhost"
    binary = str(built) if built.exists() else "/bin/true"
    unit = unit.replace("ExecStart=/usr/bin/sandhost ", f"ExecStart={binary} ", 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "sandhost.service"
        path.write_text(unit)
        run = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(path)], capture_output=True, text=True
        )
    output = (run.stdout + run.stderr).strip()
    if run.returncode != 0 or output:
        sys.exit(f"systemd-analyze verify: exit {run.returncode}\n{output}")
    print("deploy/systemd/sandhost.service: systemd-analyze verify passed")


def check_kubernetes():
    path = DEPLOY / "kubernetes" / "daemonset.yaml"
    subprocess.run(
        ["kubernetes-validate", "--strict", "--quiet", "-k", KUBERNETES_VERSION, str(path)], check=True
    )
    if "preStop:" in path.read_text():
        sys.exit(f"{path}: SIGTERM drains; a preStop hook would only delay it")
    print(f"{path.relative_to(ROOT)}: kubernetes-validate --strict passed (Kubernetes {KUBERNETES_VERSION})")


def unquote(value):
    return value.strip('"') if isinstance(value, str) else value


def check_nomad():
    import hcl2

    path = DEPLOY / "nomad" / "sandhost.nomad.hcl"
    with open(path) as f:
        spec = hcl2.load(f)
    (job,) = spec["job"]
    ((_, body),) = job.items()
    problems = []
    if unquote(body.get("type")) != "system":
        problems.append("the job is not a system job")
    tasks = [t for g in body["group"] for gbody in g.values() for t in gbody.get("task", [])]
    for task in tasks:
        ((name, t),) = task.items()
        env = {k: unquote(v) for e in t.get("env", []) for k, v in e.items() if not k.startswith("__")}
        if unquote(t.get("kill_signal")) != "SIGTERM":
            problems.append(f"task {name}: kill_signal is not SIGTERM")
        if unquote(t.get("kill_timeout")) != env.get("SANDHOST_SUPERVISOR_STOP_TIMEOUT"):
            problems.append(f"task {name}: kill_timeout differs from SANDHOST_SUPERVISOR_STOP_TIMEOUT")
    if not tasks or problems:
        sys.exit(f"{path}: " + ("; ".join(problems) or "no task"))
    print(f"{path.relative_to(ROOT)}: parsed as HCL2; system job, SIGTERM, kill_timeout passed to the agent")


if __name__ == "__main__":
    os.chdir(ROOT)
    check_systemd()
    check_kubernetes()
    check_nomad()
