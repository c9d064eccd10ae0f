"""Which commit ``buf breaking`` compares protos/ with (eventpipe.stack.breaking), on real git
repositories made in a temporary folder."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from eventpipe.stack.breaking import acknowledged_breaks, base_commit

pytestmark = pytest.mark.unit


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()


def commit(repo: Path, message: str) -> str:
    git(repo, "commit", "--allow-empty", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q", "-b", "main")
    return tmp_path


def test_a_repository_without_commits_has_nothing_to_compare_with(repo):
    assert base_commit(repo) is None


def test_a_clone_of_one_commit_has_nothing_to_compare_with(repo):
    commit(repo, "first")
    assert base_commit(repo) is None


def test_on_main_the_newest_commit_is_compared_with_its_parent(repo):
    first = commit(repo, "first")
    commit(repo, "second")
    assert base_commit(repo) == first


def test_on_a_branch_everything_since_main_is_compared(repo):
    commit(repo, "first")
    on_main = commit(repo, "second")
    git(repo, "checkout", "-q", "-b", "work")
    commit(repo, "work 1")
    commit(repo, "work 2")
    assert base_commit(repo) == on_main


def test_a_given_revision_wins_and_an_unknown_one_is_refused(repo):
    first = commit(repo, "first")
    commit(repo, "second")
    commit(repo, "third")
    assert base_commit(repo, override="HEAD~2") == first
    with pytest.raises(ValueError, match="not a commit"):
        base_commit(repo, override="no-such-revision")


def test_only_commits_after_the_base_can_acknowledge_a_break(repo):
    first = commit(repo, "first\n\nBuf-Skip-Breaking: an old break")
    second = commit(repo, "second")
    assert acknowledged_breaks(first, repo) == []
    commit(repo, "rename a field\n\nBuf-Skip-Breaking: the API is not public yet")
    assert acknowledged_breaks(second, repo) == ["the API is not public yet"]
