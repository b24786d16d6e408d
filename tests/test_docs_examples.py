"""Every example in README.md, and the runnable ones in docs/, run as written against a real server.

The shell blocks are split into commands (comments dropped, ``\\`` and ``|`` line ends joined); each runs in
bash with the server's address in place of 127.0.0.1:8080 / :50051, in a folder holding the files the
examples name (``photo.jpg`` is over 200 KB, a size whose base64 no longer fits one command-line argument).
A command passes when it exits 0 and answers JSON without an ``error`` or writes the file it names.
Python blocks run as written in that folder, with the same address substitution.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from skimage import data

from tests.conftest import TEST_HOMOGRAPHY, Server

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def blocks(doc: str, language: str) -> list[str]:
    """The fenced code blocks of ``doc`` in ``language``."""
    return [body for lang, body in FENCE.findall((ROOT / doc).read_text()) if lang == language]


def commands(block: str) -> list[str]:
    """Shell commands of a block: comment lines dropped, continued lines joined."""
    out, current = [], ""
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").rstrip() + " "
        if not line.rstrip().endswith(("\\", "|")):
            out.append(current.strip())
            current = ""
    return out


# The README's first block is the two commands that install and serve or test: CI runs those itself.
SHELL_EXAMPLES = [
    *(("README.md", command) for block in blocks("README.md", "bash")[1:] for command in commands(block)),
    *(("docs/api.md", command) for block in blocks("docs/api.md", "bash") for command in commands(block)),
    *(("docs/clients.md", c) for c in commands(blocks("docs/clients.md", "bash")[1])),
]
PYTHON_EXAMPLES = [
    *(("README.md", block) for block in blocks("README.md", "python")),
    *(("docs/grpc.md", block) for block in blocks("docs/grpc.md", "python")),
    *(("docs/clients.md", block) for block in blocks("docs/clients.md", "python")),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """photo.jpg (over 200 KB), a.jpg and b.jpg (a homography apart) and c.jpg, as the examples name them."""
    root = tmp_path_factory.mktemp("examples")
    astronaut = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(root / "photo.jpg"), cv2.resize(astronaut, (1024, 1024)), [cv2.IMWRITE_JPEG_QUALITY, 97])
    assert (root / "photo.jpg").stat().st_size > 200_000
    cv2.imwrite(str(root / "a.jpg"), astronaut)
    cv2.imwrite(str(root / "b.jpg"), cv2.warpPerspective(astronaut, TEST_HOMOGRAPHY, (512, 512)))
    cv2.imwrite(str(root / "c.jpg"), cv2.rotate(astronaut, cv2.ROTATE_90_CLOCKWISE))
    return root


def localise(text: str, server: Server) -> str:
    """``text`` with the documented default addresses replaced by the test server's."""
    return text.replace("http://127.0.0.1:8080", server.url).replace("127.0.0.1:50051", server.grpc_target)


@pytest.mark.parametrize(("doc", "command"), SHELL_EXAMPLES, ids=[f"{d}:{c[:50]}" for d, c in SHELL_EXAMPLES])
def test_shell_example_runs(doc: str, command: str, server: Server, folder: Path) -> None:
    written = re.search(r" -o (\S+)", command)
    if written:
        (folder / written.group(1)).unlink(missing_ok=True)
    run = subprocess.run(
        ["bash", "-o", "pipefail", "-c", localise(command, server)], cwd=folder, capture_output=True, timeout=120
    )
    assert run.returncode == 0, f"{doc}: {command}\n{run.stderr.decode()}"
    if written:
        assert (folder / written.group(1)).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{doc}: {command}"
        return
    answer = json.loads(run.stdout)
    assert "error" not in answer, f"{doc}: {command}\n{answer}"
    if "/v1/match/batch" in command:
        assert len(answer["pairs"]) == 2 and all(len(p["matches"]) > 0 for p in answer["pairs"])
    elif "/v1/match" in command:
        assert len(answer["matches"]) > 0 and answer["geometry"]["matrix"] is not None
    else:
        assert len(answer["keypoints"]) > 0


@pytest.mark.parametrize(("doc", "block"), PYTHON_EXAMPLES, ids=[d for d, _ in PYTHON_EXAMPLES])
def test_python_example_runs(doc: str, block: str, server: Server, folder: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-c", localise(block, server)], cwd=folder, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, f"{doc}\n{block}\n{run.stderr}"


def test_every_shell_and_python_block_of_the_readme_is_run() -> None:
    """A block added to the README in another language, or as a plain fence, is not silently skipped."""
    languages = {lang for lang, _ in FENCE.findall((ROOT / "README.md").read_text())}
    assert languages <= {"bash", "python", ""}
    assert len(SHELL_EXAMPLES) >= 5 and len(PYTHON_EXAMPLES) >= 3
