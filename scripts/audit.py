"""Dependency audit of the installed environment: pip-audit, plus a fallback where it cannot see a package.

    .venv/bin/python scripts/audit.py [--strict] [--out FILE]

1. ``pip-audit --local --skip-editable`` checks every installed distribution against PyPI's vulnerability
   data for its exact version (``/pypi/<name>/<version>/json``).
2. A package pip-audit skips ("not found on PyPI": an index or mirror that serves only the project-level JSON
   API answers 404 for release URLs) is checked through ``/pypi/<name>/json``, whose ``vulnerabilities`` list
   covers the project's most recent release (docs.pypi.org/api/json): used only when that release is the
   installed version; otherwise the package stays unaudited.

Exit status: 1 when any installed version has a known vulnerability. Packages that could not be checked at
all (no network, a version older than the latest release behind a mirror without release URLs) are listed
under a banner, never passed over in silence; they fail the audit only with ``--strict`` (or
``FEATURESERVE_AUDIT_STRICT=1``). So offline, CI goes on and says loudly that the audit did not run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

PYPI_JSON = os.environ.get("FEATURESERVE_AUDIT_PYPI_JSON", "https://pypi.org/pypi/{name}/json")
TIMEOUT_S = 20


def run_pip_audit() -> tuple[list[dict[str, Any]], str | None]:
    """pip-audit's dependency list, and why it failed when it produced none."""
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "audit.json"
        command = [
            sys.executable, "-m", "pip_audit", "--local", "--skip-editable", "--format", "json",
            "--progress-spinner", "off", "--timeout", str(TIMEOUT_S), "--output", str(out),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if not out.exists() or not out.read_text().strip():
            return [], (done.stderr.strip().splitlines() or [f"pip-audit exited with {done.returncode}"])[-1]
        return json.loads(out.read_text())["dependencies"], None


def latest_release_vulnerabilities(name: str, version: str) -> tuple[str, list[dict[str, Any]]]:
    """``("audited", vulns)`` when the project's most recent release is ``version``; else ``("unaudited", [])``
    with the reason in place of a status."""
    try:
        with urllib.request.urlopen(PYPI_JSON.format(name=name), timeout=TIMEOUT_S) as response:
            project = json.load(response)
    except (urllib.error.URLError, TimeoutError, OSError, json.JSONDecodeError) as error:
        return f"unaudited: {type(error).__name__}: {error}"[:160], []
    latest = project.get("info", {}).get("version", "")
    try:
        same = Version(latest) == Version(version)
    except InvalidVersion:
        same = latest == version
    if not same:
        return f"unaudited: installed {version}, the latest release is {latest}", []
    return "audited", [v for v in project.get("vulnerabilities") or [] if not v.get("withdrawn")]


def audit(strict: bool) -> tuple[int, dict[str, Any]]:
    """Run the audit; the exit status and the report."""
    dependencies, failure = run_pip_audit()
    if failure is not None:
        dependencies = [
            {"name": canonicalize_name(line.split("==")[0]), "version": line.split("==")[1], "skip_reason": failure}
            for line in subprocess.run(
                [sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True
            ).stdout.splitlines()
            if "==" in line
        ]
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    for dependency in dependencies:  # pip-audit leaves out the version of a package it skips
        dependency.setdefault("version", installed.get(canonicalize_name(dependency["name"]), "?"))
    report: dict[str, Any] = {"pip_audit_failure": failure, "packages": {}}
    fallback = [d for d in dependencies if "skip_reason" in d and "editable" not in d["skip_reason"]]
    with ThreadPoolExecutor(8) as threads:
        checked = dict(
            zip(
                [d["name"] for d in fallback],
                threads.map(lambda d: latest_release_vulnerabilities(d["name"], d["version"]), fallback),
                strict=True,
            )
        )
    for dependency in dependencies:
        name = dependency["name"]
        if "skip_reason" in dependency and "editable" in dependency["skip_reason"]:
            continue
        if name in checked:
            status, vulns = checked[name]
            source = "latest-release JSON"
        else:
            status, vulns = "audited", dependency.get("vulns", [])
            source = "pip-audit"
        report["packages"][name] = {
            "version": dependency["version"],
            "status": status,
            "source": source if status == "audited" else None,
            "vulnerabilities": [
                {"id": v.get("id"), "fix_versions": v.get("fix_versions") or v.get("fixed_in") or []} for v in vulns
            ],
        }
    packages = report["packages"]
    vulnerable = {n: p for n, p in packages.items() if p["vulnerabilities"]}
    unaudited = {n: p for n, p in packages.items() if p["status"] != "audited"}
    by_source = {s: sum(p["source"] == s for p in packages.values()) for s in ("pip-audit", "latest-release JSON")}
    report["summary"] = {
        "packages": len(packages),
        "audited": len(packages) - len(unaudited),
        "audited_by": by_source,
        "unaudited": len(unaudited),
        "vulnerable": len(vulnerable),
    }
    print(
        f"dependency audit: {len(packages)} packages; {len(packages) - len(unaudited)} checked "
        f"({by_source['pip-audit']} by pip-audit for their exact version, {by_source['latest-release JSON']} "
        f"through PyPI's latest-release JSON), {len(unaudited)} not checked, {len(vulnerable)} vulnerable"
    )
    for name, package in sorted(vulnerable.items()):
        for v in package["vulnerabilities"]:
            print(
                f"  VULNERABLE {name} {package['version']}: {v['id']} (fixed in {', '.join(v['fix_versions']) or '?'})"
            )
    if unaudited:
        banner = "DEPENDENCY AUDIT DID NOT RUN" if len(unaudited) == len(packages) else "DEPENDENCY AUDIT INCOMPLETE"
        print(f"  *** {banner}: {len(unaudited)} of {len(packages)} packages could not be checked ***")
        if failure:
            print(f"  pip-audit failed: {failure}")
        for name, package in sorted(unaudited.items()):
            print(f"    {name} {package['version']}: {package['status'].removeprefix('unaudited: ')}")
        if not strict:
            print("  (not an error without --strict or FEATURESERVE_AUDIT_STRICT=1; see docs/reliability.md)")
    code = 1 if vulnerable or (unaudited and strict) else 0
    return code, report


def main() -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strict", action="store_true", help="fail when any package could not be checked")
    parser.add_argument("--out", type=Path, help="write the full report as JSON")
    args = parser.parse_args()
    strict = args.strict or os.environ.get("FEATURESERVE_AUDIT_STRICT") == "1"
    code, report = audit(strict)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
