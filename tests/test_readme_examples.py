"""The README's API examples run as written against the stack, with a multi-megabyte photo, and print what it shows.

Every ```bash block of the README's "## API" section is split into commands and the `# ` comment lines after
each (its shown output). Each command runs in bash in a folder holding `photo.jpg` (scikit-image's astronaut
scaled to 4000x4000, about 2 MB: past the ~128 KB where `$(base64 photo.jpg)` on a command line fails) and
`other.png`; its output must equal the shown one, numbers within a tolerance (an int8 graph may round
differently on another CPU), everything else exactly (whitespace aside).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"[-+]?\d+\.\d+|[-+]?\d+")
TOLERANCE = 0.02


def api_examples() -> list[tuple[str, str]]:
    """(command, shown output) pairs of the README's API section, in order."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## API\n"):readme.index("\n## ", readme.index("## API\n") + 1)]
    pairs: list[tuple[str, str]] = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        command: list[str] = []
        output: list[str] = []
        for line in block.splitlines():
            if line.startswith("# "):
                output.append(line[2:])
                continue
            if output:
                pairs.append(("\n".join(command), "\n".join(output)))
                command, output = [], []
            command.append(line)
        if command:
            pairs.append(("\n".join(command), "\n".join(output)))
    return pairs


def same_output(shown: str, actual: str) -> bool:
    """Equal apart from whitespace, with every number within TOLERANCE."""
    def split(text: str) -> tuple[list[str], list[float]]:
        squeezed = re.sub(r"\s+", "", text)
        return NUMBER.split(squeezed), [float(n) for n in NUMBER.findall(squeezed)]

    (words_a, nums_a), (words_b, nums_b) = split(shown), split(actual)
    return words_a == words_b and len(nums_a) == len(nums_b) and all(
        abs(a - b) <= TOLERANCE for a, b in zip(nums_a, nums_b, strict=True))


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import skimage.data

    folder = tmp_path_factory.mktemp("readme")
    photo = Image.fromarray(skimage.data.astronaut()).resize((4000, 4000), Image.Resampling.LANCZOS)
    photo.save(folder / "photo.jpg", quality=95)
    shutil.copy(Path(skimage.data.__file__).parent / "coffee.png", folder / "other.png")
    assert (folder / "photo.jpg").stat().st_size > 1_500_000
    return folder


def test_the_section_has_the_examples_this_test_expects() -> None:
    commands = [command for command, _ in api_examples()]
    assert len(commands) >= 6 and all(output for _, output in api_examples())
    assert not any("$(base64" in c for c in commands), "base64 inside the command line fails past ~128 KB"
    assert same_output('{"a": 0.50, "b": [1, 2]}', '{"a":0.51,"b":[1,2]}')
    assert not same_output('{"threshold": 0.808}', '{"threshold": 0.701672}')


@pytest.mark.parametrize("index", range(len(api_examples())))
def test_readme_api_example_prints_what_the_readme_shows(serving: str, photos: Path, index: int) -> None:
    command, shown = api_examples()[index]
    assert serving == "http://127.0.0.1:8080" and httpx.get(f"{serving}/v2/health/ready").status_code == 200
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=photos, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert same_output(shown, result.stdout), f"README shows:\n{shown}\nthe stack printed:\n{result.stdout}"
