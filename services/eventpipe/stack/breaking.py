"""``buf breaking`` on protos/ against an earlier commit (``make lint``, and so ``.ci/run``).

Which commit, the first that applies:

1. ``$BUF_BREAKING_AGAINST`` (any git revision), to check a whole piece of work against the
   commit it started from;
2. on a branch that main does not contain: the merge-base with main (``origin/main`` when the
   clone has it, else the local ``main``): everything the branch changes;
3. otherwise (on main itself, as in a fresh clone in CI): ``HEAD~1``, so the working tree
   plus the newest commit are checked against the contract as it was before them;
4. with no earlier commit (a clone of one commit) there is nothing to compare: it says so and
   passes.

A deliberate break (the API is not public yet) is acknowledged in the commit that makes it, with
a trailer line ``Buf-Skip-Breaking: <why>`` in its message: when a commit after the one compared
with carries it, the differences are still printed, and the check passes.

The earlier protos and ``buf.yaml`` are taken from git into a temporary folder, beside a copy of
the googleapis protos ``make protos`` put in ``.build/third_party/protos`` (not committed), and
buf compares the working tree with that folder under the rules of ``buf.yaml`` (``FILE``).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from eventpipe.stack import install
from eventpipe.stack.edge import REPO_ROOT

SKIP_TRAILER = "Buf-Skip-Breaking"
THIRD_PARTY = Path(".build") / "third_party" / "protos"
MAIN_BRANCHES = ("origin/main", "main")


def _git(*args: str, cwd: Path = REPO_ROOT) -> str | None:
    """The command's output, or None when git says no (an unknown revision)."""
    result = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else None


def _is_ancestor(ancestor: str, descendant: str, cwd: Path) -> bool:
    result = subprocess.run(
        ["git", "merge-base", "--is-ancestor", ancestor, descendant],
        cwd=cwd,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return result.returncode == 0


def base_commit(cwd: Path = REPO_ROOT, override: str | None = None) -> str | None:
    """The commit to compare with (see the module docstring), or None when there is none."""
    if override:
        commit = _git("rev-parse", "--verify", f"{override}^{{commit}}", cwd=cwd)
        if commit is None:
            raise ValueError(f"BUF_BREAKING_AGAINST={override!r} is not a commit of this clone")
        return commit
    head = _git("rev-parse", "--verify", "HEAD^{commit}", cwd=cwd)
    if head is None:
        return None
    for branch in MAIN_BRANCHES:
        main = _git("rev-parse", "--verify", "--quiet", f"{branch}^{{commit}}", cwd=cwd)
        if main is None:
            continue
        if not _is_ancestor(head, main, cwd):
            return _git("merge-base", head, main, cwd=cwd)
        break
    return _git("rev-parse", "--verify", "--quiet", "HEAD~1^{commit}", cwd=cwd)


def acknowledged_breaks(commit: str, cwd: Path = REPO_ROOT) -> list[str]:
    """The ``Buf-Skip-Breaking`` reasons of the commits after ``commit`` up to HEAD."""
    trailer_format = f"--format=%(trailers:key={SKIP_TRAILER},valueonly)"
    output = _git("log", trailer_format, f"{commit}..HEAD", cwd=cwd) or ""
    return [line.strip() for line in output.splitlines() if line.strip()]


def _export(commit: str, into: Path, cwd: Path) -> bool:
    """Writes ``protos/`` and ``buf.yaml`` as they were at ``commit``; False if it had none."""
    result = subprocess.run(
        ["git", "archive", "--format=tar", commit, "--", "protos", "buf.yaml"],
        cwd=cwd,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        return False
    with tarfile.open(fileobj=io.BytesIO(result.stdout)) as archive:
        archive.extractall(into, filter="data")
    return True


def main() -> int:
    commit = base_commit(override=os.environ.get("BUF_BREAKING_AGAINST") or None)
    if commit is None:
        print("buf breaking: no earlier commit in this clone, nothing to compare with")
        return 0
    third_party = REPO_ROOT / THIRD_PARTY
    if not third_party.is_dir():
        print(f"buf breaking: {THIRD_PARTY} is missing: run `make protos`", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="buf-against-") as tmp:
        against = Path(tmp)
        if not _export(commit, against, REPO_ROOT):
            print(f"buf breaking: {commit[:12]} has no protos/ and buf.yaml, nothing to compare")
            return 0
        shutil.copytree(third_party, against / THIRD_PARTY)
        print(f"buf breaking: protos/ against commit {commit[:12]}")
        buf = str(install.tool_path("buf"))
        returncode = subprocess.run(
            [buf, "breaking", "--against", str(against)], cwd=REPO_ROOT
        ).returncode
    reasons = acknowledged_breaks(commit)
    if returncode != 0 and reasons:
        print(f"buf breaking: the changes above are acknowledged ({SKIP_TRAILER}: ", end="")
        print("; ".join(reasons) + ")")
        return 0
    return returncode


if __name__ == "__main__":
    sys.exit(main())
